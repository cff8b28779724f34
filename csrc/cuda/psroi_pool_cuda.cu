// CUDA kernels of psroi_pool: MXNet's PSROIPooling (official.md §3.3), forward and backward, on the
// geometry of csrc/pooling.h that the CPU kernels use too. One thread per output bin; the backward
// spreads gradients with atomics into float32 (or float64) buffers, so half and bfloat16 inputs
// accumulate in at::opmath_type and are rounded once at the end.
//
// Robustness: a RoI whose batch index is outside [0, N) or not finite, or with a non-finite corner, is
// never used to index memory; its bins are 0 and it receives no gradient. Bin edges are clamped to the
// map while still floating point (NaN becomes an empty bin).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../pooling.h"
#include "../pooling_checks.h"
#include "launch.cuh"

namespace dcnviz {
namespace {

template <typename T>
__global__ void forward_kernel(const T* input, const T* rois, T* output, const PoolGeometry g, int64_t total) {
  using A = at::opmath_type<T>;
  const int64_t plane = g.height * g.width;
  DCNVIZ_KERNEL_LOOP(index, total) {
    const auto [n, ctop, ph, pw] = output_bin(index, g);
    const RoiFrame<A> f = psroi_frame<A>(rois + n * 5, g);
    const Window win = make_window(f, ph, pw, g);
    if (win.empty()) {
      output[index] = T(0);
      continue;
    }
    const T* x = input + (f.batch * g.channels + ps_channel(ctop, ph, pw, g)) * plane;
    A sum = A(0);
    for (int64_t h = win.h0; h < win.h1; ++h)
      for (int64_t w = win.w0; w < win.w1; ++w) sum += A(x[h * g.width + w]);
    output[index] = static_cast<T>(sum / A(win.area()));
  }
}

// Each pixel of a bin receives grad/area.
template <typename T>
__global__ void backward_kernel(const T* grad, const T* rois, at::opmath_type<T>* grad_input, const PoolGeometry g,
                                int64_t total) {
  using A = at::opmath_type<T>;
  const int64_t plane = g.height * g.width;
  DCNVIZ_KERNEL_LOOP(index, total) {
    const auto [n, ctop, ph, pw] = output_bin(index, g);
    const RoiFrame<A> f = psroi_frame<A>(rois + n * 5, g);
    const Window win = make_window(f, ph, pw, g);
    if (win.empty()) continue;
    const A diff = A(grad[index]) / A(win.area());
    A* gx = grad_input + (f.batch * g.channels + ps_channel(ctop, ph, pw, g)) * plane;
    for (int64_t h = win.h0; h < win.h1; ++h)
      for (int64_t w = win.w0; w < win.w1; ++w) gpuAtomicAdd(gx + h * g.width + w, diff);
  }
}

at::Tensor psroi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                   int64_t output_dim, int64_t group_size, int64_t pooled_size) {
  const PoolGeometry g = check_psroi_pool(input, rois, spatial_scale, output_dim, group_size, pooled_size);
  const c10::cuda::CUDAGuard guard(input.device());
  auto output = at::empty({g.rois, output_dim, pooled_size, pooled_size}, input.options());
  const int64_t total = output.numel();
  if (total == 0) return output;
  const auto x = input.contiguous(), r = rois.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "psroi_pool_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), g, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor psroi_pool_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& rois,
                                    double spatial_scale, int64_t output_dim, int64_t group_size, int64_t pooled_size) {
  const PoolGeometry g = check_psroi_pool(input, rois, spatial_scale, output_dim, group_size, pooled_size);
  check_pool_grad_output(grad_output, input, g, "psroi_pool");
  // The gradients are spread with atomics: not bitwise reproducible (as torchvision reports its own).
  at::globalContext().alertNotDeterministic("psroi_pool_backward_cuda");
  const c10::cuda::CUDAGuard guard(input.device());
  // The gradient accumulates in at::opmath_type (float for half/bfloat16) and is cast once at the end.
  auto grad_input = at::zeros(input.sizes(), input.options().dtype(at::toOpMathType(input.scalar_type())));
  const int64_t total = grad_output.numel();
  if (total > 0 && input.numel() > 0) {
    const auto dy = grad_output.contiguous(), r = rois.contiguous();
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "psroi_pool_backward_cuda", [&] {
      backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          dy.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), grad_input.data_ptr<at::opmath_type<scalar_t>>(), g,
          total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return grad_input.to(input.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnviz, CUDA, m) {
  m.impl("psroi_pool", &psroi_pool_forward_cuda);
  m.impl("_psroi_pool_backward", &psroi_pool_backward_cuda);
}

}  // namespace dcnviz
