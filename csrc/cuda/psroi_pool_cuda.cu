// CUDA kernels of psroi_pool: MXNet's PSROIPooling (official.md §3.3), forward and backward. Same
// structure as csrc/cpu/psroi_pool_cpu.cpp: one thread per output bin; the backward spreads gradients
// with atomics into float32 (or float64) buffers, so half and bfloat16 inputs accumulate in
// at::opmath_type and are rounded once at the end.
//
// Robustness: a RoI whose batch index is outside [0, N) or not finite, or with a non-finite corner, is
// never used to index memory; its bins are 0 and it receives no gradient. Bin edges are clamped to the
// map while still floating point (NaN becomes an empty bin).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../sampling.h"

namespace dcnviz {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 16); }

struct Geometry {
  int64_t batch, channels, height, width;  // input (N, C, H, W)
  int64_t rois;                            // R
  int64_t output_dim, group_size, pooled_size;
  double spatial_scale;
};

Geometry check(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t output_dim,
               int64_t group_size, int64_t pooled_size) {
  TORCH_CHECK(input.dim() == 4, "psroi_pool: input must be (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "psroi_pool: rois must be (R, 5), got ", rois.sizes());
  TORCH_CHECK(output_dim > 0 && group_size > 0 && pooled_size > 0,
              "psroi_pool: output_dim, group_size and pooled_size must be positive");
  TORCH_CHECK(input.size(1) == output_dim * group_size * group_size,
              "psroi_pool: input must have output_dim*group_size**2 channels, got ", input.size(1));
  TORCH_CHECK(rois.scalar_type() == input.scalar_type() && rois.device() == input.device(),
              "psroi_pool: rois must match input's dtype and device");
  return {input.size(0), input.size(1), input.size(2), input.size(3), rois.size(0),
          output_dim, group_size, pooled_size, spatial_scale};
}

// A RoI in feature-map pixels: rounded corners, scaled, no shift; size at least 0.1.
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
  if (!(roi[0] >= A(0) && roi[0] < A(g.batch))) return f;
  for (int k = 1; k < 5; ++k)
    if (!::isfinite(roi[k])) return f;
  const A s = static_cast<A>(g.spatial_scale);
  f.x_start = round_half_away(roi[1]) * s;
  f.y_start = round_half_away(roi[2]) * s;
  const A width = (round_half_away(roi[3]) + A(1)) * s - f.x_start;
  const A height = (round_half_away(roi[4]) + A(1)) * s - f.y_start;
  f.width = width < A(0.1) ? A(0.1) : width;
  f.height = height < A(0.1) ? A(0.1) : height;
  f.batch = static_cast<int64_t>(roi[0]);
  return f;
}

// floor/ceil of a bin edge, clamped to [0, extent] before it becomes an integer (NaN gives 0).
template <typename A>
__device__ int64_t edge_index(A v, int64_t extent) {
  return v >= A(0) ? (v <= A(extent) ? static_cast<int64_t>(v) : extent) : 0;
}

// Group cell of bin p along one axis: floor(p*G/P), clamped to [0, G-1] as in the official kernels.
__device__ int64_t group_of(int64_t p, int64_t G, int64_t P) { return ::min(::max(p * G / P, int64_t(0)), G - 1); }

// The whole pixels [h0, h1) x [w0, w1) averaged by output bin (ctop, ph, pw), and its input channel.
struct Window {
  int64_t channel, h0, h1, w0, w1;
  __device__ bool empty() const { return h1 <= h0 || w1 <= w0; }
  __device__ int64_t area() const { return (h1 - h0) * (w1 - w0); }
};

template <typename A>
__device__ Window make_window(const RoiFrame<A>& f, int64_t ctop, int64_t ph, int64_t pw, const Geometry& g) {
  const int64_t P = g.pooled_size, G = g.group_size;
  const A bin_w = f.width / A(P), bin_h = f.height / A(P);
  const int64_t gh = group_of(ph, G, P), gw = group_of(pw, G, P);
  return {(ctop * G + gh) * G + gw,
          edge_index(::floor(A(ph) * bin_h + f.y_start), g.height),
          edge_index(::ceil(A(ph + 1) * bin_h + f.y_start), g.height),
          edge_index(::floor(A(pw) * bin_w + f.x_start), g.width),
          edge_index(::ceil(A(pw + 1) * bin_w + f.x_start), g.width)};
}

