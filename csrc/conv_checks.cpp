// Argument checks of deform_conv2d (declared in conv_checks.h).
#include "conv_checks.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "checked_math.h"

namespace dcnviz {

ConvGeometry check_deform_conv2d(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                 int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                                 int64_t groups, int64_t dgroups) {
  TORCH_CHECK(input.dim() == 4 && offset.dim() == 4 && weight.dim() == 4,
              "deform_conv2d: input, offset and weight must be 4-D");
  TORCH_CHECK(sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0 && groups >= 1 && dgroups >= 1,
              "deform_conv2d: stride, dilation, groups and deformable_groups must be >= 1, padding >= 0");
  ConvGeometry g{input.size(0), input.size(1), input.size(2), input.size(3), weight.size(0), weight.size(2),
                 weight.size(3), 0, 0, sh, sw, ph, pw, dh, dw, groups, dgroups};
  constexpr const char* op = "deform_conv2d";
  TORCH_CHECK(g.C % g.G == 0 && g.F % g.G == 0 && checked_mul(weight.size(1), g.G, op) == g.C,
              "deform_conv2d: weight must have shape (F, C/groups, kh, kw) with F divisible by groups");
  TORCH_CHECK(g.C % g.DG == 0, "deform_conv2d: input channels must be divisible by deformable_groups");
  // Ho = (H + 2*ph - (dh*(kh-1) + 1)) / sh + 1 (and Wo), every step checked: pads and dilations are
  // plain arguments, and kh*kw may be huge next to a zero-sized dim
  TORCH_CHECK(g.kh >= 1 && g.kw >= 1, "deform_conv2d: the kernel must be at least 1x1");
  const int64_t span_h = checked_add(checked_mul(dh, g.kh - 1, op), 1, op);
  const int64_t span_w = checked_add(checked_mul(dw, g.kw - 1, op), 1, op);
  g.Ho = (checked_add(g.H, checked_mul(2, ph, op), op) - span_h) / sh + 1;
  g.Wo = (checked_add(g.W, checked_mul(2, pw, op), op) - span_w) / sw + 1;
  TORCH_CHECK(g.Ho >= 1 && g.Wo >= 1, "deform_conv2d: input too small for the kernel");
  // the products the kernels index with: columns (C*K, B*P), offsets (N, 2*DG*K, Ho, Wo)
  checked_mul(g.C, checked_mul(g.kh, g.kw, op), checked_mul(g.Ho, g.Wo, op), std::max<int64_t>(g.N, 1), op);
  TORCH_CHECK(offset.size(0) == g.N && offset.size(1) == checked_mul(2, g.DG, g.K(), op) && offset.size(2) == g.Ho &&
                  offset.size(3) == g.Wo,
              "deform_conv2d: offset must have shape (N, 2*deformable_groups*kh*kw, Ho, Wo)");
  TORCH_CHECK(input.dtype() == offset.dtype() && input.dtype() == weight.dtype(),
              "deform_conv2d: input, offset and weight must have the same dtype");
  TORCH_CHECK(input.device() == offset.device() && input.device() == weight.device(),
              "deform_conv2d: input, offset and weight must be on the same device");
  return g;
}

}  // namespace dcnviz
