// CUDA kernels of deformable convolution v1 (MXNet DeformableConvolution), forward and backward.
//
// Same structure as csrc/cpu/deform_conv_cpu.cpp: per chunk of B images, im2col into columns
// (C*kh*kw, B*Ho*Wo), one cuBLAS GEMM per conv group, and for backward grad_columns = W^T @ grad_out,
// col2im and the offset gradient. Where the CPU code tabulates each sample's corners once per group,
// a GPU thread recomputes them (two offset loads and a floor), which is cheaper than a table in memory.
// float16/bfloat16 sample, blend and accumulate in float32 (at::opmath_type); the input gradient is
// accumulated with atomics in a float32 buffer and rounded once at the end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../sampling.h"

namespace dcnviz {
namespace {

constexpr int kThreads = 256;

// Shapes and hyper-parameters of one call; all sizes int64 so that no index product overflows.
struct Geometry {
  int64_t N, C, H, W, F, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, G, DG;
  __host__ __device__ int64_t K() const { return kh * kw; }
  __host__ __device__ int64_t P() const { return Ho * Wo; }
  __host__ __device__ int64_t Cg() const { return C / G; }
  __host__ __device__ int64_t Fg() const { return F / G; }
  __host__ __device__ int64_t Cdg() const { return C / DG; }
};

Geometry check_geometry(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                        int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                        int64_t groups, int64_t dgroups) {
  TORCH_CHECK(input.dim() == 4 && offset.dim() == 4 && weight.dim() == 4,
              "deform_conv2d: input, offset and weight must be 4-D");
  TORCH_CHECK(sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0 && groups >= 1 && dgroups >= 1,
              "deform_conv2d: stride, dilation, groups and deformable_groups must be >= 1, padding >= 0");
  Geometry g{input.size(0), input.size(1), input.size(2), input.size(3), weight.size(0), weight.size(2),
             weight.size(3), 0, 0, sh, sw, ph, pw, dh, dw, groups, dgroups};
  TORCH_CHECK(g.C % g.G == 0 && g.F % g.G == 0 && weight.size(1) * g.G == g.C,
              "deform_conv2d: weight must have shape (F, C/groups, kh, kw) with F divisible by groups");
  TORCH_CHECK(g.C % g.DG == 0, "deform_conv2d: input channels must be divisible by deformable_groups");
  g.Ho = (g.H + 2 * ph - (dh * (g.kh - 1) + 1)) / sh + 1;
  g.Wo = (g.W + 2 * pw - (dw * (g.kw - 1) + 1)) / sw + 1;
  TORCH_CHECK(g.Ho >= 1 && g.Wo >= 1, "deform_conv2d: input too small for the kernel");
  TORCH_CHECK(offset.size(0) == g.N && offset.size(1) == 2 * g.DG * g.K() && offset.size(2) == g.Ho &&
                  offset.size(3) == g.Wo,
              "deform_conv2d: offset must have shape (N, 2*deformable_groups*kh*kw, Ho, Wo)");
  TORCH_CHECK(input.dtype() == offset.dtype() && input.dtype() == weight.dtype(),
              "deform_conv2d: input, offset and weight must have the same dtype");
  TORCH_CHECK(input.device() == offset.device() && input.device() == weight.device(),
              "deform_conv2d: input, offset and weight must be on the same device");
  return g;
}

// Images per chunk, as on the CPU: a GEMM inner size of a few thousand, columns under ~256 MiB.
int64_t chunk_size(const Geometry& g, int64_t elem_size) {
  const int64_t want = std::max<int64_t>(1, 8192 / g.P());
  const int64_t per_image = std::max<int64_t>(1, g.C * g.K() * g.P() * elem_size);
  const int64_t fit = std::max<int64_t>(1, (int64_t(256) << 20) / per_image);
  return std::max<int64_t>(1, std::min({g.N, want, fit}));
}

unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 16));
}

#define DCNVIZ_KERNEL_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)

