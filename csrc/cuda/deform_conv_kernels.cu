// CUDA kernels of deformable convolution v1 (MXNet DeformableConvolution), forward and backward.
//
// Same structure and layouts as csrc/cpu/deform_conv_cpu.cpp: per chunk of B images, im2col from the
// channels-last input into columns (G, B*P, K*C/G), one cuBLAS GEMM per conv group with the tap-major
// weight, and for backward grad_weight += grad_out @ columns, grad_columns = grad_out^T @ W, col2im
// (atomics) and the offset gradient. The GEMMs and the chunking are in the host code,
// deform_conv_cuda.cpp; the sampling kernels are here. Each thread recomputes its sample's corners (two
// offset loads and a floor) instead of sharing them through memory as the CPU code does.
// float16/bfloat16 sample, blend and accumulate in float32 (at::opmath_type): the weight gradient's GEMMs
// write float32 (cuBLAS's fp16/bf16 -> fp32 GEMM), the column gradient is a float32 buffer, and the input
// and weight gradients are rounded once at the end. The backward's col2im uses atomics, so it is reported
// to torch.use_deterministic_algorithms (as torchvision's deform_conv2d does).
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>

#include "kernels.h"
#include "launch.cuh"

namespace dcnviz {
namespace {

constexpr int kWarp = 32;

// Sampling point of tap k at output position p of the chunk's image b, deformable group dg:
// offsets are (dy, dx) pairs per tap, row-major over taps, one block of 2*K channels per group.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ Corners<acc_t> corners_at(const scalar_t* offset_chunk, const ConvGeometry& g, int64_t b,
                                                     int64_t dg, int64_t k, int64_t p) {
  const scalar_t* oy = offset_chunk + ((b * g.DG + dg) * g.K() + k) * 2 * g.P();
  const int64_t ho = p / g.Wo, wo = p % g.Wo, i = k / g.kw, j = k % g.kw;
  const acc_t y = acc_t(ho * g.sh - g.ph + i * g.dh) + static_cast<acc_t>(oy[p]);
  const acc_t x = acc_t(wo * g.sw - g.pw + j * g.dw) + static_cast<acc_t>(oy[g.P() + p]);
  return dcn_v1_corners<acc_t>(y, x, g.H, g.W);
}

// Columns (G, B*P, K*C/G): element ((gi*B*P + bp)*K + k)*Cg + cg, tap-major and channel-minor within a
// row, read from the channels-last chunk x_cl (B, H, W, C): consecutive threads read consecutive
// channels and write consecutive columns. A sample outside the map is exactly 0.
template <typename scalar_t>
__global__ void im2col_kernel(const scalar_t* x_cl, const scalar_t* offset_chunk, ConvGeometry g, int64_t B,
                              scalar_t* columns) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = g.K(), P = g.P(), Cg = g.Cg(), n = g.C * K * B * P;
  DCNVIZ_KERNEL_LOOP(idx, n) {
    const int64_t cg = idx % Cg, k = (idx / Cg) % K, bp = (idx / (Cg * K)) % (B * P), gi = idx / (Cg * K * B * P);
    const int64_t c = gi * Cg + cg, b = bp / P;
    const Corners<acc_t> q = corners_at<scalar_t, acc_t>(offset_chunk, g, b, c / g.Cdg(), k, bp % P);
    acc_t val = acc_t(0);
    if (q.valid) {
      const scalar_t* v = x_cl + b * g.H * g.W * g.C + c;
      val = q.w00() * static_cast<acc_t>(v[q.i00 * g.C]) + q.w01() * static_cast<acc_t>(v[(q.i00 + q.dx) * g.C]) +
            q.w10() * static_cast<acc_t>(v[(q.i00 + q.dy) * g.C]) +
            q.w11() * static_cast<acc_t>(v[(q.i00 + q.dy + q.dx) * g.C]);
    }
    columns[idx] = static_cast<scalar_t>(val);
  }
}

// grad_x_cl (B, H, W, C) += scatter of grad_columns (laid out as the columns) to the forward's corners
// and weights.
template <typename scalar_t, typename acc_t>
__global__ void col2im_kernel(const acc_t* grad_columns, const scalar_t* offset_chunk, ConvGeometry g, int64_t B,
                              acc_t* grad_x_cl) {
  const int64_t K = g.K(), P = g.P(), Cg = g.Cg(), n = g.C * K * B * P;
  DCNVIZ_KERNEL_LOOP(idx, n) {
    const int64_t cg = idx % Cg, k = (idx / Cg) % K, bp = (idx / (Cg * K)) % (B * P), gi = idx / (Cg * K * B * P);
    const int64_t c = gi * Cg + cg, b = bp / P;
    const Corners<acc_t> q = corners_at<scalar_t, acc_t>(offset_chunk, g, b, c / g.Cdg(), k, bp % P);
    if (!q.valid) continue;
    const acc_t gc = grad_columns[idx];
    acc_t* v = grad_x_cl + b * g.H * g.W * g.C + c;
    gpuAtomicAdd(v + q.i00 * g.C, q.w00() * gc);
    gpuAtomicAdd(v + (q.i00 + q.dx) * g.C, q.w01() * gc);
    gpuAtomicAdd(v + (q.i00 + q.dy) * g.C, q.w10() * gc);
    gpuAtomicAdd(v + (q.i00 + q.dy + q.dx) * g.C, q.w11() * gc);
  }
}

