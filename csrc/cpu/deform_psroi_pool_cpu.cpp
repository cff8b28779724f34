// CPU kernels of deform_psroi_pool: MXNet's DeformablePSROIPooling (official.md §3.2), forward and
// backward. The CUDA kernels in csrc/cuda/deform_psroi_pool_cuda.cu follow the same structure.
//
// Robustness: a RoI whose batch index is outside [0, N) or not finite, or with a non-finite corner, is
// never used to index memory; its bins are 0 and it receives no gradient (the Python wrapper rejects
// such RoIs, but it cannot inspect values under torch.compile). Any other sample position, including
// one made NaN or infinite by the offsets, goes through dpsroi_corners, which skips it when it is off
// the map, so every read and write stays in bounds.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "../sampling.h"

namespace dcnviz {
namespace {

struct Geometry {
  int64_t batch, channels, height, width;  // input (N, C, H, W)
  int64_t rois;                            // R
  int64_t output_dim, group_size, pooled_size, part_size, sample_per_part;
  int64_t num_classes;          // offset classes (1 in no_trans mode)
  int64_t channels_each_class;  // output channels that share one offset class
  double spatial_scale, trans_std;
  bool has_offset;
};

// Validates the arguments (the wrapper does too; this guards direct torch.ops calls) and derives sizes.
Geometry check(const at::Tensor& input, const at::Tensor& rois, const std::optional<at::Tensor>& offset,
               double spatial_scale, int64_t output_dim, int64_t group_size, int64_t pooled_size,
               int64_t part_size, int64_t sample_per_part, double trans_std) {
  TORCH_CHECK(input.dim() == 4, "deform_psroi_pool: input must be (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "deform_psroi_pool: rois must be (R, 5), got ", rois.sizes());
  TORCH_CHECK(output_dim > 0 && group_size > 0 && pooled_size > 0 && part_size > 0 && sample_per_part > 0,
              "deform_psroi_pool: output_dim, group_size, pooled_size, part_size and sample_per_part must be positive");
  TORCH_CHECK(input.size(1) == output_dim * group_size * group_size,
              "deform_psroi_pool: input must have output_dim*group_size**2 channels, got ", input.size(1));
  TORCH_CHECK(rois.scalar_type() == input.scalar_type() && rois.device() == input.device(),
              "deform_psroi_pool: rois must match input's dtype and device");
  Geometry g{input.size(0), input.size(1), input.size(2), input.size(3), rois.size(0), output_dim, group_size,
             pooled_size, part_size, sample_per_part, 1, output_dim, spatial_scale, trans_std, offset.has_value()};
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

// A RoI in feature-map pixels: rounded corners, scaled, shifted by -0.5; size at least 0.1.
template <typename T>
struct RoiFrame {
  int64_t batch;  // -1: unusable RoI, which yields zeros and no gradient
  T x_start, y_start, width, height;
};

template <typename T>
RoiFrame<T> roi_frame(const T* roi, const Geometry& g) {
  RoiFrame<T> f{-1, T(0), T(0), T(0), T(0)};
  if (!(roi[0] >= T(0) && roi[0] < T(g.batch)) || g.height == 0 || g.width == 0) return f;
  for (int k = 1; k < 5; ++k)
    if (!std::isfinite(roi[k])) return f;
  const T s = static_cast<T>(g.spatial_scale);
  f.x_start = round_half_away(roi[1]) * s - T(0.5);
  f.y_start = round_half_away(roi[2]) * s - T(0.5);
  f.width = std::max((round_half_away(roi[3]) + T(1)) * s - T(0.5) - f.x_start, T(0.1));
  f.height = std::max((round_half_away(roi[4]) + T(1)) * s - T(0.5) - f.y_start, T(0.1));
  f.batch = static_cast<int64_t>(roi[0]);
  return f;
}

// Group cell of bin p along one axis: floor(p*G/P), clamped to [0, G-1] as in the official kernels.
inline int64_t group_of(int64_t p, int64_t G, int64_t P) { return std::min(std::max(p * G / P, int64_t(0)), G - 1); }

// One output bin (n, ctop, ph, pw): its input channel, its offset cell and the first sample position.
template <typename T>
struct Bin {
  int64_t channel;   // position-sensitive input channel (ctop*G + gh)*G + gw
  int64_t dx_index;  // offset element holding this bin's dx (dy is part_size**2 further)
  T wstart, hstart, sub_w, sub_h;
};

template <typename T>
Bin<T> make_bin(const RoiFrame<T>& f, const T* offset, int64_t n, int64_t ctop, int64_t ph, int64_t pw,
                const Geometry& g) {
  const int64_t P = g.pooled_size, G = g.group_size;
  const int64_t gh = group_of(ph, G, P), gw = group_of(pw, G, P);
  // The official kernel computes the part cell in floating point; clamp against rounding.
  const int64_t part_h = std::min(static_cast<int64_t>(std::floor(T(ph) / T(P) * T(g.part_size))), g.part_size - 1);
  const int64_t part_w = std::min(static_cast<int64_t>(std::floor(T(pw) / T(P) * T(g.part_size))), g.part_size - 1);
  const int64_t class_id = ctop / g.channels_each_class;
  Bin<T> b;
  b.channel = (ctop * G + gh) * G + gw;
  b.dx_index = ((n * g.num_classes + class_id) * 2 * g.part_size + part_h) * g.part_size + part_w;
  const T bin_w = f.width / T(P), bin_h = f.height / T(P);
  b.sub_w = bin_w / T(g.sample_per_part);
  b.sub_h = bin_h / T(g.sample_per_part);
  b.wstart = T(pw) * bin_w + f.x_start;
  b.hstart = T(ph) * bin_h + f.y_start;
  if (g.has_offset) {
    const T trans_std = static_cast<T>(g.trans_std);
    b.wstart += offset[b.dx_index] * trans_std * f.width;
    b.hstart += offset[b.dx_index + g.part_size * g.part_size] * trans_std * f.height;
  }
  return b;
}

// Calls fn(corners) for every sample of the bin that lies on the map; returns how many there were.
template <typename T, typename Fn>
int64_t for_each_sample(const Bin<T>& b, const Geometry& g, Fn&& fn) {
  int64_t count = 0;
  for (int64_t ih = 0; ih < g.sample_per_part; ++ih) {
    for (int64_t iw = 0; iw < g.sample_per_part; ++iw) {
      const Corners<T> c = dpsroi_corners(b.hstart + T(ih) * b.sub_h, b.wstart + T(iw) * b.sub_w, g.height, g.width);
      if (!c.valid) continue;
      fn(c);
      ++count;
    }
  }
  return count;
}

template <typename T>
void forward_kernel(const T* input, const T* rois, const T* offset, T* output, const Geometry& g) {
  const int64_t P = g.pooled_size, plane = g.height * g.width;
  at::parallel_for(0, g.rois * g.output_dim * P * P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t pw = index % P, ph = index / P % P, ctop = index / (P * P) % g.output_dim, n = index / (P * P * g.output_dim);
      const RoiFrame<T> f = roi_frame(rois + n * 5, g);
      if (f.batch < 0) {
        output[index] = T(0);
        continue;
      }
      const Bin<T> b = make_bin(f, offset, n, ctop, ph, pw, g);
      const T* x = input + (f.batch * g.channels + b.channel) * plane;
      T sum = T(0);
      const int64_t count = for_each_sample(b, g, [&](const Corners<T>& c) {
        sum += c.w00() * x[c.i00] + c.w01() * x[c.i00 + c.dx] + c.w10() * x[c.i00 + c.dy] +
               c.w11() * x[c.i00 + c.dy + c.dx];
      });
      output[index] = count == 0 ? T(0) : sum / T(count);
    }
  });
}

// Input gradient: each sample spreads grad/count to its four corners with the forward's weights.
// Split by input channel: every bin of one channel belongs to one (ctop, gh, gw), and no other channel
// writes there, so threads never write the same element.
template <typename T>
void input_grad_kernel(const T* grad, const T* rois, const T* offset, T* grad_input, const Geometry& g) {
  const int64_t P = g.pooled_size, G = g.group_size, plane = g.height * g.width;
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t channel = begin; channel < end; ++channel) {
      const int64_t ctop = channel / (G * G), gh = channel / G % G, gw = channel % G;
      for (int64_t n = 0; n < g.rois; ++n) {
        const RoiFrame<T> f = roi_frame(rois + n * 5, g);
        if (f.batch < 0) continue;
        T* gx = grad_input + (f.batch * g.channels + channel) * plane;
        for (int64_t ph = 0; ph < P; ++ph) {
          if (group_of(ph, G, P) != gh) continue;
          for (int64_t pw = 0; pw < P; ++pw) {
            if (group_of(pw, G, P) != gw) continue;
            const Bin<T> b = make_bin(f, offset, n, ctop, ph, pw, g);
            const int64_t count = for_each_sample(b, g, [](const Corners<T>&) {});
            if (count == 0) continue;
            const T diff = grad[((n * g.output_dim + ctop) * P + ph) * P + pw] / T(count);
            for_each_sample(b, g, [&](const Corners<T>& c) {
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

// Offset gradient: the derivative of each sample's bilinear value along x and y (zero at an integer or
// clamped coordinate, where floor == ceil), times trans_std * roi size * grad/count. Split by (RoI,
// offset class): the bins writing one offset cell all share both.
template <typename T>
void offset_grad_kernel(const T* grad, const T* input, const T* rois, const T* offset, T* grad_offset,
                        const Geometry& g) {
  const int64_t P = g.pooled_size, plane = g.height * g.width, cell_step = g.part_size * g.part_size;
  const T trans_std = static_cast<T>(g.trans_std);
  at::parallel_for(0, g.rois * g.num_classes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.num_classes, class_id = task % g.num_classes;
      const RoiFrame<T> f = roi_frame(rois + n * 5, g);
      if (f.batch < 0) continue;
      for (int64_t ctop = class_id * g.channels_each_class; ctop < (class_id + 1) * g.channels_each_class; ++ctop) {
        for (int64_t ph = 0; ph < P; ++ph) {
          for (int64_t pw = 0; pw < P; ++pw) {
            const Bin<T> b = make_bin(f, offset, n, ctop, ph, pw, g);
            const int64_t count = for_each_sample(b, g, [](const Corners<T>&) {});
            if (count == 0) continue;
            const T diff = grad[((n * g.output_dim + ctop) * P + ph) * P + pw] / T(count);
            const T* x = input + (f.batch * g.channels + b.channel) * plane;
            T dvdx = T(0), dvdy = T(0);
            for_each_sample(b, g, [&](const Corners<T>& c) {
              const T v00 = x[c.i00], v01 = x[c.i00 + c.dx], v10 = x[c.i00 + c.dy], v11 = x[c.i00 + c.dy + c.dx];
              dvdx += (T(1) - c.ly) * (v01 - v00) + c.ly * (v11 - v10);
              dvdy += (T(1) - c.lx) * (v10 - v00) + c.lx * (v11 - v01);
            });
            grad_offset[b.dx_index] += dvdx * trans_std * diff * f.width;
            grad_offset[b.dx_index + cell_step] += dvdy * trans_std * diff * f.height;
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
  const Geometry g = check(input, rois, offset, spatial_scale, output_dim, group_size, pooled_size, part_size,
                           sample_per_part, trans_std);
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
  const Geometry g = check(input, rois, offset, spatial_scale, output_dim, group_size, pooled_size, part_size,
                           sample_per_part, trans_std);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({g.rois, output_dim, pooled_size, pooled_size}) &&
                  grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(),
              "deform_psroi_pool backward: grad_output must be (R, output_dim, pooled_size, pooled_size) "
              "with input's dtype and device, got ", grad_output.sizes());
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
