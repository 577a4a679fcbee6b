// diffcls-run EXPORT_DIR IMAGE... [--json] [options]: classify images with an exported model, no Python.
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "diffcls/diffcls.h"

namespace {

const char* kUsage =
    "usage: diffcls-run EXPORT_DIR IMAGE [IMAGE ...] [--json] [options]\n"
    "\n"
    "Classify images with a model exported by `diffcls-fast export --format aoti`.\n"
    "IMAGE is a .png (8-bit, the model's exact size; when built with libpng) or a .safetensors\n"
    "tensor 'image' [C, H, W] / 'images' [N, C, H, W] in [-1, 1].\n"
    "\n"
    "options (defaults as diffcls-fast classify):\n"
    "  --json                 one JSON object per image (the schema of diffcls-fast classify --json)\n"
    "  --policy P             ttest (default) or exhaustive\n"
    "  --seed N               noise seed, 0..2^64-1 (default 0)\n"
    "  --min-scores N         ttest: samples before pruning starts (default 20)\n"
    "  --max-scores N         ttest: samples at most (default 2000)\n"
    "  --cutoff-pval P        ttest: drop a class when p < P (default 0.002)\n"
    "  --sides 1|2            ttest: one- or two-sided (default 2)\n"
    "  --t-order O            ttest: stratified (default) or random\n"
    "  --n-grid N             exhaustive: timesteps on the grid (default 50)\n"
    "  --temperature T        posterior temperature (default: the model's calibration)\n"
    "  --batch-size N         rows per denoiser call (default: the largest the package covers)\n"
    "  --noise FILE           saved noise [N, C, H, W] (default: EXPORT_DIR/noise.safetensors)\n"
    "  --threads N            intra-op threads (default: torch's)\n"
    "  --version              print the version and whether PNG input is built in\n";

[[noreturn]] void usage_error(const std::string& msg) {
  std::cerr << "diffcls-run: error: " << msg << " (see 'diffcls-run --help')\n";
  std::exit(2);
}

long long parse_int(const std::string& flag, const std::string& v, long long lo) {
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end || errno) usage_error(flag + ": expected an integer, got '" + v + "'");
  if (x < lo) usage_error(flag + ": must be >= " + std::to_string(lo) + ", got " + v);
  return x;
}

double parse_double(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end || !std::isfinite(x)) usage_error(flag + ": expected a number, got '" + v + "'");
  return x;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> pos;
  diffcls::Options opt;
  bool json = false;
  int threads = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (a == "--version") {
      std::cout << "diffcls-run 1 (png " << (diffcls::has_png() ? "yes" : "no") << ")\n";
      return 0;
    } else if (a == "--json") {
      json = true;
    } else if (a == "--policy") {
      opt.policy = value();
    } else if (a == "--seed") {
      std::string v = value();
      char* end = nullptr;
      errno = 0;
      unsigned long long s = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || v[0] == '-' || *end || errno) usage_error("--seed: expected an integer in 0..2^64-1, got '" + v + "'");
      opt.seed = s;
    } else if (a == "--min-scores") {
      opt.min_scores = static_cast<int>(parse_int(a, value(), 1));
    } else if (a == "--max-scores") {
      opt.max_scores = static_cast<int>(parse_int(a, value(), 1));
    } else if (a == "--cutoff-pval") {
      opt.cutoff_pval = parse_double(a, value());
    } else if (a == "--sides") {
      opt.sides = static_cast<int>(parse_int(a, value(), 1));
    } else if (a == "--t-order") {
      opt.t_order = value();
    } else if (a == "--n-grid") {
      opt.n_grid = static_cast<int>(parse_int(a, value(), 1));
    } else if (a == "--temperature") {
      opt.temperature = parse_double(a, value());
    } else if (a == "--batch-size") {
      opt.batch_size = static_cast<int>(parse_int(a, value(), 1));
    } else if (a == "--noise") {
      opt.noise_path = value();
    } else if (a == "--threads") {
      threads = static_cast<int>(parse_int(a, value(), 1));
    } else if (a.size() > 1 && a[0] == '-') {
      usage_error("unknown option " + a);
    } else {
      pos.push_back(a);
    }
  }
  if (pos.size() < 2) usage_error("need EXPORT_DIR and at least one IMAGE");
  if (threads > 0) at::set_num_threads(threads);
  int failed = 0, n_images = 0;
  try {
    diffcls::Classifier clf(pos[0], opt);
    // Every image file is read (and checked) before the first is scored, as diffcls-fast classify does.
    std::vector<std::pair<std::string, at::Tensor>> images;
    for (size_t k = 1; k < pos.size(); ++k) {
      auto v = diffcls::load_images(pos[k], clf.info());
      for (size_t j = 0; j < v.size(); ++j) images.emplace_back(v.size() == 1 ? pos[k] : pos[k] + "#" + std::to_string(j), v[j]);
    }
    int64_t evals = 0;
    double seconds = 0.0;
    for (auto& [name, x] : images) {
      diffcls::Result r = clf.classify(x);
      r.image = name;
      ++n_images;
      evals += r.evaluations_spent;
      seconds += r.seconds;
      if (!r.ok()) ++failed;
      if (json) {
        std::cout << r.to_json() << "\n";
      } else if (!r.ok()) {
        std::cout << name << ": failed: " << r.error << "\n";
      } else {
        std::cout << name << ": " << r.label << "  [top-5: ";
        auto top = r.top(5);
        for (size_t k = 0; k < top.size(); ++k) {
          char buf[32];
          std::snprintf(buf, sizeof buf, "%.3f", top[k].second);
          std::cout << (k ? "  " : "") << top[k].first << " " << buf;
        }
        char tail[96];
        std::snprintf(tail, sizeof tail, "]  %lld evals", static_cast<long long>(r.evaluations));
        std::cout << tail;
        if (r.evaluations_spent != r.evaluations) std::cout << " (" << r.evaluations_spent << " spent)";
        std::snprintf(tail, sizeof tail, ", %.3f s\n", r.seconds);
        std::cout << tail;
      }
      std::cout.flush();
    }
    if (!json) {
      const auto& info = clf.info();
      char buf[256];
      std::snprintf(buf, sizeof buf, "# %s [aoti, float32, cpu, native], %s; %lld evals in %.2f s\n", info.model.c_str(), clf.options().describe().c_str(), static_cast<long long>(evals), seconds);
      std::cerr << buf;
    }
  } catch (const diffcls::UserError& e) {
    std::cerr << "diffcls-run: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    std::cerr << "diffcls-run: internal error: " << msg.substr(0, msg.find('\n')) << "\n";
    return 1;
  }
  if (failed) std::cerr << "diffcls-run: " << failed << " of " << n_images << " images failed\n";
  return failed ? 1 : 0;
}
