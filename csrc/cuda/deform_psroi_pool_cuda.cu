// CUDA kernels of deform_psroi_pool: MXNet's DeformablePSROIPooling (official.md §3.2), forward and
// backward, on the geometry of csrc/pooling.h that the CPU kernels use too. One thread per output bin;
// the backward spreads gradients with atomics into float32 (or float64) buffers, so half and bfloat16
// inputs accumulate in at::opmath_type and are rounded once at the end.
//
// Robustness: a RoI whose batch index is outside [0, N) or not finite, or with a non-finite corner, is
// never used to index memory; its bins are 0 and it receives no gradient. Other sample positions,
// including NaN or infinite ones from the offsets, go through dpsroi_axis, which skips them when they
// are off the map.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../pooling.h"
#include "../pooling_checks.h"
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

at::Tensor deform_psroi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                          const std::optional<at::Tensor>& offset, double spatial_scale,
                                          int64_t output_dim, int64_t group_size, int64_t pooled_size,
                                          int64_t part_size, int64_t sample_per_part, double trans_std) {
  const DeformPoolGeometry g = check_deform_psroi_pool(input, rois, offset, spatial_scale, output_dim, group_size,
                                                       pooled_size, part_size, sample_per_part, trans_std);
  const c10::cuda::CUDAGuard guard(input.device());
  auto output = at::empty({g.rois, output_dim, pooled_size, pooled_size}, input.options());
  const int64_t total = output.numel();
  if (total == 0) return output;
  const auto x = input.contiguous(), r = rois.contiguous();
  const auto t = g.has_offset ? offset->contiguous() : at::Tensor();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_psroi_pool_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), g.has_offset ? t.data_ptr<scalar_t>() : nullptr,
        output.data_ptr<scalar_t>(), g, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> deform_psroi_pool_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& rois,
    const std::optional<at::Tensor>& offset, double spatial_scale, int64_t output_dim, int64_t group_size,
    int64_t pooled_size, int64_t part_size, int64_t sample_per_part, double trans_std) {
  const DeformPoolGeometry g = check_deform_psroi_pool(input, rois, offset, spatial_scale, output_dim, group_size,
                                                       pooled_size, part_size, sample_per_part, trans_std);
  check_pool_grad_output(grad_output, input, g, "deform_psroi_pool");
  // The gradients are spread with atomics: not bitwise reproducible (as torchvision reports its own).
  at::globalContext().alertNotDeterministic("deform_psroi_pool_backward_cuda");
  const c10::cuda::CUDAGuard guard(input.device());
  // Gradients accumulate in at::opmath_type (float for half/bfloat16) and are cast once at the end.
  const auto acc = input.options().dtype(at::toOpMathType(input.scalar_type()));
  auto grad_input = at::zeros(input.sizes(), acc);
  auto grad_offset = g.has_offset ? at::zeros(offset->sizes(), acc) : at::empty({0}, input.options());
  const int64_t total = grad_output.numel();
  if (total > 0 && input.numel() > 0) {
    const auto dy = grad_output.contiguous(), x = input.contiguous(), r = rois.contiguous();
    const auto t = g.has_offset ? offset->contiguous() : at::Tensor();
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_psroi_pool_backward_cuda", [&] {
      using A = at::opmath_type<scalar_t>;
      backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
          g.has_offset ? t.data_ptr<scalar_t>() : nullptr, grad_input.data_ptr<A>(),
          g.has_offset ? grad_offset.data_ptr<A>() : nullptr, g, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_input.to(input.scalar_type()), grad_offset.to(input.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnviz, CUDA, m) {
  m.impl("deform_psroi_pool", &deform_psroi_pool_forward_cuda);
  m.impl("_deform_psroi_pool_backward", &deform_psroi_pool_backward_cuda);
}

}  // namespace dcnviz