// Sampling point of tap k at output position p of the chunk's image b, deformable group dg:
// offsets are (dy, dx) pairs per tap, row-major over taps, one block of 2*K channels per group.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ Corners<acc_t> corners_at(const scalar_t* offset_chunk, const Geometry& g, int64_t b,
                                                     int64_t dg, int64_t k, int64_t p) {
  const scalar_t* oy = offset_chunk + ((b * g.DG + dg) * g.K() + k) * 2 * g.P();
  const int64_t ho = p / g.Wo, wo = p % g.Wo, i = k / g.kw, j = k % g.kw;
  const acc_t y = acc_t(ho * g.sh - g.ph + i * g.dh) + static_cast<acc_t>(oy[p]);
  const acc_t x = acc_t(wo * g.sw - g.pw + j * g.dw) + static_cast<acc_t>(oy[g.P() + p]);
  return dcn_v1_corners<acc_t>(y, x, g.H, g.W);
}

// columns (C*K, B*P): element ((c*K + k)*B + b)*P + p. A sample outside the map is exactly 0.
template <typename scalar_t>
__global__ void im2col_kernel(const scalar_t* x_chunk, const scalar_t* offset_chunk, Geometry g, int64_t B,
                              scalar_t* columns) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = g.K(), P = g.P(), n = g.C * K * B * P;
  DCNVIZ_KERNEL_LOOP(idx, n) {
    const int64_t p = idx % P, b = (idx / P) % B, k = (idx / (P * B)) % K, c = idx / (P * B * K);
    const Corners<acc_t> q = corners_at<scalar_t, acc_t>(offset_chunk, g, b, c / g.Cdg(), k, p);
    acc_t val = acc_t(0);
    if (q.valid) {
      const scalar_t* v = x_chunk + (b * g.C + c) * g.H * g.W + q.i00;
      val = q.w00() * static_cast<acc_t>(v[0]) + q.w01() * static_cast<acc_t>(v[q.dx]) +
            q.w10() * static_cast<acc_t>(v[q.dy]) + q.w11() * static_cast<acc_t>(v[q.dy + q.dx]);
    }
    columns[idx] = static_cast<scalar_t>(val);
  }
}

// grad_x_chunk (B, C, H, W) += scatter of grad_columns to the forward's corners and weights.
template <typename scalar_t, typename acc_t>
__global__ void col2im_kernel(const scalar_t* grad_columns, const scalar_t* offset_chunk, Geometry g, int64_t B,
                              acc_t* grad_x_chunk) {
  const int64_t K = g.K(), P = g.P(), n = g.C * K * B * P;
  DCNVIZ_KERNEL_LOOP(idx, n) {
    const int64_t p = idx % P, b = (idx / P) % B, k = (idx / (P * B)) % K, c = idx / (P * B * K);
    const Corners<acc_t> q = corners_at<scalar_t, acc_t>(offset_chunk, g, b, c / g.Cdg(), k, p);
    if (!q.valid) continue;
    const acc_t gc = static_cast<acc_t>(grad_columns[idx]);
    acc_t* v = grad_x_chunk + (b * g.C + c) * g.H * g.W + q.i00;
    gpuAtomicAdd(v, q.w00() * gc);
    gpuAtomicAdd(v + q.dx, q.w01() * gc);
    gpuAtomicAdd(v + q.dy, q.w10() * gc);
    gpuAtomicAdd(v + q.dy + q.dx, q.w11() * gc);
  }
}

