// Image files for the native runner: the engine's preprocessed-tensor file (safetensors), and PNG
// through libpng when CMake found it (DIFFCLS_HAVE_PNG).
#include <cstdio>
#include <cctype>
#include <fstream>
#include <memory>

#ifdef DIFFCLS_HAVE_PNG
#include <png.h>
#endif

#include "diffcls/diffcls.h"
#include "support.h"

namespace diffcls {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  if (s.size() < suffix.size()) return false;
  std::string tail = s.substr(s.size() - suffix.size());
  for (auto& c : tail) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return tail == suffix;
}

std::string shape_str(const ModelInfo& info) {
  return "[" + std::to_string(info.channels) + ", " + std::to_string(info.height) + ", " + std::to_string(info.width) + "]";
}

std::string sizes_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

std::vector<at::Tensor> load_tensor_file(const std::string& path, const ModelInfo& info) {
  std::map<std::string, at::Tensor> ts;
  try {
    ts = detail::read_safetensors(path);
  } catch (const std::exception& e) {
    throw UserError(e.what());
  }
  std::vector<at::Tensor> out;
  if (ts.count("image")) {
    out.push_back(ts.at("image"));
  } else if (ts.count("images")) {
    at::Tensor all = ts.at("images");
    if (all.dim() != 4) throw UserError(path + ": 'images' has shape " + sizes_str(all) + "; it must be [N, C, H, W] = [N, " + shape_str(info).substr(1));
    if (all.size(0) == 0) throw UserError(path + ": 'images' holds no images (N = 0)");
    for (int64_t i = 0; i < all.size(0); ++i) out.push_back(all[i]);
  } else {
    throw UserError(path + ": no tensor named 'image' ([C, H, W]) or 'images' ([N, C, H, W])");
  }
  for (size_t k = 0; k < out.size(); ++k) {
    const at::Tensor& t = out[k];
    std::string which = out.size() == 1 ? path : path + "#" + std::to_string(k);
    if (t.dim() != 3 || t.size(0) != info.channels || t.size(1) != info.height || t.size(2) != info.width)
      throw UserError(which + ": image tensor of shape " + sizes_str(t) + "; this model takes " + shape_str(info));
    if (t.scalar_type() != at::kFloat && t.scalar_type() != at::kByte) throw UserError(which + ": image tensor must be float32 in [-1, 1] or uint8 0..255");
    if (t.scalar_type() == at::kFloat) {
      // Checked here, with the file's name, before any image is scored; NaN/inf is not a range error: that image
      // fails its own result (as in the Python engine), so min/max are taken over the finite values only.
      at::Tensor finite = t.masked_select(at::isfinite(t));
      if (finite.numel()) {
        double lo = finite.min().item<double>(), hi = finite.max().item<double>();
        if (lo < -1.0 - 1e-3 || hi > 1.0 + 1e-3)
          throw UserError(which + ": image tensor values span [" + std::to_string(lo) + ", " + std::to_string(hi) + "], expected [-1, 1] (preprocessed pixels)");
      }
    }
  }
  return out;
}