// grad_offset_chunk (B, 2*DG*K, Ho, Wo): derivative of each sample's bilinear blend with the forward's
// floor-based corners (zero along a clamped axis, zero outside), summed over the group's channels.
// One warp per sample (b, dg, k, p): its lanes stride over the group's channels, so the reads of the
// channels-last input and of the (channel-minor) column gradient are coalesced; a shuffle tree sums them.
template <typename scalar_t, typename acc_t>
__global__ void offset_grad_kernel(const acc_t* grad_columns, const scalar_t* x_cl, const scalar_t* offset_chunk,
                                   ConvGeometry g, int64_t B, scalar_t* grad_offset_chunk) {
  const int64_t K = g.K(), P = g.P(), Cg = g.Cg(), Cdg = g.Cdg(), n = B * g.DG * K * P;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / kWarp);
  // The loop bound is the same for every lane of a warp, so whole warps reach the shuffles together.
  for (int64_t idx = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp; idx < n; idx += warps) {
    const int64_t p = idx % P, r = idx / P;  // r = (b*DG + dg)*K + k
    const int64_t k = r % K, dg = (r / K) % g.DG, b = r / (K * g.DG), bp = b * P + p;
    const Corners<acc_t> q = corners_at<scalar_t, acc_t>(offset_chunk, g, b, dg, k, p);
    acc_t gy = acc_t(0), gx = acc_t(0);
    if (q.valid) {
      const scalar_t* image = x_cl + b * g.H * g.W * g.C;
      const scalar_t *p00 = image + q.i00 * g.C, *p01 = image + (q.i00 + q.dx) * g.C,
                     *p10 = image + (q.i00 + q.dy) * g.C, *p11 = image + (q.i00 + q.dy + q.dx) * g.C;
      for (int64_t c = dg * Cdg + lane; c < (dg + 1) * Cdg; c += kWarp) {
        const int64_t gi = c / Cg;
        const acc_t gc = grad_columns[((gi * B * P + bp) * K + k) * Cg + c - gi * Cg];
        const acc_t v00 = static_cast<acc_t>(p00[c]), v01 = static_cast<acc_t>(p01[c]);
        const acc_t v10 = static_cast<acc_t>(p10[c]), v11 = static_cast<acc_t>(p11[c]);
        gy += gc * ((acc_t(1) - q.lx) * (v10 - v00) + q.lx * (v11 - v01));
        gx += gc * ((acc_t(1) - q.ly) * (v01 - v00) + q.ly * (v11 - v10));
      }
    }
    for (int step = kWarp / 2; step > 0; step /= 2) {
      gy += __shfl_down_sync(0xffffffffu, gy, step);
      gx += __shfl_down_sync(0xffffffffu, gx, step);
    }
    if (lane == 0) {
      grad_offset_chunk[r * 2 * P + p] = static_cast<scalar_t>(gy);  // channel 2k: dy, 2k+1: dx
      grad_offset_chunk[(r * 2 + 1) * P + p] = static_cast<scalar_t>(gx);
    }
  }
}

}  // namespace

template <typename T>
void launch_deform_im2col(const T* x_cl, const T* offset, const ConvGeometry& g, int64_t B, T* columns,
                          cudaStream_t stream) {
  im2col_kernel<T><<<blocks_for(g.C * g.K() * B * g.P()), kThreads, 0, stream>>>(x_cl, offset, g, B, columns);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_deform_col2im(const at::opmath_type<T>* grad_columns, const T* offset, const ConvGeometry& g, int64_t B,
                          at::opmath_type<T>* grad_x_cl, cudaStream_t stream) {
  col2im_kernel<T, at::opmath_type<T>><<<blocks_for(g.C * g.K() * B * g.P()), kThreads, 0, stream>>>(
      grad_columns, offset, g, B, grad_x_cl);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_deform_offset_grad(const at::opmath_type<T>* grad_columns, const T* x_cl, const T* offset,
                               const ConvGeometry& g, int64_t B, T* grad_offset, cudaStream_t stream) {
  // one warp per sample
  offset_grad_kernel<T, at::opmath_type<T>><<<blocks_for(B * g.DG * g.K() * g.P() * kWarp), kThreads, 0, stream>>>(
      grad_columns, x_cl, offset, g, B, grad_offset);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define DCNVIZ_INSTANTIATE(T)                                                                                     \
  template void launch_deform_im2col<T>(const T*, const T*, const ConvGeometry&, int64_t, T*, cudaStream_t);     \
  template void launch_deform_col2im<T>(const at::opmath_type<T>*, const T*, const ConvGeometry&, int64_t,       \
                                        at::opmath_type<T>*, cudaStream_t);                                      \
  template void launch_deform_offset_grad<T>(const at::opmath_type<T>*, const T*, const T*, const ConvGeometry&, \
                                             int64_t, T*, cudaStream_t);
DCNVIZ_FOR_EACH_FLOATING_TYPE(DCNVIZ_INSTANTIATE)
#undef DCNVIZ_INSTANTIATE

}  // namespace dcnviz
