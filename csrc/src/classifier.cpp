// The native classifier: the export folder's tables + the AOTInductor package(s), and the
// t-test / exhaustive decision rules of diffcls_fast/engine/policies, replayed exactly.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>

#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/version.h>

#include "diffcls/diffcls.h"
#include "support.h"

namespace diffcls {

using detail::Json;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UserError(path + ": cannot read");
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

// "2.13.0+cpu" -> "2.13": AOTInductor packages are built for one torch release; a patch release
// keeps the ABI, another minor version may not (the package would crash or misbehave on load).
std::string major_minor(const std::string& version) {
  size_t first = version.find('.');
  if (first == std::string::npos) return version;
  size_t second = version.find_first_not_of("0123456789", first + 1);
  return version.substr(0, second);
}

std::string fmt_g(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// numpy's mean of a contiguous float64 row.
double row_mean(const std::vector<double>& row, size_t n) { return detail::numpy_pairwise_sum(row.data(), n) / static_cast<double>(n); }

// engine/timesteps.py: van der Corput (base 2) point of index i.
double radical_inverse(uint64_t i) {
  double out = 0.0, f = 0.5;
  while (i) {
    if (i & 1) out += f;
    i >>= 1;
    f *= 0.5;
  }
  return out;
}

struct Package {
  int lo, hi;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
};

}  // namespace

std::string Options::describe() const {
  if (policy == "exhaustive") return "exhaustive(grid=" + std::to_string(n_grid) + ")";
  return "ttest(min=" + std::to_string(min_scores) + ", max=" + std::to_string(max_scores) + ", p<" + fmt_g(cutoff_pval) + ", " + std::to_string(sides) + "-sided, t=" + t_order + ")";
}

std::vector<std::pair<std::string, double>> Result::top(int k) const {
  std::vector<std::pair<std::string, double>> out;
  if (!ok()) return out;
  std::vector<size_t> order(class_names.size());
  std::iota(order.begin(), order.end(), 0);
  // results.py: probability descending, then more scores, then lower mean error (NaN last), then class id.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (probabilities[a] != probabilities[b]) return probabilities[a] > probabilities[b];
    if (n_scores[a] != n_scores[b]) return n_scores[a] > n_scores[b];
    double ma = std::isnan(mean_errors[a]) ? INFINITY : mean_errors[a], mb = std::isnan(mean_errors[b]) ? INFINITY : mean_errors[b];
    return ma < mb;
  });
  for (size_t i = 0; i < order.size() && static_cast<int>(i) < k; ++i) out.emplace_back(class_names[order[i]], probabilities[order[i]]);
  return out;
}

std::string Result::to_json(int top_k) const {
  using detail::json_number;
  using detail::json_quote;
  std::ostringstream o;
  o << "{";
  if (!image.empty()) o << "\"image\": " << json_quote(image) << ", ";
  o << "\"label\": " << json_quote(label) << ", \"label_index\": " << label_index << ", \"top\": [";
  auto t = top(top_k);
  for (size_t i = 0; i < t.size(); ++i) {
    double p = std::round(t[i].second * 1e6) / 1e6;
    o << (i ? ", " : "") << "{\"class\": " << json_quote(t[i].first) << ", \"p\": " << json_number(p) << "}";
  }
  o << "], \"mean_errors\": {";
  for (size_t i = 0; i < class_names.size(); ++i) o << (i ? ", " : "") << json_quote(class_names[i]) << ": " << json_number(mean_errors[i]);
  o << "}, \"n_scores\": {";
  for (size_t i = 0; i < class_names.size(); ++i) o << (i ? ", " : "") << json_quote(class_names[i]) << ": " << n_scores[i];
  o << "}, \"evaluations\": " << evaluations << ", \"evaluations_spent\": " << evaluations_spent << ", \"seconds\": " << json_number(std::round(seconds * 1e4) / 1e4)
    << ", \"policy\": " << json_quote(policy) << ", \"error\": " << (ok() ? std::string("null") : json_quote(error)) << ", \"random_weights\": false}";
  return o.str();
}

