// CUDA kernels of deform_psroi_pool: MXNet's DeformablePSROIPooling (official.md §3.2), forward and
// backward. Same structure as csrc/cpu/deform_psroi_pool_cpu.cpp: one thread per output bin; the
// backward spreads gradients with atomics into float32 (or float64) buffers, so half and bfloat16 inputs
// accumulate in at::opmath_type and are rounded once at the end.
//
// Robustness: a RoI whose batch index is outside [0, N) or not finite, or with a non-finite corner, is
// never used to index memory; its bins are 0 and it receives no gradient. Other sample positions,
// including NaN or infinite ones from the offsets, go through dpsroi_corners, which skips them when
// they are off the map.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "../sampling.h"

namespace dcnviz {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 16); }

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
template <typename A>
struct RoiFrame {
  int64_t batch;  // -1: unusable RoI, which yields zeros and no gradient
  A x_start, y_start, width, height;
};

template <typename A, typename T>
__device__ RoiFrame<A> roi_frame(const T* roi_in, const Geometry& g) {
  RoiFrame<A> f{-1, A(0), A(0), A(0), A(0)};
  A roi[5];
  for (int k = 0; k < 5; ++k) roi[k] = static_cast<A>(roi_in[k]);
  if (!(roi[0] >= A(0) && roi[0] < A(g.batch)) || g.height == 0 || g.width == 0) return f;
  for (int k = 1; k < 5; ++k)
    if (!::isfinite(roi[k])) return f;
  const A s = static_cast<A>(g.spatial_scale);
  f.x_start = round_half_away(roi[1]) * s - A(0.5);
  f.y_start = round_half_away(roi[2]) * s - A(0.5);
  const A width = (round_half_away(roi[3]) + A(1)) * s - A(0.5) - f.x_start;
  const A height = (round_half_away(roi[4]) + A(1)) * s - A(0.5) - f.y_start;
  f.width = width < A(0.1) ? A(0.1) : width;
  f.height = height < A(0.1) ? A(0.1) : height;
  f.batch = static_cast<int64_t>(roi[0]);
  return f;
}

// Group cell of bin p along one axis: floor(p*G/P), clamped to [0, G-1] as in the official kernels.
__device__ int64_t group_of(int64_t p, int64_t G, int64_t P) { return ::min(::max(p * G / P, int64_t(0)), G - 1); }

// One output bin (n, ctop, ph, pw): its input channel, its offset cell and the first sample position.
template <typename A>
struct Bin {
  int64_t channel;   // position-sensitive input channel (ctop*G + gh)*G + gw
  int64_t dx_index;  // offset element holding this bin's dx (dy is part_size**2 further)
  A wstart, hstart, sub_w, sub_h;
};

template <typename A, typename T>
__device__ Bin<A> make_bin(const RoiFrame<A>& f, const T* offset, int64_t n, int64_t ctop, int64_t ph, int64_t pw,
                           const Geometry& g) {
  const int64_t P = g.pooled_size, G = g.group_size;
  const int64_t gh = group_of(ph, G, P), gw = group_of(pw, G, P);
  // The official kernel computes the part cell in floating point; clamp against rounding.
  const int64_t part_h = ::min(static_cast<int64_t>(::floor(A(ph) / A(P) * A(g.part_size))), g.part_size - 1);
  const int64_t part_w = ::min(static_cast<int64_t>(::floor(A(pw) / A(P) * A(g.part_size))), g.part_size - 1);
  const int64_t class_id = ctop / g.channels_each_class;
  Bin<A> b;
  b.channel = (ctop * G + gh) * G + gw;
  b.dx_index = ((n * g.num_classes + class_id) * 2 * g.part_size + part_h) * g.part_size + part_w;
  const A bin_w = f.width / A(P), bin_h = f.height / A(P);
  b.sub_w = bin_w / A(g.sample_per_part);
  b.sub_h = bin_h / A(g.sample_per_part);
  b.wstart = A(pw) * bin_w + f.x_start;
  b.hstart = A(ph) * bin_h + f.y_start;
  if (g.has_offset) {
    const A trans_std = static_cast<A>(g.trans_std);
    b.wstart += static_cast<A>(offset[b.dx_index]) * trans_std * f.width;
    b.hstart += static_cast<A>(offset[b.dx_index + g.part_size * g.part_size]) * trans_std * f.height;
  }
  return b;
}

// Calls fn(corners) for every sample of the bin that lies on the map; returns how many there were.
template <typename A, typename Fn>
__device__ int64_t for_each_sample(const Bin<A>& b, const Geometry& g, Fn&& fn) {
  int64_t count = 0;
  for (int64_t ih = 0; ih < g.sample_per_part; ++ih) {
    for (int64_t iw = 0; iw < g.sample_per_part; ++iw) {
      const Corners<A> c = dpsroi_corners(b.hstart + A(ih) * b.sub_h, b.wstart + A(iw) * b.sub_w, g.height, g.width);
      if (!c.valid) continue;
      fn(c);
      ++count;
    }
  }
  return count;
}

