// CUDA kernels of deform_psroi_pool: MXNet's DeformablePSROIPooling (official.md §3.2), forward and
// backward, on the geometry of csrc/pooling.h that the CPU kernels use too. One thread per output bin;
// the backward spreads gradients with atomics into float32 (or float64) buffers, so half and bfloat16
// inputs accumulate in at::opmath_type and are rounded once at the end. Host code:
// deform_psroi_pool_cuda.cpp.
//
// Robustness: a RoI whose batch index is outside [0, N) or not finite, or with a non-finite corner, is
// never used to index memory; its bins are 0 and it receives no gradient. Other sample positions,
// including NaN or infinite ones from the offsets, go through dpsroi_axis, which skips them when they
// are off the map.
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>

#include "kernels.h"
#include "launch.cuh"

namespace dcnviz {
namespace {

template <typename T>
__global__ void forward_kernel(const T* input, const T* rois, const T* offset, T* output, const DeformPoolGeometry g,
                               int64_t total) {
  using A = at::opmath_type<T>;
  const int64_t plane = g.height * g.width;
  DCNVIZ_KERNEL_LOOP(index, total) {
    const auto [n, ctop, ph, pw] = output_bin(index, g);
    const RoiFrame<A> f = dpsroi_frame<A>(rois + n * 5, g);
    if (f.batch < 0) {
      output[index] = T(0);
      continue;
    }
    const BinCell cell = bin_cell<A>(ctop, ph, pw, g);
    const Bin<A> b = make_bin(f, offset, n, cell, ph, pw, g);
    const T* x = input + (f.batch * g.channels + cell.channel) * plane;
    A sum = A(0);
    const int64_t count = for_each_sample(f, b, g, [&](const Corners<A>& c) { sum += bilinear(c, x); });
    output[index] = count == 0 ? T(0) : static_cast<T>(sum / A(count));
  }
}

// Each sample spreads grad/count to its four corners with the forward's weights, and adds the slope
// of its bilinear value along x and y times trans_std * roi size * grad/count to the bin's offset cell.
template <typename T>
__global__ void backward_kernel(const T* grad, const T* input, const T* rois, const T* offset,
                                at::opmath_type<T>* grad_input, at::opmath_type<T>* grad_offset,
                                const DeformPoolGeometry g, int64_t total) {
  using A = at::opmath_type<T>;
  const int64_t plane = g.height * g.width, cell_step = g.part_size * g.part_size;
  DCNVIZ_KERNEL_LOOP(index, total) {
    const auto [n, ctop, ph, pw] = output_bin(index, g);
    const RoiFrame<A> f = dpsroi_frame<A>(rois + n * 5, g);
    if (f.batch < 0) continue;
    const BinCell cell = bin_cell<A>(ctop, ph, pw, g);
    const Bin<A> b = make_bin(f, offset, n, cell, ph, pw, g);
    const int64_t count = sample_count(f, b, g);
    if (count == 0) continue;
    const A diff = A(grad[index]) / A(count);
    const T* x = input + (f.batch * g.channels + cell.channel) * plane;
    A* gx = grad_input + (f.batch * g.channels + cell.channel) * plane;
    A dvdx = A(0), dvdy = A(0);
    for_each_sample(f, b, g, [&](const Corners<A>& c) {
      gpuAtomicAdd(gx + c.i00, c.w00() * diff);
      gpuAtomicAdd(gx + c.i00 + c.dx, c.w01() * diff);
      gpuAtomicAdd(gx + c.i00 + c.dy, c.w10() * diff);
      gpuAtomicAdd(gx + c.i00 + c.dy + c.dx, c.w11() * diff);
      if (g.has_offset) add_bilinear_slopes(c, x, dvdx, dvdy);
    });
    if (g.has_offset) {
      const A trans_std = static_cast<A>(g.trans_std);
      const int64_t dx = offset_index(n, cell, g);
      gpuAtomicAdd(grad_offset + dx, dvdx * trans_std * diff * f.width);
      gpuAtomicAdd(grad_offset + dx + cell_step, dvdy * trans_std * diff * f.height);
    }
  }
}

}  // namespace

template <typename T>
void launch_deform_psroi_pool_forward(const T* input, const T* rois, const T* offset, T* output,
                                      const DeformPoolGeometry& g, int64_t total, cudaStream_t stream) {
  forward_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(input, rois, offset, output, g, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_deform_psroi_pool_backward(const T* grad, const T* input, const T* rois, const T* offset,
                                       at::opmath_type<T>* grad_input, at::opmath_type<T>* grad_offset,
                                       const DeformPoolGeometry& g, int64_t total, cudaStream_t stream) {
  backward_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(grad, input, rois, offset, grad_input, grad_offset,
                                                                  g, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define DCNVIZ_INSTANTIATE(T)                                                                                \
  template void launch_deform_psroi_pool_forward<T>(const T*, const T*, const T*, T*, const DeformPoolGeometry&, \
                                                    int64_t, cudaStream_t);                                      \
  template void launch_deform_psroi_pool_backward<T>(const T*, const T*, const T*, const T*, at::opmath_type<T>*, \
                                                     at::opmath_type<T>*, const DeformPoolGeometry&, int64_t,     \
                                                     cudaStream_t);
DCNVIZ_FOR_EACH_FLOATING_TYPE(DCNVIZ_INSTANTIATE)
#undef DCNVIZ_INSTANTIATE

}  // namespace dcnviz
