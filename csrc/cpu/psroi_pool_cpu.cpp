// CPU kernels of psroi_pool: MXNet's PSROIPooling (official.md §3.3), forward and backward. The CUDA
// kernels in csrc/cuda/psroi_pool_cuda.cu follow the same structure.
//
// Robustness: a RoI whose batch index is outside [0, N) or not finite, or with a non-finite corner, is
// never used to index memory; its bins are 0 and it receives no gradient. Bin edges are clamped to the
// map while still floating point (NaN becomes an empty bin), so no value converted to an index can
// leave [0, H] x [0, W].
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../sampling.h"

namespace dcnviz {
namespace {

struct Geometry {
  int64_t batch, channels, height, width;  // input (N, C, H, W)
  int64_t rois;                            // R
  int64_t output_dim, group_size, pooled_size;
  double spatial_scale;
};

Geometry check(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t output_dim,
               int64_t group_size, int64_t pooled_size) {
  TORCH_CHECK(input.dim() == 4, "psroi_pool: input must be (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "psroi_pool: rois must be (R, 5), got ", rois.sizes());
  TORCH_CHECK(output_dim > 0 && group_size > 0 && pooled_size > 0,
              "psroi_pool: output_dim, group_size and pooled_size must be positive");
  TORCH_CHECK(input.size(1) == output_dim * group_size * group_size,
              "psroi_pool: input must have output_dim*group_size**2 channels, got ", input.size(1));
  TORCH_CHECK(rois.scalar_type() == input.scalar_type() && rois.device() == input.device(),
              "psroi_pool: rois must match input's dtype and device");
  return {input.size(0), input.size(1), input.size(2), input.size(3), rois.size(0),
          output_dim, group_size, pooled_size, spatial_scale};
}

// A RoI in feature-map pixels: rounded corners, scaled, no shift; size at least 0.1.
template <typename T>
struct RoiFrame {
  int64_t batch;  // -1: unusable RoI, which yields zeros and no gradient
  T x_start, y_start, width, height;
};

template <typename T>
RoiFrame<T> roi_frame(const T* roi, const Geometry& g) {
  RoiFrame<T> f{-1, T(0), T(0), T(0), T(0)};
  if (!(roi[0] >= T(0) && roi[0] < T(g.batch))) return f;
  for (int k = 1; k < 5; ++k)
    if (!std::isfinite(roi[k])) return f;
  const T s = static_cast<T>(g.spatial_scale);
  f.x_start = round_half_away(roi[1]) * s;
  f.y_start = round_half_away(roi[2]) * s;
  f.width = std::max((round_half_away(roi[3]) + T(1)) * s - f.x_start, T(0.1));
  f.height = std::max((round_half_away(roi[4]) + T(1)) * s - f.y_start, T(0.1));
  f.batch = static_cast<int64_t>(roi[0]);
  return f;
}

// floor/ceil of a bin edge, clamped to [0, extent] before it becomes an integer (NaN gives 0).
template <typename T>
int64_t edge_index(T v, int64_t extent) {
  return v >= T(0) ? (v <= T(extent) ? static_cast<int64_t>(v) : extent) : 0;
}

// Group cell of bin p along one axis: floor(p*G/P), clamped to [0, G-1] as in the official kernels.
inline int64_t group_of(int64_t p, int64_t G, int64_t P) { return std::min(std::max(p * G / P, int64_t(0)), G - 1); }

// The whole pixels [h0, h1) x [w0, w1) averaged by output bin (ctop, ph, pw), and its input channel.
struct Window {
  int64_t channel, h0, h1, w0, w1;
  bool empty() const { return h1 <= h0 || w1 <= w0; }
  int64_t area() const { return (h1 - h0) * (w1 - w0); }
};

template <typename T>
Window make_window(const RoiFrame<T>& f, int64_t ctop, int64_t ph, int64_t pw, const Geometry& g) {
  const int64_t P = g.pooled_size, G = g.group_size;
  const T bin_w = f.width / T(P), bin_h = f.height / T(P);
  const int64_t gh = group_of(ph, G, P), gw = group_of(pw, G, P);
  return {(ctop * G + gh) * G + gw,
          edge_index(std::floor(T(ph) * bin_h + f.y_start), g.height),
          edge_index(std::ceil(T(ph + 1) * bin_h + f.y_start), g.height),
          edge_index(std::floor(T(pw) * bin_w + f.x_start), g.width),
          edge_index(std::ceil(T(pw + 1) * bin_w + f.x_start), g.width)};
}

template <typename T>
void forward_kernel(const T* input, const T* rois, T* output, const Geometry& g) {
  const int64_t P = g.pooled_size, plane = g.height * g.width;
  at::parallel_for(0, g.rois * g.output_dim * P * P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t pw = index % P, ph = index / P % P, ctop = index / (P * P) % g.output_dim, n = index / (P * P * g.output_dim);
      const RoiFrame<T> f = roi_frame(rois + n * 5, g);
      const Window win = f.batch < 0 ? Window{0, 0, 0, 0, 0} : make_window(f, ctop, ph, pw, g);
      if (win.empty()) {
        output[index] = T(0);
        continue;
      }
      const T* x = input + (f.batch * g.channels + win.channel) * plane;
      T sum = T(0);
      for (int64_t h = win.h0; h < win.h1; ++h)
        for (int64_t w = win.w0; w < win.w1; ++w) sum += x[h * g.width + w];
      output[index] = sum / T(win.area());
    }
  });
}

// Each pixel of a bin receives grad/area. Split by input channel: only the bins of one (ctop, gh, gw)
// read a channel, so threads never write the same element.
template <typename T>
void input_grad_kernel(const T* grad, const T* rois, T* grad_input, const Geometry& g) {
  const int64_t P = g.pooled_size, G = g.group_size, plane = g.height * g.width;
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t channel = begin; channel < end; ++channel) {
      const int64_t ctop = channel / (G * G), gh = channel / G % G, gw = channel % G;
      for (int64_t n = 0; n < g.rois; ++n) {
        const RoiFrame<T> f = roi_frame(rois + n * 5, g);
        if (f.batch < 0) continue;
        T* gx = grad_input + (f.batch * g.channels + channel) * plane;
        for (int64_t ph = 0; ph < P; ++ph) {
          if (group_of(ph, G, P) != gh) continue;
          for (int64_t pw = 0; pw < P; ++pw) {
            if (group_of(pw, G, P) != gw) continue;
            const Window win = make_window(f, ctop, ph, pw, g);
            if (win.empty()) continue;
            const T diff = grad[((n * g.output_dim + ctop) * P + ph) * P + pw] / T(win.area());
            for (int64_t h = win.h0; h < win.h1; ++h)
              for (int64_t w = win.w0; w < win.w1; ++w) gx[h * g.width + w] += diff;
          }
        }
      }
    }
  });
}

