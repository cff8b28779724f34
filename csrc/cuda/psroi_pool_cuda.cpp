// psroi_pool on CUDA: argument checks, allocation and dtype dispatch around the kernels of
// psroi_pool_kernels.cu (see there for the semantics).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../pooling_checks.h"
#include "kernels.h"

namespace dcnviz {
namespace {

at::Tensor psroi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                   int64_t output_dim, int64_t group_size, int64_t pooled_size) {
  const PoolGeometry g = check_psroi_pool(input, rois, spatial_scale, output_dim, group_size, pooled_size);
  const c10::cuda::CUDAGuard guard(input.device());
  auto output = at::empty({g.rois, output_dim, pooled_size, pooled_size}, input.options());
  const int64_t total = output.numel();
  if (total == 0) return output;
  const auto x = input.contiguous(), r = rois.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "psroi_pool_forward_cuda", [&] {
    launch_psroi_pool_forward(x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), g, total,
                              stream);
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
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "psroi_pool_backward_cuda", [&] {
      launch_psroi_pool_backward(dy.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                                 grad_input.data_ptr<at::opmath_type<scalar_t>>(), g, total, stream);
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