// grad_offset_chunk (B, 2*DG*K, Ho, Wo): derivative of each sample's bilinear blend with the forward's
// floor-based corners (zero along a clamped axis, zero outside), summed over the group's channels.
template <typename scalar_t>
__global__ void offset_grad_kernel(const scalar_t* grad_columns, const scalar_t* x_chunk,
                                   const scalar_t* offset_chunk, Geometry g, int64_t B,
                                   scalar_t* grad_offset_chunk) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = g.K(), P = g.P(), HW = g.H * g.W, Cdg = g.Cdg(), n = B * g.DG * K * P;
  DCNVIZ_KERNEL_LOOP(idx, n) {
    const int64_t p = idx % P, r = idx / P;  // r = (b*DG + dg)*K + k
    const int64_t k = r % K, dg = (r / K) % g.DG, b = r / (K * g.DG);
    const Corners<acc_t> q = corners_at<scalar_t, acc_t>(offset_chunk, g, b, dg, k, p);
    acc_t gy = acc_t(0), gx = acc_t(0);
    if (q.valid) {
      for (int64_t c = dg * Cdg; c < (dg + 1) * Cdg; ++c) {
        const scalar_t* v = x_chunk + (b * g.C + c) * HW + q.i00;
        const acc_t v00 = static_cast<acc_t>(v[0]), v01 = static_cast<acc_t>(v[q.dx]);
        const acc_t v10 = static_cast<acc_t>(v[q.dy]), v11 = static_cast<acc_t>(v[q.dy + q.dx]);
        const acc_t gc = static_cast<acc_t>(grad_columns[((c * K + k) * B + b) * P + p]);
        gy += gc * ((acc_t(1) - q.lx) * (v10 - v00) + q.lx * (v11 - v01));
        gx += gc * ((acc_t(1) - q.ly) * (v01 - v00) + q.ly * (v11 - v10));
      }
    }
    grad_offset_chunk[r * 2 * P + p] = static_cast<scalar_t>(gy);
    grad_offset_chunk[(r * 2 + 1) * P + p] = static_cast<scalar_t>(gx);
  }
}

// (B, F, P) block of a batch tensor <-> (F, B*P) matrix used by the GEMMs.
at::Tensor to_matrix(const at::Tensor& t, int64_t n0, int64_t B, int64_t F, int64_t P) {
  return t.narrow(0, n0, B).reshape({B, F, P}).transpose(0, 1).reshape({F, B * P});
}

