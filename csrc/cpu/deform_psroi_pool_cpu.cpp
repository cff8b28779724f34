// CPU kernels of deform_psroi_pool: MXNet's DeformablePSROIPooling (official.md §3.2), forward and
// backward, on the geometry of csrc/pooling.h that the CUDA kernels use too.
//
// Robustness: a RoI whose batch index is outside [0, N) or not finite, or with a non-finite corner, is
// never used to index memory; its bins are 0 and it receives no gradient (the Python wrapper rejects
// such RoIs, but it cannot inspect values under torch.compile). Any other sample position, including
// one made NaN or infinite by the offsets, goes through dpsroi_axis, which skips it when it is off the
// map, so every read and write stays in bounds.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../pooling.h"
#include "../pooling_checks.h"

namespace dcnviz {
namespace {

template <typename T>
void forward_kernel(const T* input, const T* rois, const T* offset, T* output, const DeformPoolGeometry& g) {
  const int64_t P = g.pooled_size, plane = g.height * g.width;
  at::parallel_for(0, g.rois * g.output_dim * P * P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t pw = index % P, ph = index / P % P, ctop = index / (P * P) % g.output_dim, n = index / (P * P * g.output_dim);
      const RoiFrame<T> f = dpsroi_frame<T>(rois + n * 5, g);
      if (f.batch < 0) {
        output[index] = T(0);
        continue;
      }
      const BinCell cell = bin_cell<T>(ctop, ph, pw, g);
      const Bin<T> b = make_bin(f, offset, n, cell, ph, pw, g);
      const T* x = input + (f.batch * g.channels + cell.channel) * plane;
      T sum = T(0);
      const int64_t count = for_each_sample(f, b, g, [&](const Corners<T>& c) { sum += bilinear(c, x); });
      output[index] = count == 0 ? T(0) : sum / T(count);
    }
  });
}

// Input gradient: each sample spreads grad/count to its four corners with the forward's weights.
// Split by input channel: every bin of one channel belongs to one (ctop, gh, gw), and no other channel
// writes there, so threads never write the same element.
template <typename T>
void input_grad_kernel(const T* grad, const T* rois, const T* offset, T* grad_input, const DeformPoolGeometry& g) {
  const int64_t P = g.pooled_size, G = g.group_size, plane = g.height * g.width;
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t channel = begin; channel < end; ++channel) {
      const int64_t ctop = channel / (G * G), gh = channel / G % G, gw = channel % G;
      for (int64_t n = 0; n < g.rois; ++n) {
        const RoiFrame<T> f = dpsroi_frame<T>(rois + n * 5, g);
        if (f.batch < 0) continue;
        T* gx = grad_input + (f.batch * g.channels + channel) * plane;
        for (int64_t ph = 0; ph < P; ++ph) {
          if (group_of(ph, G, P) != gh) continue;
          for (int64_t pw = 0; pw < P; ++pw) {
            if (group_of(pw, G, P) != gw) continue;
            const Bin<T> b = make_bin(f, offset, n, bin_cell<T>(ctop, ph, pw, g), ph, pw, g);
            const int64_t count = sample_count(f, b, g);
            if (count == 0) continue;
            const T diff = grad[((n * g.output_dim + ctop) * P + ph) * P + pw] / T(count);
            for_each_sample(f, b, g, [&](const Corners<T>& c) {
              gx[c.i00] += c.w00() * diff;
              gx[c.i00 + c.dx] += c.w01() * diff;
              gx[c.i00 + c.dy] += c.w10() * diff;
              gx[c.i00 + c.dy + c.dx] += c.w11() * diff;
            });
          }
        }
      }
    }
  });
}

