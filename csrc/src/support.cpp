#include "support.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace diffcls::detail {

// =============================================================================================
// JSON
// =============================================================================================
namespace {

struct JsonParser {
  const std::string& s;
  size_t i = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("JSON: " + what + " at offset " + std::to_string(i));
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) ++i;
  }
  bool lit(const char* word) {
    size_t n = std::strlen(word);
    if (s.compare(i, n, word) == 0) {
      i += n;
      return true;
    }
    return false;
  }
  static void utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  uint32_t hex4() {
    if (i + 4 > s.size()) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s[i++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else fail("bad \\u escape");
    }
    return v;
  }
  std::string string() {
    if (s[i] != '"') fail("expected a string");
    ++i;
    std::string out;
    while (true) {
      if (i >= s.size()) fail("unterminated string");
      char c = s[i++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i >= s.size()) fail("unterminated escape");
      char e = s[i++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && s.compare(i, 2, "\\u") == 0) {
            i += 2;
            uint32_t lo = hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
  }
  Json value() {
    ws();
    if (i >= s.size()) fail("unexpected end");
    Json v;
    char c = s[i];
    if (c == '{') {
      v.kind = Json::Kind::Object;
      ++i;
      ws();
      if (s[i] == '}') {
        ++i;
        return v;
      }
      while (true) {
        ws();
        std::string key = string();
        ws();
        if (s[i] != ':') fail("expected ':'");
        ++i;
        v.obj[key] = value();
        ws();
        if (s[i] == ',') {
          ++i;
          continue;
        }
        if (s[i] == '}') {
          ++i;
          return v;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.kind = Json::Kind::Array;
      ++i;
      ws();
      if (s[i] == ']') {
        ++i;
        return v;
      }
      while (true) {
        v.arr.push_back(value());
        ws();
        if (s[i] == ',') {
          ++i;
          continue;
        }
        if (s[i] == ']') {
          ++i;
          return v;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.kind = Json::Kind::String;
      v.str = string();
      return v;
    }
    if (lit("true")) {
      v.kind = Json::Kind::Bool;
      v.b = true;
      return v;
    }
    if (lit("false")) {
      v.kind = Json::Kind::Bool;
      return v;
    }
    if (lit("null")) return v;
    const char* start = s.c_str() + i;
    char* end = nullptr;
    v.num = std::strtod(start, &end);
    if (end == start) fail("unexpected character");
    v.kind = Json::Kind::Number;
    i += static_cast<size_t>(end - start);
    return v;
  }
};

}  // namespace

Json Json::parse(const std::string& text) {
  JsonParser p{text};
  Json v = p.value();
  p.ws();
  if (p.i != text.size()) p.fail("trailing characters");
  return v;
}

const Json& Json::at(const std::string& key) const {
  if (kind != Kind::Object) throw std::runtime_error("JSON: not an object (looking for '" + key + "')");
  auto it = obj.find(key);
  if (it == obj.end()) throw std::runtime_error("JSON: missing key '" + key + "'");
  return it->second;
}

int64_t Json::as_int() const {
  if (kind != Kind::Number) throw std::runtime_error("JSON: expected a number");
  return static_cast<int64_t>(num);
}

double Json::as_double() const {
  if (kind != Kind::Number) throw std::runtime_error("JSON: expected a number");
  return num;
}

const std::string& Json::as_string() const {
  if (kind != Kind::String) throw std::runtime_error("JSON: expected a string");
  return str;
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  for (int prec = 1; prec <= 17; ++prec) {  // the shortest form that reads back to the same double
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

// =============================================================================================
// safetensors: u64 little-endian header length, a JSON header, then the raw little-endian data
// =============================================================================================
std::map<std::string, at::Tensor> read_safetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open");
  std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (data.size() < 8) throw std::runtime_error(path + ": not a safetensors file (too short)");
  uint64_t n = 0;
  for (int k = 7; k >= 0; --k) n = (n << 8) | static_cast<unsigned char>(data[k]);
  if (n > data.size() - 8) throw std::runtime_error(path + ": not a safetensors file (bad header length)");
  Json header;
  try {
    header = Json::parse(data.substr(8, n));
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": not a safetensors file (" + e.what() + ")");
  }
  const size_t base = 8 + n;
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, info] : header.obj) {
    if (name == "__metadata__") continue;
    const std::string& dt = info.at("dtype").as_string();
    at::ScalarType st;
    size_t elem;
    if (dt == "F32") st = at::kFloat, elem = 4;
    else if (dt == "F64") st = at::kDouble, elem = 8;
    else if (dt == "I64") st = at::kLong, elem = 8;
    else if (dt == "I32") st = at::kInt, elem = 4;
    else if (dt == "U8") st = at::kByte, elem = 1;
    else if (dt == "F16") st = at::kHalf, elem = 2;
    else if (dt == "BF16") st = at::kBFloat16, elem = 2;
    else throw std::runtime_error(path + ": tensor '" + name + "' has unsupported dtype " + dt);
    std::vector<int64_t> shape;
    int64_t count = 1;
    for (const auto& d : info.at("shape").arr) {
      shape.push_back(d.as_int());
      count *= d.as_int();
    }
    const auto& offs = info.at("data_offsets").arr;
    if (offs.size() != 2) throw std::runtime_error(path + ": tensor '" + name + "' has bad data_offsets");
    auto lo = static_cast<size_t>(offs[0].as_int()), hi = static_cast<size_t>(offs[1].as_int());
    if (hi < lo || base + hi > data.size() || hi - lo != static_cast<size_t>(count) * elem)
      throw std::runtime_error(path + ": tensor '" + name + "' has data outside the file or of the wrong size");
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(st));
    if (hi > lo) std::memcpy(t.data_ptr(), data.data() + base + lo, hi - lo);  // little-endian host assumed (x86, ARM)
    out.emplace(name, t);
  }
  return out;
}

// =============================================================================================
// SHA-256 (FIPS 180-4)
// =============================================================================================
namespace {
constexpr uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be,
    0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa,
    0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85,
    0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3,
    0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f,
    0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

void sha256_block(uint32_t h[8], const uint8_t* p) {
  uint32_t w[64];
  for (int t = 0; t < 16; ++t) w[t] = (uint32_t(p[4 * t]) << 24) | (uint32_t(p[4 * t + 1]) << 16) | (uint32_t(p[4 * t + 2]) << 8) | uint32_t(p[4 * t + 3]);
  for (int t = 16; t < 64; ++t) {
    uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
    uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
    w[t] = w[t - 16] + s0 + w[t - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (int t = 0; t < 64; ++t) {
    uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
    uint32_t ch = (e & f) ^ (~e & g);
    uint32_t t1 = hh + S1 + ch + K256[t] + w[t];
    uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
    uint32_t mj = (a & b) ^ (a & c) ^ (b & c);
    uint32_t t2 = S0 + mj;
    hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
  }
  h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
}
}  // namespace

void sha256(const void* data, size_t n, uint8_t out[32]) {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const auto* p = static_cast<const uint8_t*>(data);
  size_t full = n / 64;
  for (size_t k = 0; k < full; ++k) sha256_block(h, p + 64 * k);
  uint8_t tail[128] = {0};
  size_t rem = n - 64 * full;
  if (rem) std::memcpy(tail, p + 64 * full, rem);
  tail[rem] = 0x80;
  size_t tail_len = rem + 1 + 8 <= 64 ? 64 : 128;
  uint64_t bits = static_cast<uint64_t>(n) * 8;
  for (int k = 0; k < 8; ++k) tail[tail_len - 1 - k] = static_cast<uint8_t>(bits >> (8 * k));
  sha256_block(h, tail);
  if (tail_len == 128) sha256_block(h, tail + 64);
  for (int k = 0; k < 8; ++k)
    for (int j = 0; j < 4; ++j) out[4 * k + j] = static_cast<uint8_t>(h[k] >> (24 - 8 * j));
}

std::string sha256_hex(const void* data, size_t n) {
  uint8_t d[32];
  sha256(data, n, d);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (uint8_t b : d) s += hex[b >> 4], s += hex[b & 15];
  return s;
}

// =============================================================================================
// numpy: SeedSequence (numpy/random/bit_generator.pyx) -> PCG64 (XSL-RR 128/64) -> random()
// =============================================================================================
namespace {
constexpr uint32_t INIT_A = 0x43b0d7e5, MULT_A = 0x931e8875, INIT_B = 0x8b51f9dd, MULT_B = 0x58f38ded;
constexpr uint32_t MIX_MULT_L = 0xca01f9dd, MIX_MULT_R = 0x4973f715;
constexpr int XSHIFT = 16;

inline uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= MULT_A;
  value *= hash_const;
  value ^= value >> XSHIFT;
  return value;
}

inline uint32_t mix(uint32_t x, uint32_t y) {
  uint32_t r = MIX_MULT_L * x - MIX_MULT_R * y;
  r ^= r >> XSHIFT;
  return r;
}

using u128 = unsigned __int128;
constexpr u128 PCG_MULT = (static_cast<u128>(2549297995355413924ULL) << 64) | 4865540595714422341ULL;
}  // namespace

double numpy_default_rng_random(const std::vector<uint64_t>& entropy) {
  // numpy splits each integer into 32-bit words, least significant first (0 is one word).
  std::vector<uint32_t> words;
  for (uint64_t v : entropy) {
    if (v == 0) words.push_back(0);
    while (v) {
      words.push_back(static_cast<uint32_t>(v & 0xFFFFFFFFu));
      v >>= 32;
    }
  }
  uint32_t pool[4];
  uint32_t hc = INIT_A;
  for (size_t k = 0; k < 4; ++k) pool[k] = hashmix(k < words.size() ? words[k] : 0u, hc);
  for (size_t src = 0; src < 4; ++src)
    for (size_t dst = 0; dst < 4; ++dst)
      if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], hc));
  for (size_t src = 4; src < words.size(); ++src)
    for (size_t dst = 0; dst < 4; ++dst) pool[dst] = mix(pool[dst], hashmix(words[src], hc));
  // generate_state(4, uint64): 8 words, paired little-endian.
  uint32_t state_words[8];
  uint32_t hb = INIT_B;
  for (int k = 0; k < 8; ++k) {
    uint32_t v = pool[k % 4];
    v ^= hb;
    hb *= MULT_B;
    v *= hb;
    v ^= v >> XSHIFT;
    state_words[k] = v;
  }
  uint64_t val[4];
  for (int k = 0; k < 4; ++k) val[k] = static_cast<uint64_t>(state_words[2 * k]) | (static_cast<uint64_t>(state_words[2 * k + 1]) << 32);
  // pcg64_set_seed: seed = (val0 << 64) | val1, inc = (val2 << 64) | val3; pcg_setseq_128_srandom_r.
  u128 initstate = (static_cast<u128>(val[0]) << 64) | val[1];
  u128 initseq = (static_cast<u128>(val[2]) << 64) | val[3];
  u128 inc = (initseq << 1) | 1;
  u128 state = 0;
  state = state * PCG_MULT + inc;
  state += initstate;
  state = state * PCG_MULT + inc;
  // next64: step, then the XSL-RR output of the new state; random() = (next64 >> 11) * 2^-53.
  state = state * PCG_MULT + inc;
  uint64_t hi = static_cast<uint64_t>(state >> 64), lo = static_cast<uint64_t>(state);
  unsigned rot = static_cast<unsigned>(state >> 122);
  uint64_t x = hi ^ lo;
  uint64_t out = (x >> rot) | (x << ((64 - rot) & 63));
  return static_cast<double>(out >> 11) * (1.0 / 9007199254740992.0);
}

