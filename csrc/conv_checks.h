// Argument checks of deform_conv2d, shared by the CPU and CUDA backends (host code only). The Python
// wrapper checks too, with friendlier messages; these guard direct torch.ops calls.
#pragma once
#include <ATen/core/Tensor.h>

#include "conv_geometry.h"

namespace dcnviz {

// The geometry of a call, every size product the kernels index with checked for int64 overflow.
ConvGeometry check_deform_conv2d(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                 int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                                 int64_t groups, int64_t dgroups);

}  // namespace dcnviz