struct Classifier::Impl {
  std::string dir;
  Options opt;
  ModelInfo info;
  std::vector<Package> packages;
  at::Tensor sqrt_ab, sqrt_1mab, acp_f32;  // [T]
  at::Tensor cond;                         // [P, ...]
  at::Tensor noise;                        // [N, C, H, W]
  std::vector<std::vector<int64_t>> class_prompts;
  std::vector<int64_t> cost;
  double temperature = 1e-2, floor = 0.0;
  int batch = 0;

  // -- the denoiser -----------------------------------------------------------------------------
  // eps_hat of rows (x_t, t, cond), through the package covering the batch (padded up to its minimum).
  at::Tensor denoise(const at::Tensor& x_t, const at::Tensor& t, const at::Tensor& c) {
    int64_t rows = x_t.size(0);
    int64_t n = std::max<int64_t>(rows, packages.front().lo);
    at::Tensor xs = x_t, ts = t, cs = c;
    if (n > rows) {
      at::Tensor first = at::zeros({n - rows}, at::TensorOptions().dtype(at::kLong));
      auto pad = [&](const at::Tensor& v) { return at::cat({v, v.index_select(0, first)}); };  // copies of row 0
      xs = pad(x_t), ts = pad(t), cs = pad(c);
    }
    for (auto& p : packages) {
      if (p.lo <= n && n <= p.hi) {
        std::vector<at::Tensor> out = p.loader->run({xs.contiguous(), ts.contiguous(), cs.contiguous()});
        at::Tensor eps = out.at(0).slice(0, 0, rows);
        if (eps.size(1) != info.channels) eps = eps.slice(1, 0, info.channels);  // learned sigma: the first half is eps
        if (info.prediction_type == "v_prediction") {
          at::Tensor abar = acp_f32.index_select(0, t);
          eps = abar.sqrt().view({-1, 1, 1, 1}) * eps + (1 - abar).sqrt().view({-1, 1, 1, 1}) * x_t;
        }
        return eps;
      }
    }
    throw std::runtime_error("no package covers a batch of " + std::to_string(n) + " rows");
  }

  // Errors of queries (class, sample) of one image: the mean over each class's prompts of the eps
  // l2 error, as engine/runner.py computes it (float32, then float64).
  std::vector<double> score(const at::Tensor& x0, const std::vector<int64_t>& cls, const std::vector<int64_t>& smp, const std::vector<int64_t>& t_of_sample) {
    std::vector<int64_t> row_query, row_prompt, row_sample;
    for (size_t q = 0; q < cls.size(); ++q)
      for (int64_t p : class_prompts[cls[q]]) row_query.push_back(q), row_prompt.push_back(p), row_sample.push_back(smp[q]);
    std::vector<double> out(cls.size(), 0.0);
    std::vector<float> err_rows(row_query.size());
    for (size_t start = 0; start < row_query.size(); start += batch) {
      size_t stop = std::min(row_query.size(), start + static_cast<size_t>(batch));
      auto len = static_cast<int64_t>(stop - start);
      std::vector<int64_t> s_idx(row_sample.begin() + start, row_sample.begin() + stop), p_idx(row_prompt.begin() + start, row_prompt.begin() + stop), t_idx(len);
      for (int64_t k = 0; k < len; ++k) t_idx[k] = t_of_sample[s_idx[k]];
      auto i64 = at::TensorOptions().dtype(at::kLong);
      at::Tensor s_t = at::from_blob(s_idx.data(), {len}, i64).clone(), t_t = at::from_blob(t_idx.data(), {len}, i64).clone(), p_t = at::from_blob(p_idx.data(), {len}, i64).clone();
      at::Tensor eps = noise.index_select(0, s_t);
      at::Tensor a = sqrt_ab.index_select(0, t_t).view({-1, 1, 1, 1}), b = sqrt_1mab.index_select(0, t_t).view({-1, 1, 1, 1});
      at::Tensor x0s = x0.unsqueeze(0).expand_as(eps);
      at::Tensor x_t = a * x0s + b * eps;  // kernels/reference.py make_noisy
      at::Tensor eps_hat = denoise(x_t, t_t, cond.index_select(0, p_t));
      at::Tensor diff = eps_hat.to(at::kFloat).reshape({len, -1}) - eps.reshape({len, -1});
      at::Tensor e = (diff * diff).mean(1).contiguous();  // kernels/reference.py query_errors, kind l2
      std::memcpy(err_rows.data() + start, e.data_ptr<float>(), sizeof(float) * len);
    }
    bool single = std::all_of(cls.begin(), cls.end(), [&](int64_t c) { return cost[c] == 1; });
    if (single) {
      for (size_t q = 0; q < cls.size(); ++q) out[q] = err_rows[q];
      return out;
    }
    // Prompt ensembles: float32 sum over the class's prompts divided by their count, as the runner's index_add_.
    std::vector<float> acc(cls.size(), 0.0f);
    for (size_t r = 0; r < row_query.size(); ++r) acc[row_query[r]] += err_rows[r];
    for (size_t q = 0; q < cls.size(); ++q) out[q] = acc[q] / static_cast<float>(cost[cls[q]]);
    return out;
  }