// =============================================================================================
// statistics
// =============================================================================================
double numpy_pairwise_sum(const double* a, size_t n) {
  // numpy/_core/src/umath/loops_utils.h.src: @TYPE@_pairwise_sum with PW_BLOCKSIZE 128.
  if (n < 8) {
    double res = 0.0;
    for (size_t k = 0; k < n; ++k) res += a[k];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int k = 0; k < 8; ++k) r[k] = a[k];
    size_t k = 8;
    for (; k < n - (n % 8); k += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[k + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; k < n; ++k) res += a[k];
    return res;
  }
  size_t n2 = n / 2;
  n2 -= n2 % 8;
  return numpy_pairwise_sum(a, n2) + numpy_pairwise_sum(a + n2, n - n2);
}

namespace {
// Stirling's series of log Gamma(x) - [(x - 1/2) log x - x + log(2 pi) / 2], for x >= 20 (truncation < 1e-15).
double stirling_correction(double x) {
  double x2 = x * x;
  return (1.0 / 12.0 - (1.0 / 360.0 - (1.0 / 1260.0 - 1.0 / (1680.0 * x2)) / x2) / x2) / x;
}

// log Beta(a, b). For a large argument, log Gamma(big) - log Gamma(big + small) is taken from the
// Stirling form with log1p, which avoids the cancellation of two log Gammas of ~1e4 each.
double log_beta(double a, double b) {
  double small = std::min(a, b), big = std::max(a, b);
  if (big < 20.0) return std::lgamma(a) + std::lgamma(b) - std::lgamma(a + b);
  double ratio = -(big - 0.5) * std::log1p(small / big) - small * std::log(big + small) + small + stirling_correction(big) - stirling_correction(big + small);
  return std::lgamma(small) + ratio;
}

// The continued fraction of I_x(a, b) (modified Lentz), for x < (a + 1) / (a + b + 2).
double beta_cf(double a, double b, double x) {
  const double tiny = 1e-300, eps = 4e-16;
  double qab = a + b, qap = a + 1.0, qam = a - 1.0;
  double c = 1.0, d = 1.0 - qab * x / qap;
  if (std::fabs(d) < tiny) d = tiny;
  d = 1.0 / d;
  double h = d;
  for (int m = 1; m <= 100000; ++m) {
    double m2 = 2.0 * m;
    double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
    d = 1.0 + aa * d;
    if (std::fabs(d) < tiny) d = tiny;
    c = 1.0 + aa / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1.0 / d;
    h *= d * c;
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
    d = 1.0 + aa * d;
    if (std::fabs(d) < tiny) d = tiny;
    c = 1.0 + aa / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1.0 / d;
    double del = d * c;
    h *= del;
    if (std::fabs(del - 1.0) < eps) break;
  }
  return h;
}

// I_x(a, b) given both x and y = 1 - x (each computed directly by the caller, so neither loses digits).
double ibeta_xy(double a, double b, double x, double y) {
  if (x <= 0.0) return 0.0;
  if (y <= 0.0) return 1.0;
  auto front = [](double p, double q, double u, double v) { return std::exp(p * std::log(u) + q * std::log(v) - log_beta(p, q)); };
  if (x < (a + 1.0) / (a + b + 2.0)) return front(a, b, x, y) * beta_cf(a, b, x) / a;
  return 1.0 - front(b, a, y, x) * beta_cf(b, a, y) / b;
}
}  // namespace

