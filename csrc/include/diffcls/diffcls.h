// diffcls: classify images with a diffusion model exported by `diffcls-fast export --format aoti`,
// without Python. The results equal `diffcls-fast classify --noise-path DIR/noise.safetensors`
// (labels and evaluation counts exactly, mean errors to float32 rounding): the same timesteps per
// (seed, image, sample), the same noise rows, the same decision rules.
//
//   diffcls::Classifier clf("exported/digits");             // manifest.json, .pt2 package(s), tables
//   at::Tensor x = diffcls::load_image("digit-7.png", clf.info());   // [C, H, W] in [-1, 1]
//   diffcls::Result r = clf.classify(x);                     // t-test policy, seed 0 by default
//   std::cout << r.label << " " << r.evaluations << "\n" << r.to_json() << "\n";
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace diffcls {

// The policy and its options; the defaults are diffcls-fast's.
struct Options {
  std::string policy = "ttest";  // "ttest" (Clark & Jaini) or "exhaustive" (Li et al.'s grid)
  uint64_t seed = 0;             // the engine's noise seed (timestep draws; noise rows come from the file)
  // ttest
  int min_scores = 20;
  int max_scores = 2000;
  double cutoff_pval = 2e-3;
  int sides = 2;
  std::string t_order = "stratified";  // or "random"
  // exhaustive
  int n_grid = 50;
  // Posterior softmax temperature and floor; NaN: the model's calibration for the policy (from the
  // manifest), else temperature 1e-2 and floor 0. A temperature set without a floor sets the floor to 0.
  double temperature = std::numeric_limits<double>::quiet_NaN();
  double floor = std::numeric_limits<double>::quiet_NaN();
  // Rows per denoiser call: 0 = the largest batch the packages cover. Speculative samples fill it
  // (they change the compute spent, never the result).
  int batch_size = 0;
  std::string noise_path;  // empty: EXPORT_DIR/noise.safetensors
  std::string describe() const;  // as the Python engine's PolicyConfig.describe()
};

// One image's answer (the fields of diffcls-fast's ClassificationResult).
struct Result {
  int label_index = -1;  // -1 when the image failed (error is set)
  std::string label;
  std::vector<std::string> class_names;
  std::vector<double> probabilities;
  std::vector<double> mean_errors;  // NaN for classes never scored
  std::vector<int64_t> n_scores;
  int64_t evaluations = 0;        // denoiser rows the decision rule needed (deterministic)
  int64_t evaluations_spent = 0;  // rows actually scored here, speculation included
  double seconds = 0.0;
  std::string policy;
  std::string error;  // empty when fine
  bool ok() const { return error.empty(); }
  std::vector<std::pair<std::string, double>> top(int k = 5) const;
  std::string to_json(int top_k = 5) const;  // the schema of `diffcls-fast classify --json` (plus "image" if set)
  std::string image;                         // set by the CLI
};

// What the export folder says about the model.
struct ModelInfo {
  std::string model, fingerprint, prediction_type, cond_kind;
  int channels = 0, height = 0, width = 0, num_timesteps = 0, out_channels = 0;
  std::vector<std::string> classes;
  int max_batch = 0;
};

class Classifier {
 public:
  explicit Classifier(const std::string& export_dir, Options options = Options());
  ~Classifier();
  Classifier(Classifier&&) noexcept;
  Classifier& operator=(Classifier&&) noexcept;

  // pixels: float32 [C, H, W] in [-1, 1] (the model's preprocessed input; see load_image).
  Result classify(const at::Tensor& pixels);
  const ModelInfo& info() const;
  const Options& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// An image file as the model's preprocessed pixels [C, H, W] float32 in [-1, 1]:
// * .safetensors: a tensor "image" [C, H, W] (float32 in [-1, 1], or uint8 0..255), as written by
//   diffcls_fast.export.aoti_export.save_pixels; a file with "images" [N, C, H, W] is N images.
// * .png (when built with libpng; see has_png()): 8-bit grayscale (1-channel models) or RGB
//   (3-channel), of exactly the model's size; pixel p becomes p / 127.5 - 1 as in classify.
//   Other PNGs (other sizes, palette, alpha, 16-bit, EXIF orientation) are refused: resize them
//   with the Python engine's preprocessing and save the tensor instead.
std::vector<at::Tensor> load_images(const std::string& path, const ModelInfo& info);
at::Tensor load_image(const std::string& path, const ModelInfo& info);
bool has_png();

// Thrown for bad input (a missing or malformed file, an option out of range): the CLI prints
// "diffcls-run: error: <what>" and exits 2.
struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace diffcls
