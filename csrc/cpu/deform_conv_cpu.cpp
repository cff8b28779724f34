// CPU kernels of deformable convolution v1 (MXNet DeformableConvolution), forward and backward.
//
// Images are processed in chunks of B (one image when the output map is large, more when it is small,
// so the GEMMs stay large). Per chunk:
//   1. samples:  the corners and bilinear weights of every (image, deformable group, tap, output
//                position), computed once and shared by all channels of the group;
//   2. im2col:   columns (C*kh*kw, B*Ho*Wo), row c*kh*kw + tap, parallel over (channel, image);
//   3. GEMM:     per conv group, out (F/G, B*P) = W_g (F/G, C/G*kh*kw) @ columns_g (at::mm, MKL/oneDNN).
// Backward reuses the same pieces: grad_weight += grad_out @ columns^T, grad_columns = W^T @ grad_out,
// col2im (parallel over (channel, image): each task owns its input plane, so no two threads write the
// same element) and the offset gradient (parallel over (image, group, tap), summing over the group's
// channels). csrc/cuda/deform_conv_cuda.cu follows the same structure.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../sampling.h"

namespace dcnviz {
namespace {

// Shapes and hyper-parameters of one call; all sizes int64 so that no index product overflows.
struct Geometry {
  int64_t N, C, H, W, F, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, G, DG;
  int64_t K() const { return kh * kw; }
  int64_t P() const { return Ho * Wo; }
  int64_t Cg() const { return C / G; }
  int64_t Fg() const { return F / G; }
  int64_t Cdg() const { return C / DG; }
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
  return g;
}

// Images per chunk: enough that the GEMM's inner size B*P reaches a few thousand, while the column
// buffer stays under ~64 MiB (a single image is always allowed).
int64_t chunk_size(const Geometry& g, int64_t elem_size) {
  const int64_t want = std::max<int64_t>(1, 4096 / g.P());
  const int64_t per_image = std::max<int64_t>(1, g.C * g.K() * g.P() * elem_size);
  const int64_t fit = std::max<int64_t>(1, (int64_t(64) << 20) / per_image);
  return std::max<int64_t>(1, std::min({g.N, want, fit}));
}

// One sample's corners with its four bilinear weights precomputed (they are reused by every channel).
template <typename T>
struct Sample {
  int64_t i00, dx, dy;
  T w00, w01, w10, w11;
  bool valid;
};

// Sampling point of tap k at output position p of the chunk's image b, deformable group dg:
// offsets are (dy, dx) pairs per tap, row-major over taps, one block of 2*K channels per group.
template <typename T>
Corners<T> corners_at(const T* offset_chunk, const Geometry& g, int64_t b, int64_t dg, int64_t k, int64_t p) {
  const T* oy = offset_chunk + ((b * g.DG + dg) * g.K() + k) * 2 * g.P();
  const int64_t ho = p / g.Wo, wo = p % g.Wo, i = k / g.kw, j = k % g.kw;
  const T y = T(ho * g.sh - g.ph + i * g.dh) + oy[p];
  const T x = T(wo * g.sw - g.pw + j * g.dw) + oy[g.P() + p];
  return dcn_v1_corners<T>(y, x, g.H, g.W);
}

// samples (B, DG, K, P) of a chunk.
template <typename T>
void build_samples(const T* offset_chunk, const Geometry& g, int64_t B, Sample<T>* samples) {
  const int64_t rows = B * g.DG * g.K(), P = g.P();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / P), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (g.DG * g.K()), dg = (r / g.K()) % g.DG, k = r % g.K();
      Sample<T>* s = samples + r * P;
      for (int64_t p = 0; p < P; ++p) {
        const Corners<T> c = corners_at(offset_chunk, g, b, dg, k, p);
        s[p] = Sample<T>{c.i00, c.dx, c.dy, c.w00(), c.w01(), c.w10(), c.w11(), c.valid};
      }
    }
  });
}

// columns (C*K, B*P) of the chunk's images x_chunk (B, C, H, W). A sample outside the map is exactly
// 0 (not 0 * value, which would be NaN next to an infinite input value), as in the official kernel.
template <typename T>
void im2col(const T* x_chunk, const Sample<T>* samples, const Geometry& g, int64_t B, T* columns) {
  const int64_t K = g.K(), P = g.P(), HW = g.H * g.W;
  at::parallel_for(0, g.C * B, std::max<int64_t>(1, 16384 / (K * P)), [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t c = u / B, b = u % B, dg = c / g.Cdg();
      const T* plane = x_chunk + (b * g.C + c) * HW;
      for (int64_t k = 0; k < K; ++k) {
        const Sample<T>* s = samples + ((b * g.DG + dg) * K + k) * P;
        T* out = columns + (c * K + k) * (B * P) + b * P;
        for (int64_t p = 0; p < P; ++p) {
          const Sample<T>& q = s[p];
          const T* v = plane + q.i00;
          const T val = q.w00 * v[0] + q.w01 * v[q.dx] + q.w10 * v[q.dy] + q.w11 * v[q.dy + q.dx];
          out[p] = q.valid ? val : T(0);
        }
      }
    }
  });
}