template <typename T>
__global__ void forward_kernel(const T* input, const T* rois, const T* offset, T* output, const Geometry g,
                               int64_t total) {
  using A = at::opmath_type<T>;
  const int64_t P = g.pooled_size, plane = g.height * g.width;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(blockDim.x) * gridDim.x) {
    const int64_t pw = index % P, ph = index / P % P, ctop = index / (P * P) % g.output_dim, n = index / (P * P * g.output_dim);
    const RoiFrame<A> f = roi_frame<A>(rois + n * 5, g);
    if (f.batch < 0) {
      output[index] = T(0);
      continue;
    }
    const Bin<A> b = make_bin(f, offset, n, ctop, ph, pw, g);
    const T* x = input + (f.batch * g.channels + b.channel) * plane;
    A sum = A(0);
    const int64_t count = for_each_sample(b, g, [&](const Corners<A>& c) {
      sum += c.w00() * A(x[c.i00]) + c.w01() * A(x[c.i00 + c.dx]) + c.w10() * A(x[c.i00 + c.dy]) +
             c.w11() * A(x[c.i00 + c.dy + c.dx]);
    });
    output[index] = count == 0 ? T(0) : static_cast<T>(sum / A(count));
  }
}

// Each sample spreads grad/count to its four corners with the forward's weights, and adds the
// derivative of its bilinear value along x and y (zero at an integer or clamped coordinate, where
// floor == ceil) times trans_std * roi size * grad/count to the bin's offset cell.
template <typename T>
__global__ void backward_kernel(const T* grad, const T* input, const T* rois, const T* offset,
                                at::opmath_type<T>* grad_input, at::opmath_type<T>* grad_offset, const Geometry g,
                                int64_t total) {
  using A = at::opmath_type<T>;
  const int64_t P = g.pooled_size, plane = g.height * g.width, cell_step = g.part_size * g.part_size;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(blockDim.x) * gridDim.x) {
    const int64_t pw = index % P, ph = index / P % P, ctop = index / (P * P) % g.output_dim, n = index / (P * P * g.output_dim);
    const RoiFrame<A> f = roi_frame<A>(rois + n * 5, g);
    if (f.batch < 0) continue;
    const Bin<A> b = make_bin(f, offset, n, ctop, ph, pw, g);
    const int64_t count = for_each_sample(b, g, [](const Corners<A>&) {});
    if (count == 0) continue;
    const A diff = A(grad[index]) / A(count);
    const T* x = input + (f.batch * g.channels + b.channel) * plane;
    A* gx = grad_input + (f.batch * g.channels + b.channel) * plane;
    A dvdx = A(0), dvdy = A(0);
    for_each_sample(b, g, [&](const Corners<A>& c) {
      gpuAtomicAdd(gx + c.i00, c.w00() * diff);
      gpuAtomicAdd(gx + c.i00 + c.dx, c.w01() * diff);
      gpuAtomicAdd(gx + c.i00 + c.dy, c.w10() * diff);
      gpuAtomicAdd(gx + c.i00 + c.dy + c.dx, c.w11() * diff);
      if (g.has_offset) {
        const A v00 = A(x[c.i00]), v01 = A(x[c.i00 + c.dx]), v10 = A(x[c.i00 + c.dy]), v11 = A(x[c.i00 + c.dy + c.dx]);
        dvdx += (A(1) - c.ly) * (v01 - v00) + c.ly * (v11 - v10);
        dvdy += (A(1) - c.lx) * (v10 - v00) + c.lx * (v11 - v01);
      }
    });
    if (g.has_offset) {
      const A trans_std = static_cast<A>(g.trans_std);
      gpuAtomicAdd(grad_offset + b.dx_index, dvdx * trans_std * diff * f.width);
      gpuAtomicAdd(grad_offset + b.dx_index + cell_step, dvdy * trans_std * diff * f.height);
    }
  }
}

at::Tensor deform_psroi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                          const std::optional<at::Tensor>& offset, double spatial_scale,
                                          int64_t output_dim, int64_t group_size, int64_t pooled_size,
                                          int64_t part_size, int64_t sample_per_part, double trans_std) {
  const Geometry g = check(input, rois, offset, spatial_scale, output_dim, group_size, pooled_size, part_size,
                           sample_per_part, trans_std);
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
  const Geometry g = check(input, rois, offset, spatial_scale, output_dim, group_size, pooled_size, part_size,
                           sample_per_part, trans_std);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({g.rois, output_dim, pooled_size, pooled_size}) &&
                  grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(),
              "deform_psroi_pool backward: grad_output must be (R, output_dim, pooled_size, pooled_size) "
              "with input's dtype and device, got ", grad_output.sizes());
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