// Offset gradient: the slope of each sample's bilinear value along x and y times trans_std * roi size
// * grad/count. Split by (RoI, offset class): the bins writing one offset cell all share both.
template <typename T>
void offset_grad_kernel(const T* grad, const T* input, const T* rois, const T* offset, T* grad_offset,
                        const DeformPoolGeometry& g) {
  const int64_t P = g.pooled_size, plane = g.height * g.width, cell_step = g.part_size * g.part_size;
  const T trans_std = static_cast<T>(g.trans_std);
  at::parallel_for(0, g.rois * g.num_classes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.num_classes, class_id = task % g.num_classes;
      const RoiFrame<T> f = dpsroi_frame<T>(rois + n * 5, g);
      if (f.batch < 0) continue;
      for (int64_t ctop = class_id * g.channels_each_class; ctop < (class_id + 1) * g.channels_each_class; ++ctop) {
        for (int64_t ph = 0; ph < P; ++ph) {
          for (int64_t pw = 0; pw < P; ++pw) {
            const BinCell cell = bin_cell<T>(ctop, ph, pw, g);
            const Bin<T> b = make_bin(f, offset, n, cell, ph, pw, g);
            const int64_t count = sample_count(f, b, g);
            if (count == 0) continue;
            const T diff = grad[((n * g.output_dim + ctop) * P + ph) * P + pw] / T(count);
            const T* x = input + (f.batch * g.channels + cell.channel) * plane;
            T dvdx = T(0), dvdy = T(0);
            for_each_sample(f, b, g, [&](const Corners<T>& c) { add_bilinear_slopes(c, x, dvdx, dvdy); });
            const int64_t dx = offset_index(n, cell, g);
            grad_offset[dx] += dvdx * trans_std * diff * f.width;
            grad_offset[dx + cell_step] += dvdy * trans_std * diff * f.height;
          }
        }
      }
    }
  });
}

at::Tensor deform_psroi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                         const std::optional<at::Tensor>& offset, double spatial_scale,
                                         int64_t output_dim, int64_t group_size, int64_t pooled_size,
                                         int64_t part_size, int64_t sample_per_part, double trans_std) {
  const DeformPoolGeometry g = check_deform_psroi_pool(input, rois, offset, spatial_scale, output_dim, group_size,
                                                       pooled_size, part_size, sample_per_part, trans_std);
  auto output = at::empty({g.rois, output_dim, pooled_size, pooled_size}, input.options());
  if (output.numel() == 0) return output;
  const auto x = input.contiguous(), r = rois.contiguous();
  const auto t = g.has_offset ? offset->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_psroi_pool_forward_cpu", [&] {
    forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                             g.has_offset ? t.data_ptr<scalar_t>() : nullptr, output.data_ptr<scalar_t>(), g);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> deform_psroi_pool_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& rois,
    const std::optional<at::Tensor>& offset, double spatial_scale, int64_t output_dim, int64_t group_size,
    int64_t pooled_size, int64_t part_size, int64_t sample_per_part, double trans_std) {
  const DeformPoolGeometry g = check_deform_psroi_pool(input, rois, offset, spatial_scale, output_dim, group_size,
                                                       pooled_size, part_size, sample_per_part, trans_std);
  check_pool_grad_output(grad_output, input, g, "deform_psroi_pool");
  auto grad_input = at::zeros_like(input, at::MemoryFormat::Contiguous);
  auto grad_offset = g.has_offset ? at::zeros_like(*offset, at::MemoryFormat::Contiguous)
                                  : at::empty({0}, input.options());
  if (grad_output.numel() == 0 || input.numel() == 0) return {grad_input, grad_offset};
  const auto dy = grad_output.contiguous(), x = input.contiguous(), r = rois.contiguous();
  const auto t = g.has_offset ? offset->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_psroi_pool_backward_cpu", [&] {
    const scalar_t* trans = g.has_offset ? t.data_ptr<scalar_t>() : nullptr;
    input_grad_kernel<scalar_t>(dy.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), trans,
                                grad_input.data_ptr<scalar_t>(), g);
    if (g.has_offset)
      offset_grad_kernel<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), trans,
                                   grad_offset.data_ptr<scalar_t>(), g);
  });
  return {grad_input, grad_offset};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnviz, CPU, m) {
  m.impl("deform_psroi_pool", &deform_psroi_pool_forward_cpu);
  m.impl("_deform_psroi_pool_backward", &deform_psroi_pool_backward_cpu);
}

}  // namespace dcnviz