  // -- results ----------------------------------------------------------------------------------
  Result finish(int label, const std::vector<double>& means, const std::vector<int64_t>& n_scores, int64_t evaluations, int64_t spent, const std::string& error) {
    Result r;
    r.class_names = info.classes;
    r.mean_errors = means;
    r.n_scores = n_scores;
    r.evaluations = evaluations;
    r.evaluations_spent = spent;
    r.policy = opt.describe();
    size_t C = info.classes.size();
    r.probabilities.assign(C, 0.0);
    if (!error.empty()) {
      r.error = error;
      return r;
    }
    r.label_index = label;
    r.label = info.classes[label];
    // results.py posterior: softmax(-mean / T) over the finalists (scored as often as the label), plus the floor.
    std::vector<size_t> ok;
    for (size_t c = 0; c < C; ++c)
      if (n_scores[c] == n_scores[label] && n_scores[c] > 0 && !std::isnan(means[c])) ok.push_back(c);
    if (ok.empty()) {
      r.probabilities[label] = 1.0;
    } else {
      // distances from the lowest mean, then the temperature (as results.py): no inf - inf for a tiny T
      double mmin = means[ok[0]];
      for (size_t c : ok) mmin = std::min(mmin, means[c]);
      std::vector<double> z(ok.size());
      for (size_t k = 0; k < ok.size(); ++k) z[k] = std::exp(-(means[ok[k]] - mmin) / temperature);
      double sum = detail::numpy_pairwise_sum(z.data(), z.size());
      for (size_t k = 0; k < ok.size(); ++k) r.probabilities[ok[k]] = z[k] / sum;
    }
    if (floor != 0.0)
      for (double& p : r.probabilities) p = (1.0 - floor) * p + floor / static_cast<double>(C);
    return r;
  }

  std::string non_finite(double value, int64_t sample, int64_t cls) const {
    std::string v = std::isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf");
    return "non-finite denoiser error (" + v + ") at sample " + std::to_string(sample) + ", class '" + info.classes[cls] +
           "': the model output or its input (image, noise, condition) holds NaN or inf";
  }

  void need_noise_rows(int64_t n) const {
    if (n > noise.size(0))  // the first sample without a row, as the Python engine reports it
      throw UserError("saved noise has " + std::to_string(noise.size(0)) + " rows, but sample " + std::to_string(noise.size(0)) +
                      " was requested; save more rows or lower the sample count");
  }

