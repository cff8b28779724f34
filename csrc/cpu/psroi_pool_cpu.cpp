// CPU kernels of psroi_pool: MXNet's PSROIPooling (official.md §3.3), forward and backward, on the
// geometry of csrc/pooling.h that the CUDA kernels use too.
//
// Robustness: a RoI whose batch index is outside [0, N) or not finite, or with a non-finite corner, is
// never used to index memory; its bins are 0 and it receives no gradient. Bin edges are clamped to the
// map while still floating point (NaN becomes an empty bin), so no value converted to an index can
// leave [0, H] x [0, W].
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../pooling.h"
#include "../pooling_checks.h"

namespace dcnviz {
namespace {

template <typename T>
void forward_kernel(const T* input, const T* rois, T* output, const PoolGeometry& g) {
  const int64_t P = g.pooled_size, G = g.group_size, plane = g.height * g.width;
  at::parallel_for(0, g.rois * g.output_dim * P * P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t pw = index % P, ph = index / P % P, ctop = index / (P * P) % g.output_dim, n = index / (P * P * g.output_dim);
      const RoiFrame<T> f = psroi_frame<T>(rois + n * 5, g);
      const Window win = make_window(f, ph, pw, g);
      if (win.empty()) {
        output[index] = T(0);
        continue;
      }
      const T* x = input + (f.batch * g.channels + ps_channel(ctop, group_of(ph, G, P), group_of(pw, G, P), G)) * plane;
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
void input_grad_kernel(const T* grad, const T* rois, T* grad_input, const PoolGeometry& g) {
  const int64_t P = g.pooled_size, G = g.group_size, plane = g.height * g.width;
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t channel = begin; channel < end; ++channel) {
      const int64_t ctop = channel / (G * G), gh = channel / G % G, gw = channel % G;
      for (int64_t n = 0; n < g.rois; ++n) {
        const RoiFrame<T> f = psroi_frame<T>(rois + n * 5, g);
        if (f.batch < 0) continue;
        T* gx = grad_input + (f.batch * g.channels + channel) * plane;
        for (int64_t ph = 0; ph < P; ++ph) {
          if (group_of(ph, G, P) != gh) continue;
          for (int64_t pw = 0; pw < P; ++pw) {
            if (group_of(pw, G, P) != gw) continue;
            const Window win = make_window(f, ph, pw, g);
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
  const PoolGeometry g = check_psroi_pool(input, rois, spatial_scale, output_dim, group_size, pooled_size);
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
  const PoolGeometry g = check_psroi_pool(input, rois, spatial_scale, output_dim, group_size, pooled_size);
  check_pool_grad_output(grad_output, input, g, "psroi_pool");
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
