// Internal helpers of the diffcls library: a small JSON reader/writer, safetensors reading,
// SHA-256, numpy's SeedSequence + PCG64 (for the engine's per-image timestep draws), numpy's
// pairwise summation and the Student-t CDF. Each mirrors what the Python engine computes, so
// that the runner reproduces its results; tests/native/ compare them with hashlib, numpy and scipy.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace diffcls::detail {

// ---- JSON ---------------------------------------------------------------------------------
struct Json {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool b = false;
  double num = 0.0;
  std::string str;
  std::vector<Json> arr;
  std::map<std::string, Json> obj;

  static Json parse(const std::string& text);  // throws std::runtime_error with the offset
  const Json& at(const std::string& key) const;  // throws naming the key
  bool has(const std::string& key) const { return kind == Kind::Object && obj.count(key) > 0; }
  int64_t as_int() const;
  double as_double() const;
  const std::string& as_string() const;
};

std::string json_quote(const std::string& s);
std::string json_number(double v);  // shortest round-trip form; NaN/inf -> null

// ---- safetensors ----------------------------------------------------------------------------
// All tensors of a safetensors file (F32, F64, I64, I32, U8, F16, BF16), as CPU tensors.
std::map<std::string, at::Tensor> read_safetensors(const std::string& path);

// ---- SHA-256 --------------------------------------------------------------------------------
std::string sha256_hex(const void* data, size_t n);
void sha256(const void* data, size_t n, uint8_t out[32]);

// ---- numpy's random streams -----------------------------------------------------------------
// np.random.default_rng(entropy).random(): SeedSequence (pool of 4 words) -> PCG64 -> double.
// Each entry of ``entropy`` is an unsigned integer, split into 32-bit words as numpy does.
double numpy_default_rng_random(const std::vector<uint64_t>& entropy);

// ---- statistics -----------------------------------------------------------------------------
// numpy's pairwise summation (np.add.reduce over a contiguous float64 row), bit for bit.
double numpy_pairwise_sum(const double* a, size_t n);
// scipy.special.stdtr(df, t): the Student-t CDF, through the regularized incomplete beta.
double student_t_cdf(double df, double t);
// I_x(a, b), the regularized incomplete beta function, 0 <= x <= 1.
double incomplete_beta(double a, double b, double x);
// Paired t-test p-values of each row of diffs [K][n] (row-major), as engine/policies/ttest.py.
std::vector<double> paired_t_pvalues(const std::vector<double>& diffs, size_t k, size_t n, int sides);

}  // namespace diffcls::detail
