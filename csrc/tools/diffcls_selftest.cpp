// diffcls-selftest: evaluates the library's numeric helpers on lines from stdin, one answer per line,
// so that tests/export/test_native_support.py can compare them with hashlib, numpy and scipy.
//   sha256 HEX          -> hex digest of the bytes
//   rng E0 E1 ...       -> np.random.default_rng([E0, E1, ...]).random()
//   stdtr DF T          -> scipy.special.stdtr(DF, T)
//   ibeta A B X         -> scipy.special.betainc(A, B, X)
//   pairwise V...       -> np.add.reduce(np.array([V...]))
//   pvals SIDES K N V.. -> paired_t_pvalues(V.reshape(K, N), SIDES)
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "support.h"

namespace {
std::string num(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}
}  // namespace

int main() {
  using namespace diffcls::detail;
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    if (cmd == "sha256") {
      std::string hex;
      in >> hex;
      std::vector<uint8_t> bytes;
      for (size_t i = 0; i + 1 < hex.size(); i += 2) bytes.push_back(static_cast<uint8_t>(std::stoul(hex.substr(i, 2), nullptr, 16)));
      std::cout << sha256_hex(bytes.data(), bytes.size()) << "\n";
    } else if (cmd == "rng") {
      std::vector<uint64_t> e;
      unsigned long long v;
      while (in >> v) e.push_back(v);
      std::cout << num(numpy_default_rng_random(e)) << "\n";
    } else if (cmd == "stdtr") {
      double df, t;
      in >> df >> t;
      std::cout << num(student_t_cdf(df, t)) << "\n";
    } else if (cmd == "ibeta") {
      double a, b, x;
      in >> a >> b >> x;
      std::cout << num(incomplete_beta(a, b, x)) << "\n";
    } else if (cmd == "pairwise") {
      std::vector<double> v;
      double x;
      while (in >> x) v.push_back(x);
      std::cout << num(numpy_pairwise_sum(v.data(), v.size())) << "\n";
    } else if (cmd == "pvals") {
      int sides;
      size_t k, n;
      in >> sides >> k >> n;
      std::vector<double> v(k * n);
      for (auto& x : v) in >> x;
      auto p = paired_t_pvalues(v, k, n, sides);
      for (size_t i = 0; i < p.size(); ++i) std::cout << (i ? " " : "") << num(p[i]);
      std::cout << "\n";
    } else if (!cmd.empty()) {
      std::cout << "error: unknown command " << cmd << "\n";
    }
  }
  return 0;
}