at::Tensor psroi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                  int64_t output_dim, int64_t group_size, int64_t pooled_size) {
  const Geometry g = check(input, rois, spatial_scale, output_dim, group_size, pooled_size);
  auto output = at::empty({g.rois, output_dim, pooled_size, pooled_size}, input.options());
  if (output.numel() == 0) return output;
  const auto x = input.contiguous(), r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "psroi_pool_forward_cpu", [&] {
    forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), g);
  });
  return output;
}

at::Tensor psroi_pool_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& rois,
                                   double spatial_scale, int64_t output_dim, int64_t group_size, int64_t pooled_size) {
  const Geometry g = check(input, rois, spatial_scale, output_dim, group_size, pooled_size);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({g.rois, output_dim, pooled_size, pooled_size}) &&
                  grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(),
              "psroi_pool backward: grad_output must be (R, output_dim, pooled_size, pooled_size) with input's "
              "dtype and device, got ", grad_output.sizes());
  auto grad_input = at::zeros_like(input, at::MemoryFormat::Contiguous);
  if (grad_output.numel() == 0 || input.numel() == 0) return grad_input;
  const auto dy = grad_output.contiguous(), r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "psroi_pool_backward_cpu", [&] {
    input_grad_kernel<scalar_t>(dy.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>(), g);
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnviz, CPU, m) {
  m.impl("psroi_pool", &psroi_pool_forward_cpu);
  m.impl("_psroi_pool_backward", &psroi_pool_backward_cpu);
}

}  // namespace dcnviz