#ifdef DIFFCLS_HAVE_PNG
at::Tensor load_png(const std::string& path, const ModelInfo& info) {
  std::unique_ptr<FILE, int (*)(FILE*)> fp(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!fp) throw UserError(path + ": no such file");
  png_byte sig[8];
  if (std::fread(sig, 1, 8, fp.get()) != 8 || png_sig_cmp(sig, 0, 8)) throw UserError(path + ": not a PNG file");
  // libpng's default handlers print "libpng error: ..." to stderr before our one line: keep its message and
  // report it in our error instead; its warnings (benign chunk oddities) are not worth a line.
  struct Handlers {
    static void error(png_structp p, png_const_charp msg) {
      *static_cast<std::string*>(png_get_error_ptr(p)) = msg ? msg : "";
      png_longjmp(p, 1);
    }
    static void warning(png_structp, png_const_charp) {}
  };
  std::string png_message;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &png_message, &Handlers::error, &Handlers::warning);
  png_infop pinfo = png ? png_create_info_struct(png) : nullptr;
  if (!pinfo) throw std::runtime_error("libpng: out of memory");
  struct Guard {
    png_structp* p;
    png_infop* i;
    ~Guard() { png_destroy_read_struct(p, i, nullptr); }
  } guard{&png, &pinfo};
  std::vector<png_bytep> rows;
  std::vector<uint8_t> data;
  if (setjmp(png_jmpbuf(png)))
    throw UserError(path + ": cannot decode PNG (corrupt or truncated" + (png_message.empty() ? "" : ": " + png_message) + ")");
  png_init_io(png, fp.get());
  png_set_sig_bytes(png, 8);
  png_read_info(png, pinfo);
  png_uint_32 w = png_get_image_width(png, pinfo), h = png_get_image_height(png, pinfo);
  int depth = png_get_bit_depth(png, pinfo), color = png_get_color_type(png, pinfo);
  const int want = info.channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB;
  // Only what needs no conversion: the Python engine's PIL conversions (palette, alpha compositing,
  // 16-bit depth, EXIF orientation, bicubic resizing) are not reimplemented here.
  if (static_cast<int>(w) != info.width || static_cast<int>(h) != info.height)
    throw UserError(path + ": PNG is " + std::to_string(w) + "x" + std::to_string(h) + ", the model takes " + std::to_string(info.width) + "x" + std::to_string(info.height) +
                    "; resize it with the Python engine (diffcls_fast.images.preprocess) and pass the saved tensor");
  if (depth != 8 || color != want)
    throw UserError(path + ": PNG must be 8-bit " + std::string(info.channels == 1 ? "grayscale" : "RGB") + " without alpha or palette for this model; convert it, or pass the preprocessed tensor");
#ifdef PNG_eXIf_SUPPORTED
  png_uint_32 n_exif = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(png, pinfo, &n_exif, &exif) && n_exif) throw UserError(path + ": PNG carries EXIF data (possibly an orientation); pass the preprocessed tensor");
#endif
  size_t stride = png_get_rowbytes(png, pinfo);
  data.resize(stride * h);
  rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) rows[y] = data.data() + y * stride;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  const int C = info.channels;
  at::Tensor out = at::empty({C, static_cast<int64_t>(h), static_cast<int64_t>(w)}, at::kFloat);
  float* o = out.data_ptr<float>();
  for (png_uint_32 y = 0; y < h; ++y)
    for (png_uint_32 x = 0; x < w; ++x)
      for (int c = 0; c < C; ++c) o[(static_cast<size_t>(c) * h + y) * w + x] = static_cast<float>(rows[y][x * C + c]) / 127.5f - 1.0f;  // images.py preprocess
  return out;
}
#endif

}  // namespace

bool has_png() {
#ifdef DIFFCLS_HAVE_PNG
  return true;
#else
  return false;
#endif
}

std::vector<at::Tensor> load_images(const std::string& path, const ModelInfo& info) {
  if (!std::ifstream(path).good()) throw UserError(path + ": no such file");
  if (ends_with(path, ".safetensors")) return load_tensor_file(path, info);
  if (ends_with(path, ".png")) {
#ifdef DIFFCLS_HAVE_PNG
    return {load_png(path, info)};
#else
    throw UserError(path + ": this diffcls-run was built without libpng; pass the preprocessed tensor (.safetensors, see save_pixels)");
#endif
  }
  throw UserError(path + ": expected a .png or a .safetensors image tensor");
}

at::Tensor load_image(const std::string& path, const ModelInfo& info) {
  auto v = load_images(path, info);
  if (v.size() != 1) throw UserError(path + ": holds " + std::to_string(v.size()) + " images; use load_images");
  return v[0];
}

}  // namespace diffcls