  // -- exhaustive: every class at every point of Li et al.'s grid (policies/stages.py) ----------
  Result exhaustive(const at::Tensor& x0) {
    const int64_t C = static_cast<int64_t>(info.classes.size()), T = info.num_timesteps, n = opt.n_grid;
    int64_t step = T / n;
    std::vector<int64_t> grid;
    for (int64_t v = step / 2; v < T && static_cast<int64_t>(grid.size()) < n; v += step) grid.push_back(v);
    need_noise_rows(n);
    std::vector<int64_t> cls, smp;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < n; ++s) cls.push_back(c), smp.push_back(s);
    std::vector<double> e = score(x0, cls, smp, grid);
    std::vector<std::vector<double>> err(C, std::vector<double>(n));
    for (size_t q = 0; q < cls.size(); ++q) err[cls[q]][smp[q]] = e[q];
    int64_t spent = 0;
    for (int64_t c = 0; c < C; ++c) spent += cost[c] * n;
    std::vector<double> means(C);
    for (int64_t c = 0; c < C; ++c) means[c] = row_mean(err[c], n);
    std::vector<int64_t> n_scores(C, n);
    for (int64_t s = 0; s < n; ++s)  // the first non-finite score in (sample, class) order fails the image
      for (int64_t c = 0; c < C; ++c)
        if (!std::isfinite(err[c][s])) return finish(-1, means, n_scores, spent, spent, non_finite(err[c][s], s, c));
    int label = static_cast<int>(std::min_element(means.begin(), means.end()) - means.begin());  // ties: the lower class id
    return finish(label, means, n_scores, spent, spent, "");
  }

  // -- ttest: Clark & Jaini's paired t-test elimination (policies/ttest.py) ----------------------
  Result ttest(const at::Tensor& x0, uint64_t key) {
    const int64_t C = static_cast<int64_t>(info.classes.size()), T = info.num_timesteps;
    // engine/noise.py: uniform(key, i) = default_rng([seed, key & 0xFFFFFFFF, key >> 32, i, 1]).random()
    auto uniform = [&](uint64_t i) { return detail::numpy_default_rng_random({opt.seed, key & 0xFFFFFFFFull, key >> 32, i, 1}); };
    double shift = opt.t_order == "stratified" ? uniform(0x7FFFFFFFull) : 0.0;
    auto timestep = [&](int64_t i) -> int64_t {
      if (opt.t_order == "random") return std::min<int64_t>(T - 1, static_cast<int64_t>(uniform(static_cast<uint64_t>(i)) * static_cast<double>(T)));
      double u = std::fmod(radical_inverse(static_cast<uint64_t>(i)) + shift, 1.0);
      return std::min<int64_t>(T - 1, static_cast<int64_t>((0.0 + u * 1.0) * static_cast<double>(T)));
    };
    std::vector<int64_t> t_of_sample;
    std::vector<std::vector<double>> err(C);
    std::vector<bool> alive(C, true);
    std::vector<int64_t> n_used(C, 0);
    int64_t n = 0, spent = 0;
    bool done = C == 1;
    std::string failure;
    while (!done) {
      int64_t required = std::min<int64_t>(opt.max_scores, std::max<int64_t>(opt.min_scores, n + 1));
      std::vector<int64_t> live;
      int64_t per_sample = 0;
      for (int64_t c = 0; c < C; ++c)
        if (alive[c]) live.push_back(c), per_sample += cost[c];
      // Score the required samples and, speculatively, as many more as fill the last denoiser call.
      int64_t k = std::max<int64_t>(required - n, std::max<int64_t>(1, batch / per_sample));
      int64_t calls = (k * per_sample + batch - 1) / batch;
      k = std::max<int64_t>(k, calls * batch / per_sample);
      k = std::min<int64_t>(k, opt.max_scores - n);
      k = std::min<int64_t>(k, std::max<int64_t>(required - n, noise.size(0) - n));  // never speculate past the noise rows
      need_noise_rows(n + k);
      while (static_cast<int64_t>(t_of_sample.size()) < n + k) t_of_sample.push_back(timestep(static_cast<int64_t>(t_of_sample.size())));
      std::vector<int64_t> cls, smp;
      for (int64_t s = n; s < n + k; ++s)
        for (int64_t c : live) cls.push_back(c), smp.push_back(s);
      std::vector<double> e = score(x0, cls, smp, t_of_sample);
      for (int64_t c : live) err[c].resize(n + k, NAN);
      for (size_t q = 0; q < cls.size(); ++q) err[cls[q]][smp[q]] = e[q], spent += cost[cls[q]];
      // Replay the rule one sample at a time; a class dropped at sample m ignores its later scores.
      const int64_t end = n + k;  // n advances inside the loop
      for (int64_t s = n; s < end && !done; ++s) {
        for (int64_t c = 0; c < C; ++c)
          if (alive[c] && !std::isfinite(err[c][s])) {
            failure = non_finite(err[c][s], s, c);
            break;
          }
        if (!failure.empty()) {
          done = true;
          break;
        }
        n += 1;
        for (int64_t c = 0; c < C; ++c)
          if (alive[c]) n_used[c] = n;
        if (n >= opt.min_scores) prune(err, alive, n);
        if (std::count(alive.begin(), alive.end(), true) == 1 || n >= opt.max_scores) done = true;
      }
    }
    std::vector<double> means(C, NAN);
    for (int64_t c = 0; c < C; ++c)
      if (n_used[c] > 0) means[c] = row_mean(err[c], static_cast<size_t>(n_used[c]));
    int label = -1;
    for (int64_t c = 0; c < C; ++c) {
      if (!alive[c]) continue;
      if (label < 0 || (n > 0 && (std::isnan(means[label]) || means[c] < means[label]))) label = static_cast<int>(c);
    }
    int64_t evaluations = 0;
    for (int64_t c = 0; c < C; ++c) evaluations += n_used[c] * cost[c];
    return finish(label, means, n_used, evaluations, spent, failure);
  }

  void prune(const std::vector<std::vector<double>>& err, std::vector<bool>& alive, int64_t n) const {
    std::vector<int64_t> live;
    for (size_t c = 0; c < alive.size(); ++c)
      if (alive[c]) live.push_back(static_cast<int64_t>(c));
    size_t best = 0;
    std::vector<double> means(live.size());
    for (size_t k = 0; k < live.size(); ++k) {
      means[k] = row_mean(err[live[k]], static_cast<size_t>(n));
      if (means[k] < means[best]) best = k;  // np.argmin: the first minimum
    }
    std::vector<double> diffs(live.size() * n);
    for (size_t k = 0; k < live.size(); ++k)
      for (int64_t j = 0; j < n; ++j) diffs[k * n + j] = err[live[k]][j] - err[live[best]][j];
    std::vector<double> p = detail::paired_t_pvalues(diffs, live.size(), static_cast<size_t>(n), opt.sides);
    p[best] = 1.0;
    for (size_t k = 0; k < live.size(); ++k)
      if (p[k] < opt.cutoff_pval) alive[live[k]] = false;
  }
};

