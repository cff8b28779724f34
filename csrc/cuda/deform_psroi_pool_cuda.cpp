// deform_psroi_pool on CUDA: argument checks, allocation and dtype dispatch around the kernels of
// deform_psroi_pool_kernels.cu (see there for the semantics).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../pooling_checks.h"
#include "kernels.h"

namespace dcnviz {
namespace {

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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_psroi_pool_forward_cuda", [&] {
    launch_deform_psroi_pool_forward(x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                                     g.has_offset ? t.data_ptr<scalar_t>() : nullptr, output.data_ptr<scalar_t>(), g,
                                     total, stream);
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
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_psroi_pool_backward_cuda", [&] {
      using A = at::opmath_type<scalar_t>;
      launch_deform_psroi_pool_backward(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                                        g.has_offset ? t.data_ptr<scalar_t>() : nullptr, grad_input.data_ptr<A>(),
                                        g.has_offset ? grad_offset.data_ptr<A>() : nullptr, g, total, stream);
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
