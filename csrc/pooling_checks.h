// Argument checks of the pooling kernels, shared by the CPU and CUDA backends (host code only). The
// Python wrappers check too, with friendlier messages; these guard direct torch.ops calls.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

#include "pooling.h"

namespace dcnviz {

PoolGeometry check_psroi_pool(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                              int64_t output_dim, int64_t group_size, int64_t pooled_size);

DeformPoolGeometry check_deform_psroi_pool(const at::Tensor& input, const at::Tensor& rois,
                                           const std::optional<at::Tensor>& offset, double spatial_scale,
                                           int64_t output_dim, int64_t group_size, int64_t pooled_size,
                                           int64_t part_size, int64_t sample_per_part, double trans_std);

// grad_output of a backward call must be (R, output_dim, pooled_size, pooled_size) like input.
void check_pool_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const PoolGeometry& g,
                            const char* op);

}  // namespace dcnviz