// grad_x_chunk (B, C, H, W) += scatter of grad_columns (C*K, B*P) to the forward's corners and weights.
template <typename T>
void col2im(const T* grad_columns, const Sample<T>* samples, const Geometry& g, int64_t B, T* grad_x_chunk) {
  const int64_t K = g.K(), P = g.P(), HW = g.H * g.W;
  at::parallel_for(0, g.C * B, std::max<int64_t>(1, 16384 / (K * P)), [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t c = u / B, b = u % B, dg = c / g.Cdg();
      T* plane = grad_x_chunk + (b * g.C + c) * HW;
      for (int64_t k = 0; k < K; ++k) {
        const Sample<T>* s = samples + ((b * g.DG + dg) * K + k) * P;
        const T* gc = grad_columns + (c * K + k) * (B * P) + b * P;
        for (int64_t p = 0; p < P; ++p) {
          const Sample<T>& q = s[p];
          if (!q.valid) continue;
          T* v = plane + q.i00;
          v[0] += q.w00 * gc[p];
          v[q.dx] += q.w01 * gc[p];
          v[q.dy] += q.w10 * gc[p];
          v[q.dy + q.dx] += q.w11 * gc[p];
        }
      }
    }
  });
}

// grad_offset_chunk (B, 2*DG*K, Ho, Wo): derivative of each sample's bilinear blend, with the forward's
// floor-based corners (zero along a clamped axis, zero outside), summed over the group's channels.
template <typename T>
void offset_grad(const T* grad_columns, const T* x_chunk, const T* offset_chunk, const Geometry& g, int64_t B,
                 T* grad_offset_chunk) {
  const int64_t K = g.K(), P = g.P(), HW = g.H * g.W, Cdg = g.Cdg();
  at::parallel_for(0, B * g.DG * K, std::max<int64_t>(1, 4096 / (Cdg * P)), [&](int64_t begin, int64_t end) {
    std::vector<Corners<T>> corners(P);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (g.DG * K), dg = (r / K) % g.DG, k = r % K;
      for (int64_t p = 0; p < P; ++p) corners[p] = corners_at(offset_chunk, g, b, dg, k, p);
      T* gy = grad_offset_chunk + r * 2 * P;  // channel (b, dg, k, 0) = dy, next channel = dx
      T* gx = gy + P;
      std::fill(gy, gy + 2 * P, T(0));
      for (int64_t c = dg * Cdg; c < (dg + 1) * Cdg; ++c) {
        const T* plane = x_chunk + (b * g.C + c) * HW;
        const T* gc = grad_columns + (c * K + k) * (B * P) + b * P;
        for (int64_t p = 0; p < P; ++p) {
          const Corners<T>& q = corners[p];
          if (!q.valid) continue;
          const T* v = plane + q.i00;
          const T v00 = v[0], v01 = v[q.dx], v10 = v[q.dy], v11 = v[q.dy + q.dx];
          gy[p] += gc[p] * ((T(1) - q.lx) * (v10 - v00) + q.lx * (v11 - v01));
          gx[p] += gc[p] * ((T(1) - q.ly) * (v01 - v00) + q.ly * (v11 - v10));
        }
      }
    }
  });
}

// (B, F, P) block of a batch tensor <-> (F, B*P) matrix used by the GEMMs.
at::Tensor to_matrix(const at::Tensor& t, int64_t n0, int64_t B, int64_t F, int64_t P) {
  return t.narrow(0, n0, B).reshape({B, F, P}).transpose(0, 1).reshape({F, B * P});
}