template <typename T>
__global__ void forward_kernel(const T* input, const T* rois, T* output, const Geometry g, int64_t total) {
  using A = at::opmath_type<T>;
  const int64_t P = g.pooled_size, plane = g.height * g.width;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(blockDim.x) * gridDim.x) {
    const int64_t pw = index % P, ph = index / P % P, ctop = index / (P * P) % g.output_dim, n = index / (P * P * g.output_dim);
    const RoiFrame<A> f = roi_frame<A>(rois + n * 5, g);
    const Window win = f.batch < 0 ? Window{0, 0, 0, 0, 0} : make_window(f, ctop, ph, pw, g);
    if (win.empty()) {
      output[index] = T(0);
      continue;
    }
    const T* x = input + (f.batch * g.channels + win.channel) * plane;
    A sum = A(0);
    for (int64_t h = win.h0; h < win.h1; ++h)
      for (int64_t w = win.w0; w < win.w1; ++w) sum += A(x[h * g.width + w]);
    output[index] = static_cast<T>(sum / A(win.area()));
  }
}

// Each pixel of a bin receives grad/area.
template <typename T>
__global__ void backward_kernel(const T* grad, const T* rois, at::opmath_type<T>* grad_input, const Geometry g,
                                int64_t total) {
  using A = at::opmath_type<T>;
  const int64_t P = g.pooled_size, plane = g.height * g.width;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(blockDim.x) * gridDim.x) {
    const int64_t pw = index % P, ph = index / P % P, ctop = index / (P * P) % g.output_dim, n = index / (P * P * g.output_dim);
    const RoiFrame<A> f = roi_frame<A>(rois + n * 5, g);
    if (f.batch < 0) continue;
    const Window win = make_window(f, ctop, ph, pw, g);
    if (win.empty()) continue;
    const A diff = A(grad[index]) / A(win.area());
    A* gx = grad_input + (f.batch * g.channels + win.channel) * plane;
    for (int64_t h = win.h0; h < win.h1; ++h)
      for (int64_t w = win.w0; w < win.w1; ++w) gpuAtomicAdd(gx + h * g.width + w, diff);
  }
}

at::Tensor psroi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                   int64_t output_dim, int64_t group_size, int64_t pooled_size) {
  const Geometry g = check(input, rois, spatial_scale, output_dim, group_size, pooled_size);
  const c10::cuda::CUDAGuard guard(input.device());
  auto output = at::empty({g.rois, output_dim, pooled_size, pooled_size}, input.options());
  const int64_t total = output.numel();
  if (total == 0) return output;
  const auto x = input.contiguous(), r = rois.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "psroi_pool_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), g, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor psroi_pool_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& rois,
                                    double spatial_scale, int64_t output_dim, int64_t group_size, int64_t pooled_size) {
  const Geometry g = check(input, rois, spatial_scale, output_dim, group_size, pooled_size);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({g.rois, output_dim, pooled_size, pooled_size}) &&
                  grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(),
              "psroi_pool backward: grad_output must be (R, output_dim, pooled_size, pooled_size) with input's "
              "dtype and device, got ", grad_output.sizes());
  const c10::cuda::CUDAGuard guard(input.device());
  // The gradient accumulates in at::opmath_type (float for half/bfloat16) and is cast once at the end.
  auto grad_input = at::zeros(input.sizes(), input.options().dtype(at::toOpMathType(input.scalar_type())));
  const int64_t total = grad_output.numel();
  if (total > 0 && input.numel() > 0) {
    const auto dy = grad_output.contiguous(), r = rois.contiguous();
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "psroi_pool_backward_cuda", [&] {
      backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          dy.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), grad_input.data_ptr<at::opmath_type<scalar_t>>(), g,
          total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
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
