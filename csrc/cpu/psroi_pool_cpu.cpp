// CPU kernels of psroi_pool: MXNet's PSROIPooling (official.md §3.3), forward and backward, on the
// geometry of csrc/pooling.h that the CUDA kernels use too.
//
// As in deform_psroi_pool_cpu.cpp, work is channel-major (one input plane stays in cache while every
// RoI reads it), and each bin's window, the same in every channel, is computed once per call.
//
// Robustness: a RoI whose batch index is outside [0, N) or not finite, or with a non-finite corner, is
// never used to index memory; its bins are 0 and it receives no gradient. Bin edges are clamped to the
// map while still floating point (NaN becomes an empty bin), so no value converted to an index can
// leave [0, H] x [0, W].
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../pooling.h"
#include "../pooling_checks.h"
#include "reduced_precision.h"

namespace dcnviz {
namespace {

// Every RoI's frame (for its batch index) and windows, bin (ph, pw) of RoI n at n*P*P + ph*P + pw.
template <typename T>
struct RoiWindows {
  RoiWindows(const T* rois, const PoolGeometry& g) : frames(g.rois), windows(g.rois * g.pooled_size * g.pooled_size) {
    const int64_t P = g.pooled_size;
    at::parallel_for(0, g.rois, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        frames[n] = psroi_frame<T>(rois + n * 5, g);
        for (int64_t ph = 0; ph < P; ++ph)
          for (int64_t pw = 0; pw < P; ++pw) windows[(n * P + ph) * P + pw] = make_window(frames[n], ph, pw, g);
      }
    });
  }
  std::vector<RoiFrame<T>> frames;
  std::vector<Window> windows;
};

// The output bins (ph, pw) that read one input channel: ph*P + pw of each.
void channel_bins(int64_t channel, const PoolGeometry& g, std::vector<int64_t>& bins) {
  const int64_t P = g.pooled_size, G = g.group_size, gh = channel / G % G, gw = channel % G;
  bins.clear();
  for (int64_t ph = 0; ph < P; ++ph)
    for (int64_t pw = 0; pw < P; ++pw)
      if (group_of(ph, G, P) == gh && group_of(pw, G, P) == gw) bins.push_back(ph * P + pw);
}

// Work items are (channel, RoI) pairs, channel-major, so that a thread's range covers whole planes.
template <typename T>
void forward_kernel(const T* input, const T* rois, T* output, const PoolGeometry& g) {
  const RoiWindows<T> roi(rois, g);
  const int64_t P = g.pooled_size, G = g.group_size, plane = g.height * g.width;
  at::parallel_for(0, g.channels * g.rois, 64, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> bins;
    for (int64_t item = begin; item < end;) {
      const int64_t channel = item / g.rois, n_begin = item % g.rois;
      const int64_t n_end = std::min(g.rois, n_begin + (end - item));
      const int64_t ctop = channel / (G * G);
      channel_bins(channel, g, bins);
      for (int64_t n = n_begin; n < n_end; ++n) {
        T* out = output + (n * g.output_dim + ctop) * P * P;
        if (roi.frames[n].batch < 0) {
          for (const int64_t bin : bins) out[bin] = T(0);
          continue;
        }
        const T* x = input + (roi.frames[n].batch * g.channels + channel) * plane;
        for (const int64_t bin : bins) {
          const Window& win = roi.windows[n * P * P + bin];
          if (win.empty()) {
            out[bin] = T(0);
            continue;
          }
          T sum = T(0);
          for (int64_t h = win.h0; h < win.h1; ++h)
            for (int64_t w = win.w0; w < win.w1; ++w) sum += x[h * g.width + w];
          out[bin] = sum / T(win.area());
        }
      }
      item += n_end - n_begin;
    }
  });
}

// Each pixel of a bin receives grad/area. Split by input channel: only the bins of one (ctop, gh, gw)
// read a channel, so threads never write the same element, and each element sums its terms in a fixed
// order (RoI, bin) whatever the threads. grad_input comes uninitialised: a thread zeroes the planes of
// its channels just before it accumulates into them (in cache and in parallel, where a separate zero
// fill of the whole gradient was a serial pass).
template <typename T>
void input_grad_kernel(const T* grad, const T* rois, T* grad_input, const PoolGeometry& g) {
  const RoiWindows<T> roi(rois, g);
  const int64_t P = g.pooled_size, G = g.group_size, plane = g.height * g.width;
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> bins;
    for (int64_t channel = begin; channel < end; ++channel) {
      const int64_t ctop = channel / (G * G);
      channel_bins(channel, g, bins);
      for (int64_t b = 0; b < g.batch; ++b) std::fill_n(grad_input + (b * g.channels + channel) * plane, plane, T(0));
      for (int64_t n = 0; n < g.rois; ++n) {
        if (roi.frames[n].batch < 0) continue;
        T* gx = grad_input + (roi.frames[n].batch * g.channels + channel) * plane;
        const T* dy = grad + (n * g.output_dim + ctop) * P * P;
        for (const int64_t bin : bins) {
          const Window& win = roi.windows[n * P * P + bin];
          if (win.empty()) continue;
          const T diff = dy[bin] / T(win.area());
          for (int64_t h = win.h0; h < win.h1; ++h)
            for (int64_t w = win.w0; w < win.w1; ++w) gx[h * g.width + w] += diff;
        }
      }
    }
  });
}

at::Tensor psroi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                  int64_t output_dim, int64_t group_size, int64_t pooled_size) {
  const PoolGeometry g = check_psroi_pool(input, rois, spatial_scale, output_dim, group_size, pooled_size);
  if (reduced_precision(input))
    return psroi_pool_forward_cpu(upcast(input), upcast(rois), spatial_scale, output_dim, group_size, pooled_size)
        .to(input.scalar_type());
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
  if (reduced_precision(input))
    return psroi_pool_backward_cpu(upcast(grad_output), upcast(input), upcast(rois), spatial_scale, output_dim,
                                   group_size, pooled_size)
        .to(input.scalar_type());
  if (grad_output.numel() == 0 || input.numel() == 0) return at::zeros_like(input, at::MemoryFormat::Contiguous);
  auto grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);  // input_grad_kernel writes it all
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