Classifier::Classifier(const std::string& export_dir, Options options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.dir = export_dir;
  m.opt = std::move(options);
  const Options& o = m.opt;
  if (o.policy != "ttest" && o.policy != "exhaustive") throw UserError("policy '" + o.policy + "': the native runner has ttest and exhaustive");
  if (o.t_order != "stratified" && o.t_order != "random") throw UserError("t-order '" + o.t_order + "': expected stratified or random");
  if (!(1 <= o.min_scores && o.min_scores <= o.max_scores)) throw UserError("need 1 <= min-scores <= max-scores");
  if (!(o.cutoff_pval > 0 && o.cutoff_pval < 1)) throw UserError("cutoff-pval must be in (0, 1)");
  if (o.sides != 1 && o.sides != 2) throw UserError("sides must be 1 or 2");
  if (o.batch_size < 0) throw UserError("batch size must be positive");
  std::string mpath = export_dir + "/manifest.json";
  if (!file_exists(mpath)) throw UserError(export_dir + ": no manifest.json (not a folder written by diffcls-fast export --format aoti)");
  Json man;
  try {
    man = Json::parse(read_text(mpath));
    if (!man.has("format") || man.at("format").as_string() != "diffcls-fast-aoti") throw UserError(mpath + ": not a diffcls-fast AOTInductor manifest");
    if (man.at("version").as_int() != 1) throw UserError(mpath + ": manifest version " + std::to_string(man.at("version").as_int()) + " (this runner reads version 1)");
    if (man.has("torch")) {
      const std::string built = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR);
      const std::string exported = man.at("torch").as_string();
      if (major_minor(exported) != built)
        throw UserError(mpath + ": exported with torch " + exported + ", but this runner is built against libtorch " + TORCH_VERSION +
                        "; AOTInductor packages do not carry across torch versions: export again with torch " + built + ".x, or rebuild against torch " +
                        major_minor(exported));
    }
    ModelInfo& info = m.info;
    info.model = man.at("model").as_string();
    info.fingerprint = man.at("fingerprint").as_string();
    info.prediction_type = man.at("prediction_type").as_string();
    info.cond_kind = man.at("cond_kind").as_string();
    const Json& pre = man.at("preprocessing");
    info.channels = static_cast<int>(pre.at("channels").as_int());
    info.height = static_cast<int>(pre.at("height").as_int());
    info.width = static_cast<int>(pre.at("width").as_int());
    info.num_timesteps = static_cast<int>(man.at("num_timesteps").as_int());
    info.out_channels = static_cast<int>(man.at("out_channels").as_int());
    for (const auto& c : man.at("classes").arr) info.classes.push_back(c.as_string());
    for (const auto& ids : man.at("class_prompts").arr) {
      std::vector<int64_t> v;
      for (const auto& i : ids.arr) v.push_back(i.as_int());
      m.cost.push_back(static_cast<int64_t>(v.size()));
      m.class_prompts.push_back(std::move(v));
    }
    for (const auto& p : man.at("packages").arr) {
      Package pk{static_cast<int>(p.at("min_batch").as_int()), static_cast<int>(p.at("max_batch").as_int()), nullptr};
      std::string path = export_dir + "/" + p.at("file").as_string();
      if (!file_exists(path)) throw UserError(path + ": missing (the manifest names it)");
      if (p.has("sha256")) {  // the compiled denoiser itself: a package from another export would answer silently wrong
        std::string data = read_text(path);
        if (detail::sha256_hex(data.data(), data.size()) != p.at("sha256").as_string())
          throw UserError(path + ": its sha256 differs from the manifest's (the package changed after export); export again");
      }
      pk.loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path);
      m.packages.push_back(std::move(pk));
    }
    if (m.packages.empty()) throw UserError(mpath + ": names no package");
    std::sort(m.packages.begin(), m.packages.end(), [](const Package& a, const Package& b) { return a.lo < b.lo; });
    info.max_batch = m.packages.back().hi;
    // The tables must be the ones exported with this manifest (a swapped file would change answers silently).
    auto check_hash = [&](const std::string& name) {
      if (!man.has("sha256") || !man.at("sha256").has(name)) return;
      std::string path = export_dir + "/" + man.at("files").at(name).as_string();
      std::string data = read_text(path);
      if (detail::sha256_hex(data.data(), data.size()) != man.at("sha256").at(name).as_string())
        throw UserError(path + ": its sha256 differs from the manifest's (the file changed after export); export again");
    };
    check_hash("schedule");
    check_hash("conditions");
    if (o.noise_path.empty()) check_hash("noise");
    auto sched = detail::read_safetensors(export_dir + "/" + man.at("files").at("schedule").as_string());
    m.sqrt_ab = sched.at("sqrt_ab");
    m.sqrt_1mab = sched.at("sqrt_1mab");
    m.acp_f32 = sched.at("alphas_cumprod").to(at::kFloat);
    m.cond = detail::read_safetensors(export_dir + "/" + man.at("files").at("conditions").as_string()).at("cond");
    if (m.class_prompts.size() != info.classes.size()) throw UserError(mpath + ": class_prompts and classes differ in length");
    for (const auto& ids : m.class_prompts) {
      if (ids.empty()) throw UserError(mpath + ": a class with no prompt");
      for (int64_t i : ids)
        if (i < 0 || i >= m.cond.size(0)) throw UserError(mpath + ": prompt id " + std::to_string(i) + " is outside the condition table");
    }
    std::string noise_path = o.noise_path;
    if (noise_path.empty()) {
      if (!man.at("files").has("noise")) throw UserError(export_dir + ": no noise.safetensors; export with --noise-path FILE, or pass --noise FILE");
      noise_path = export_dir + "/" + man.at("files").at("noise").as_string();
    }
    if (!file_exists(noise_path)) throw UserError(noise_path + ": no such noise file");
    auto nz = detail::read_safetensors(noise_path);
    if (!nz.count("noise")) throw UserError(noise_path + ": no tensor named 'noise'");
    m.noise = nz.at("noise").to(at::kFloat).contiguous();
    if (m.noise.dim() != 4 || m.noise.size(1) != info.channels || m.noise.size(2) != info.height || m.noise.size(3) != info.width)
      throw UserError(noise_path + ": 'noise' must be [N, " + std::to_string(info.channels) + ", " + std::to_string(info.height) + ", " + std::to_string(info.width) + "]");
    if (!at::isfinite(m.noise).all().item<bool>()) throw UserError(noise_path + ": 'noise' holds NaN or infinite values");
    // Calibration: explicit values win; else the manifest's for this policy; else T = 1e-2, floor 0.
    double T = 1e-2, fl = 0.0;
    if (man.has("calibration") && man.at("calibration").has(o.policy)) {
      T = man.at("calibration").at(o.policy).at("temperature").as_double();
      fl = man.at("calibration").at(o.policy).at("floor").as_double();
    }
    if (!std::isnan(o.temperature)) T = o.temperature, fl = 0.0;
    if (!std::isnan(o.floor)) fl = o.floor;
    if (!(T > 0 && std::isfinite(T))) throw UserError("temperature must be a finite number > 0");
    if (!(fl >= 0 && fl < 1)) throw UserError("floor must be in [0, 1)");
    m.temperature = T, m.floor = fl;
  } catch (const UserError&) {
    throw;
  } catch (const std::exception& e) {
    throw UserError(export_dir + ": cannot load the export (" + std::string(e.what()) + ")");
  }
  if (o.policy == "exhaustive" && !(1 <= o.n_grid && o.n_grid <= m.info.num_timesteps))
    throw UserError("grid size must be in [1, " + std::to_string(m.info.num_timesteps) + "], got " + std::to_string(o.n_grid));
  m.batch = o.batch_size > 0 ? std::min(o.batch_size, m.info.max_batch) : m.info.max_batch;
  // One call per package at load time: a package's first run initialises its kernels (tens of ms),
  // which would otherwise land in the first image's latency.
  c10::InferenceMode inference;
  for (auto& p : m.packages) {
    int64_t b = p.lo;
    at::Tensor x = at::zeros({b, m.info.channels, m.info.height, m.info.width}, at::kFloat);
    at::Tensor t = at::zeros({b}, at::TensorOptions().dtype(at::kLong));
    at::Tensor c = m.cond.index_select(0, at::zeros({b}, at::TensorOptions().dtype(at::kLong)));
    p.loader->run({x, t, c});
  }
}