at::Tensor deform_conv2d_cpu(const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& weight_,
                             const std::optional<at::Tensor>& bias, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                             int64_t dh, int64_t dw, int64_t groups, int64_t dgroups) {
  const Geometry g = check_geometry(input_, offset_, weight_, sh, sw, ph, pw, dh, dw, groups, dgroups);
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(), weight = weight_.contiguous();
  at::Tensor output = at::zeros({g.N, g.F, g.Ho, g.Wo}, input.options());
  if (output.numel() > 0 && g.Cg() * g.K() > 0) {
    const int64_t B = chunk_size(g, input.element_size()), K = g.K(), P = g.P();
    const at::Tensor w = weight.view({g.G, g.Fg(), g.Cg() * K});
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_cpu", [&] {
      std::vector<Sample<scalar_t>> samples(B * g.DG * K * P);
      at::Tensor columns = at::empty({g.C * K * B * P}, input.options());
      at::Tensor result = B > 1 ? at::empty({g.F * B * P}, input.options()) : at::Tensor();
      for (int64_t n0 = 0; n0 < g.N; n0 += B) {
        const int64_t nb = std::min(B, g.N - n0);
        at::Tensor cols = columns.narrow(0, 0, g.C * K * nb * P).view({g.C * K, nb * P});
        build_samples(offset.data_ptr<scalar_t>() + n0 * 2 * g.DG * K * P, g, nb, samples.data());
        im2col(input.data_ptr<scalar_t>() + n0 * g.C * g.H * g.W, samples.data(), g, nb, cols.data_ptr<scalar_t>());
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
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.F && bias->dtype() == input.dtype(),
                "deform_conv2d: bias must have shape (F,) and the input's dtype");
    output.add_(bias->view({1, g.F, 1, 1}));
  }
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& weight_,
    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, int64_t dgroups) {
  const Geometry g = check_geometry(input_, offset_, weight_, sh, sw, ph, pw, dh, dw, groups, dgroups);
  TORCH_CHECK(grad_output_.dim() == 4 && grad_output_.size(0) == g.N && grad_output_.size(1) == g.F &&
                  grad_output_.size(2) == g.Ho && grad_output_.size(3) == g.Wo,
              "deform_conv2d backward: grad_output must have shape (N, F, Ho, Wo)");
  TORCH_CHECK(grad_output_.dtype() == input_.dtype(), "deform_conv2d backward: grad_output must have the input's dtype");
  const at::Tensor grad_output = grad_output_.contiguous();
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(), weight = weight_.contiguous();
  at::Tensor grad_input = at::zeros_like(input, at::MemoryFormat::Contiguous);
  at::Tensor grad_offset = at::zeros_like(offset, at::MemoryFormat::Contiguous);
  at::Tensor grad_weight = at::zeros_like(weight, at::MemoryFormat::Contiguous);
  at::Tensor grad_bias = grad_output.sum({0, 2, 3});
  if (grad_output.numel() == 0 || g.Cg() * g.K() == 0) return {grad_input, grad_offset, grad_weight, grad_bias};

  const int64_t B = chunk_size(g, input.element_size()), K = g.K(), P = g.P(), CgK = g.Cg() * K;
  const at::Tensor w = weight.view({g.G, g.Fg(), CgK});
  const at::Tensor gw = grad_weight.view({g.G, g.Fg(), CgK});
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
    std::vector<Sample<scalar_t>> samples(B * g.DG * K * P);
    at::Tensor columns = at::empty({g.C * K * B * P}, input.options());
    for (int64_t n0 = 0; n0 < g.N; n0 += B) {
      const int64_t nb = std::min(B, g.N - n0);
      const scalar_t* x = input.data_ptr<scalar_t>() + n0 * g.C * g.H * g.W;
      const scalar_t* off = offset.data_ptr<scalar_t>() + n0 * 2 * g.DG * K * P;
      at::Tensor cols = columns.narrow(0, 0, g.C * K * nb * P).view({g.C * K, nb * P});
      const at::Tensor cols_g = cols.view({g.G, CgK, nb * P});
      const at::Tensor gout = to_matrix(grad_output, n0, nb, g.F, P).view({g.G, g.Fg(), nb * P});
      build_samples(off, g, nb, samples.data());
      im2col(x, samples.data(), g, nb, cols.data_ptr<scalar_t>());
      for (int64_t gi = 0; gi < g.G; ++gi) gw[gi].addmm_(gout[gi], cols_g[gi].t());
      // The columns are no longer needed: the buffer now receives grad_columns = W^T @ grad_out.
      for (int64_t gi = 0; gi < g.G; ++gi) {
        at::Tensor gcol_g = cols_g[gi];
        at::mm_out(gcol_g, w[gi].t(), gout[gi]);
      }
      const scalar_t* gcol = cols.data_ptr<scalar_t>();
      col2im(gcol, samples.data(), g, nb, grad_input.data_ptr<scalar_t>() + n0 * g.C * g.H * g.W);
      offset_grad(gcol, x, off, g, nb, grad_offset.data_ptr<scalar_t>() + n0 * 2 * g.DG * K * P);
    }
  });
  return {grad_input, grad_offset, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnviz, CPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_cpu);
  m.impl("_deform_conv2d_backward", &deform_conv2d_backward_cpu);
}

}  // namespace dcnviz
