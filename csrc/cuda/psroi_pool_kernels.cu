// CUDA kernels of psroi_pool: MXNet's PSROIPooling (official.md §3.3), forward and backward, on the
// geometry of csrc/pooling.h that the CPU kernels use too. One thread per output bin; the backward
// spreads gradients with atomics into float32 (or float64) buffers, so half and bfloat16 inputs
// accumulate in at::opmath_type and are rounded once at the end. Host code: psroi_pool_cuda.cpp.
//
// Robustness: a RoI whose batch index is outside [0, N) or not finite, or with a non-finite corner, is
// never used to index memory; its bins are 0 and it receives no gradient. Bin edges are clamped to the
// map while still floating point (NaN becomes an empty bin).
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>

#include "kernels.h"
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

}  // namespace

template <typename T>
void launch_psroi_pool_forward(const T* input, const T* rois, T* output, const PoolGeometry& g, int64_t total,
                               cudaStream_t stream) {
  forward_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(input, rois, output, g, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_psroi_pool_backward(const T* grad, const T* rois, at::opmath_type<T>* grad_input, const PoolGeometry& g,
                                int64_t total, cudaStream_t stream) {
  backward_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(grad, rois, grad_input, g, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define DCNVIZ_INSTANTIATE(T)                                                                                  \
  template void launch_psroi_pool_forward<T>(const T*, const T*, T*, const PoolGeometry&, int64_t, cudaStream_t); \
  template void launch_psroi_pool_backward<T>(const T*, const T*, at::opmath_type<T>*, const PoolGeometry&,       \
                                              int64_t, cudaStream_t);
DCNVIZ_FOR_EACH_FLOATING_TYPE(DCNVIZ_INSTANTIATE)
#undef DCNVIZ_INSTANTIATE

}  // namespace dcnviz