Classifier::~Classifier() = default;
Classifier::Classifier(Classifier&&) noexcept = default;
Classifier& Classifier::operator=(Classifier&&) noexcept = default;
const ModelInfo& Classifier::info() const { return impl_->info; }
const Options& Classifier::options() const { return impl_->opt; }

Result Classifier::classify(const at::Tensor& pixels) {
  Impl& m = *impl_;
  auto t0 = std::chrono::steady_clock::now();
  const ModelInfo& info = m.info;
  if (pixels.dim() != 3 || pixels.size(0) != info.channels || pixels.size(1) != info.height || pixels.size(2) != info.width)
    throw UserError("image tensor of the wrong shape; expected [C, H, W] = [" + std::to_string(info.channels) + ", " + std::to_string(info.height) + ", " + std::to_string(info.width) + "]");
  c10::InferenceMode inference;
  at::Tensor x0;
  if (pixels.scalar_type() == at::kByte) {
    x0 = pixels.to(at::kFloat) / 127.5 - 1.0;
  } else {
    x0 = pixels.to(at::kFloat).contiguous();
    if (!at::isfinite(x0).all().item<bool>()) {
      Result r = m.finish(-1, std::vector<double>(info.classes.size(), NAN), std::vector<int64_t>(info.classes.size(), 0), 0, 0,
                          "image: tensor holds NaN or infinite values; it was not scored");
      return r;
    }
    double lo = x0.min().item<double>(), hi = x0.max().item<double>();
    if (lo < -1.0 - 1e-3 || hi > 1.0 + 1e-3) throw UserError("image tensor values span [" + std::to_string(lo) + ", " + std::to_string(hi) + "], expected [-1, 1]");
    x0 = x0.clamp(-1.0, 1.0);
  }
  x0 = x0.contiguous();
  // engine/noise.py image_key: the first 8 bytes of sha256(float32 pixels + 0.0), little-endian, >> 1
  // (+ 0.0 turns -0.0 into 0.0: equal values, equal key).
  uint8_t digest[32];
  at::Tensor keyed = (x0 + 0.0).contiguous();
  detail::sha256(keyed.data_ptr<float>(), sizeof(float) * static_cast<size_t>(keyed.numel()), digest);
  uint64_t key = 0;
  for (int k = 7; k >= 0; --k) key = (key << 8) | digest[k];
  key >>= 1;
  Result r;
  if (info.classes.size() == 1) {
    r = m.finish(0, {NAN}, {0}, 0, 0, "");
  } else {
    r = m.opt.policy == "exhaustive" ? m.exhaustive(x0) : m.ttest(x0, key);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace diffcls
