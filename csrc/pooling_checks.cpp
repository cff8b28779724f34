// Argument checks of psroi_pool and deform_psroi_pool (declared in pooling_checks.h).
#include "pooling_checks.h"

#include <c10/util/Exception.h>

#include "checked_math.h"

namespace dcnviz {

PoolGeometry check_psroi_pool(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                              int64_t output_dim, int64_t group_size, int64_t pooled_size) {
  TORCH_CHECK(input.dim() == 4, "psroi_pool: input must be (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "psroi_pool: rois must be (R, 5), got ", rois.sizes());
  TORCH_CHECK(output_dim > 0 && group_size > 0 && pooled_size > 0,
              "psroi_pool: output_dim, group_size and pooled_size must be positive");
  TORCH_CHECK(input.size(1) == checked_mul(output_dim, group_size, group_size, "psroi_pool"),
              "psroi_pool: input must have output_dim*group_size**2 channels, got ", input.size(1));
  // the output (R, output_dim, P, P), indexed as one flat int64 range
  checked_mul(rois.size(0), output_dim, pooled_size, pooled_size, "psroi_pool");
  TORCH_CHECK(rois.scalar_type() == input.scalar_type() && rois.device() == input.device(),
              "psroi_pool: rois must match input's dtype and device");
  return {input.size(0), input.size(1), input.size(2), input.size(3), rois.size(0),
          output_dim,    group_size,    pooled_size,   spatial_scale};
}

DeformPoolGeometry check_deform_psroi_pool(const at::Tensor& input, const at::Tensor& rois,
                                           const std::optional<at::Tensor>& offset, double spatial_scale,
                                           int64_t output_dim, int64_t group_size, int64_t pooled_size,
                                           int64_t part_size, int64_t sample_per_part, double trans_std) {
  TORCH_CHECK(input.dim() == 4, "deform_psroi_pool: input must be (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "deform_psroi_pool: rois must be (R, 5), got ", rois.sizes());
  TORCH_CHECK(output_dim > 0 && group_size > 0 && pooled_size > 0 && part_size > 0 && sample_per_part > 0,
              "deform_psroi_pool: output_dim, group_size, pooled_size, part_size and sample_per_part must be positive");
  TORCH_CHECK(input.size(1) == checked_mul(output_dim, group_size, group_size, "deform_psroi_pool"),
              "deform_psroi_pool: input must have output_dim*group_size**2 channels, got ", input.size(1));
  checked_mul(rois.size(0), output_dim, pooled_size, pooled_size, "deform_psroi_pool");
  checked_mul(part_size, part_size, sample_per_part, sample_per_part, "deform_psroi_pool");
  // The CPU forward holds pixel indices and sample counts in 32-bit vector lanes (lane_kernels.inc).
  TORCH_CHECK(input.size(2) <= (int64_t(1) << 30) && input.size(3) <= (int64_t(1) << 30) &&
                  sample_per_part <= (int64_t(1) << 15),
              "deform_psroi_pool: the map can be at most 2**30 pixels high and wide, and sample_per_part at most "
              "2**15, got ", input.sizes(), " and ", sample_per_part);
  TORCH_CHECK(rois.scalar_type() == input.scalar_type() && rois.device() == input.device(),
              "deform_psroi_pool: rois must match input's dtype and device");
  DeformPoolGeometry g{{input.size(0), input.size(1), input.size(2), input.size(3), rois.size(0), output_dim,
                        group_size, pooled_size, spatial_scale},
                       part_size, sample_per_part, 1, output_dim, trans_std, offset.has_value()};
  if (g.has_offset) {
    const at::Tensor& t = *offset;
    TORCH_CHECK(t.scalar_type() == input.scalar_type() && t.device() == input.device(),
                "deform_psroi_pool: offset must match input's dtype and device");
    TORCH_CHECK(t.dim() == 4 && t.size(0) == g.rois && t.size(1) > 0 && t.size(1) % 2 == 0 &&
                    t.size(2) == part_size && t.size(3) == part_size && output_dim % (t.size(1) / 2) == 0,
                "deform_psroi_pool: offset must be (R, 2*num_classes_trans, part_size, part_size) with output_dim "
                "a multiple of num_classes_trans, got ", t.sizes());
    g.num_classes = t.size(1) / 2;
    g.channels_each_class = output_dim / g.num_classes;
  }
  return g;
}

void check_pool_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const PoolGeometry& g,
                            const char* op) {
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({g.rois, g.output_dim, g.pooled_size, g.pooled_size}) &&
                  grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(),
              op, " backward: grad_output must be (R, output_dim, pooled_size, pooled_size) with input's dtype and "
              "device, got ", grad_output.sizes());
}

}  // namespace dcnviz