double incomplete_beta(double a, double b, double x) { return ibeta_xy(a, b, x, 1.0 - x); }

double student_t_cdf(double df, double t) {
  if (std::isnan(t) || std::isnan(df) || df <= 0.0) return std::numeric_limits<double>::quiet_NaN();
  if (t == 0.0) return 0.5;
  if (std::isinf(t)) return t > 0 ? 1.0 : 0.0;
  // P(T < -|t|) = I_x(df/2, 1/2) / 2 with x = df / (df + t^2); 1 - x = t^2 / (df + t^2).
  double t2 = t * t, x, y;
  if (std::isinf(t2)) {
    x = df / std::fabs(t) / std::fabs(t);
    y = 1.0;
  } else {
    x = df / (df + t2);
    y = t2 / (df + t2);
  }
  double tail = 0.5 * ibeta_xy(0.5 * df, 0.5, x, y);
  return t < 0 ? tail : 1.0 - tail;
}

std::vector<double> paired_t_pvalues(const std::vector<double>& diffs, size_t k, size_t n, int sides) {
  std::vector<double> p(k, 1.0);
  if (n < 2) return p;
  std::vector<double> dev(n);
  const double sqrt_n = std::sqrt(static_cast<double>(n));
  for (size_t r = 0; r < k; ++r) {
    const double* row = diffs.data() + r * n;
    double mean = numpy_pairwise_sum(row, n) / static_cast<double>(n);
    for (size_t j = 0; j < n; ++j) {
      double d = row[j] - mean;
      dev[j] = d * d;
    }
    double sd = std::sqrt(numpy_pairwise_sum(dev.data(), n) / static_cast<double>(n - 1));
    double se = sd / sqrt_n;
    bool constant = true;
    for (size_t j = 1; j < n && constant; ++j) constant = row[j] == row[0];
    bool varying = !constant && se > 0;
    double ref = constant ? row[0] : mean;
    double sign = ref > 0 ? 1.0 : (ref < 0 ? -1.0 : 0.0);
    double t = varying ? mean / se : std::copysign(std::numeric_limits<double>::infinity(), sign);
    double pv = sides == 2 ? 2.0 * student_t_cdf(static_cast<double>(n - 1), -std::fabs(t)) : student_t_cdf(static_cast<double>(n - 1), -t);
    if (!varying && sign == 0.0) pv = 1.0;
    p[r] = std::min(pv, 1.0);
  }
  return p;
}

}  // namespace diffcls::detail