at::Tensor deform_conv2d_cuda(const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& weight_,
                              const std::optional<at::Tensor>& bias, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                              int64_t dh, int64_t dw, int64_t groups, int64_t dgroups) {
  const Geometry g = check_geometry(input_, offset_, weight_, sh, sw, ph, pw, dh, dw, groups, dgroups);
  const at::cuda::CUDAGuard device_guard(input_.device());
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(), weight = weight_.contiguous();
  at::Tensor output = at::zeros({g.N, g.F, g.Ho, g.Wo}, input.options());
  if (output.numel() > 0 && g.Cg() * g.K() > 0) {
    const int64_t B = chunk_size(g, input.element_size()), K = g.K(), P = g.P();
    const at::Tensor w = weight.view({g.G, g.Fg(), g.Cg() * K});
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    at::Tensor columns = at::empty({g.C * K * B * P}, input.options());
    at::Tensor result = B > 1 ? at::empty({g.F * B * P}, input.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_cuda", [&] {
      for (int64_t n0 = 0; n0 < g.N; n0 += B) {
        const int64_t nb = std::min(B, g.N - n0);
        at::Tensor cols = columns.narrow(0, 0, g.C * K * nb * P).view({g.C * K, nb * P});
        im2col_kernel<scalar_t><<<blocks_for(cols.numel()), kThreads, 0, stream>>>(
            input.data_ptr<scalar_t>() + n0 * g.C * g.H * g.W, offset.data_ptr<scalar_t>() + n0 * 2 * g.DG * K * P,
            g, nb, cols.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        // With one image the GEMM writes straight into the output.
        at::Tensor out = nb == 1 ? output[n0].view({g.F, P}) : result.narrow(0, 0, g.F * nb * P).view({g.F, nb * P});
        const at::Tensor cols_g = cols.view({g.G, g.Cg() * K, nb * P});
        for (int64_t gi = 0; gi < g.G; ++gi) {
          at::Tensor out_g = out.narrow(0, gi * g.Fg(), g.Fg());
          at::mm_out(out_g, w[gi], cols_g[gi]);
        }
        if (nb > 1) output.narrow(0, n0, nb).copy_(out.view({g.F, nb, g.Ho, g.Wo}).transpose(0, 1));
      }
    });
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.F && bias->dtype() == input.dtype() &&
                    bias->device() == input.device(),
                "deform_conv2d: bias must have shape (F,) and the input's dtype and device");
    output.add_(bias->view({1, g.F, 1, 1}));
  }
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& weight_,
    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, int64_t dgroups) {
  const Geometry g = check_geometry(input_, offset_, weight_, sh, sw, ph, pw, dh, dw, groups, dgroups);
  TORCH_CHECK(grad_output_.dim() == 4 && grad_output_.size(0) == g.N && grad_output_.size(1) == g.F &&
                  grad_output_.size(2) == g.Ho && grad_output_.size(3) == g.Wo,
              "deform_conv2d backward: grad_output must have shape (N, F, Ho, Wo)");
  TORCH_CHECK(grad_output_.dtype() == input_.dtype() && grad_output_.device() == input_.device(),
              "deform_conv2d backward: grad_output must have the input's dtype and device");
  const at::cuda::CUDAGuard device_guard(input_.device());
  const at::Tensor grad_output = grad_output_.contiguous();
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(), weight = weight_.contiguous();
  const auto acc_type = at::toOpMathType(input.scalar_type());
  // Input and weight gradients accumulate in float32 for half types (the input one through atomics).
  at::Tensor grad_input = at::zeros(input.sizes(), input.options().dtype(acc_type));
  at::Tensor grad_offset = at::zeros_like(offset, at::MemoryFormat::Contiguous);
  at::Tensor grad_weight = at::zeros(weight.sizes(), weight.options().dtype(acc_type));
  at::Tensor grad_bias = grad_output.sum({0, 2, 3}, /*keepdim=*/false, acc_type).to(input.scalar_type());
  if (grad_output.numel() > 0 && g.Cg() * g.K() > 0) {
    const int64_t B = chunk_size(g, input.element_size()), K = g.K(), P = g.P(), CgK = g.Cg() * K;
    const at::Tensor w = weight.view({g.G, g.Fg(), CgK});
    const at::Tensor gw = grad_weight.view({g.G, g.Fg(), CgK});
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    at::Tensor columns = at::empty({g.C * K * B * P}, input.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      for (int64_t n0 = 0; n0 < g.N; n0 += B) {
        const int64_t nb = std::min(B, g.N - n0);
        const scalar_t* x = input.data_ptr<scalar_t>() + n0 * g.C * g.H * g.W;
        const scalar_t* off = offset.data_ptr<scalar_t>() + n0 * 2 * g.DG * K * P;
        at::Tensor cols = columns.narrow(0, 0, g.C * K * nb * P).view({g.C * K, nb * P});
        const at::Tensor cols_g = cols.view({g.G, CgK, nb * P});
        const at::Tensor gout = to_matrix(grad_output, n0, nb, g.F, P).view({g.G, g.Fg(), nb * P});
        const unsigned int blocks = blocks_for(cols.numel());
        im2col_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(x, off, g, nb, cols.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        for (int64_t gi = 0; gi < g.G; ++gi) {
          if (gw.scalar_type() == cols.scalar_type()) {
            gw[gi].addmm_(gout[gi], cols_g[gi].t());
          } else {
            gw[gi].add_(at::mm(gout[gi], cols_g[gi].t()));
          }
        }
        // The columns are no longer needed: the buffer now receives grad_columns = W^T @ grad_out.
        for (int64_t gi = 0; gi < g.G; ++gi) {
          at::Tensor gcol_g = cols_g[gi];
          at::mm_out(gcol_g, w[gi].t(), gout[gi]);
        }
        const scalar_t* gcol = cols.data_ptr<scalar_t>();
        col2im_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
            gcol, off, g, nb, grad_input.data_ptr<acc_t>() + n0 * g.C * g.H * g.W);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        offset_grad_kernel<scalar_t><<<blocks_for(nb * g.DG * K * P), kThreads, 0, stream>>>(
            gcol, x, off, g, nb, grad_offset.data_ptr<scalar_t>() + n0 * 2 * g.DG * K * P);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return {grad_input.to(input.scalar_type()), grad_offset, grad_weight.to(input.scalar_type()), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnviz, CUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_cuda);
  m.impl("_deform_conv2d_backward", &deform_conv2d_backward_cuda);
}

}  // namespace dcnviz
