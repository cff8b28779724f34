// CPU kernels of deformable convolution v1 (MXNet DeformableConvolution), forward and backward.
//
// Images are processed in chunks of B (one image when the output map is large, more when it is small,
// so that the GEMMs stay large). The input is made channels-last (B, H, W, C) so that one sample (its
// corners and bilinear weights, computed once per deformable group, tap and output position) is applied
// to a contiguous run of channels. Per chunk:
//   1. im2col: columns (G, B*P, K*C/G), one row per (conv group, output position), tap-major, parallel
//      over positions;
//   2. GEMM:   out_g (F/G, B*P) = W_g (F/G, K*C/G) @ columns_g^T, with the weight permuted to tap-major;
//      it writes the output in place: NCHW rows for one image, or, for a channels-last input, the
//      channels-last output (which then needs no layout change before the next conv).
// Backward: grad_weight += grad_out @ columns, grad_columns = grad_out^T @ W, col2im (parallel over
// channel blocks, so no two threads write the same element) and the offset gradient (parallel over
// positions, summing over the group's channels). csrc/cuda/deform_conv_kernels.cu has the same structure.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../conv_checks.h"
#include "../sampling.h"
#include "conv_backward_simd.h"
#include "cpu_isa.h"
#include "reduced_precision.h"
#include "transpose.h"

namespace dcnviz {
namespace {

// Images per chunk: enough that the GEMM's inner size B*P reaches a few thousand, while the column
// buffer stays under ~64 MiB (a single image is always allowed).
int64_t chunk_size(const ConvGeometry& g, int64_t elem_size) {
  const int64_t want = std::max<int64_t>(1, 4096 / g.P());
  const int64_t per_image = std::max<int64_t>(1, g.C * g.K() * g.P() * elem_size);
  const int64_t fit = std::max<int64_t>(1, (int64_t(64) << 20) / per_image);
  return std::max<int64_t>(1, std::min({g.N, want, fit}));
}

// Scratch space, kept per thread between calls: a fresh buffer of many MB costs more in page faults
// than filling it (the allocator hands large blocks back to the OS; at the res5 shape a fresh 9 MB
// weight buffer costs ~4 ms of faults, the whole im2col ~5 ms). One kept buffer per use, up to
// kKeepBytes each; a larger request, or one made while the kept buffer is still in use, gets a buffer of
// its own.
enum class Scratch { kColumns, kWeight, kGradWeight, kOutput, kCount };

at::Tensor scratch(Scratch use, int64_t numel, const at::TensorOptions& options) {
  constexpr int64_t kKeepBytes = int64_t(256) << 20;
  const int64_t bytes = numel * static_cast<int64_t>(options.dtype().itemsize());
  thread_local std::array<at::Tensor, static_cast<size_t>(Scratch::kCount)> kept_buffers;
  at::Tensor& kept = kept_buffers[static_cast<size_t>(use)];
  if (bytes > kKeepBytes || (kept.defined() && kept.storage().use_count() > 1)) {
    return at::empty({numel}, options);
  }
  if (!kept.defined() || kept.numel() < bytes) {
    kept = at::Tensor();  // free the old buffer before allocating the larger one
    kept = at::empty({bytes}, options.dtype(at::kByte));
  }
  return kept.narrow(0, 0, bytes).view(options.dtype().toScalarType());
}

// Output position bp = b*P + p of a chunk: image b, flat position p and the unshifted sampling origin
// (ho*stride_h - pad_h, wo*stride_w - pad_w). The divisions happen once per position, not per tap.
struct Position {
  int64_t b, p, y0, x0;
};

Position position(const ConvGeometry& g, int64_t bp) {
  const int64_t b = bp / g.P(), p = bp % g.P();
  return Position{b, p, (p / g.Wo) * g.sh - g.ph, (p % g.Wo) * g.sw - g.pw};
}

// Calls f(k, corners) for every tap k = i*kw + j of deformable group dg at position pos. Offsets are
// (dy, dx) pairs per tap, row-major over taps, one block of 2*K channels per group.
template <typename T, typename Fn>
void for_each_tap(const T* offset_chunk, const ConvGeometry& g, const Position& pos, int64_t dg, const Fn& f) {
  const T* o = offset_chunk + (pos.b * g.DG + dg) * 2 * g.K() * g.P() + pos.p;
  for (int64_t i = 0, k = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j, ++k) {
      const T y = T(pos.y0 + i * g.dh) + o[2 * k * g.P()];
      const T x = T(pos.x0 + j * g.dw) + o[(2 * k + 1) * g.P()];
      f(k, dcn_v1_corners<T>(y, x, g.H, g.W));
    }
  }
}

// Channels [lo, hi) that share a deformable group and conv group gi: the unit of the inner loops.
struct Run {
  int64_t gi, lo, hi;
};

// The runs of channels [c_begin, c_end), listed per deformable group.
std::vector<std::vector<Run>> channel_runs(const ConvGeometry& g, int64_t c_begin, int64_t c_end) {
  std::vector<std::vector<Run>> runs(g.DG);
  for (int64_t c = c_begin; c < c_end;) {
    const int64_t dg = c / g.Cdg(), gi = c / g.Cg();
    const int64_t next = std::min({c_end, (dg + 1) * g.Cdg(), (gi + 1) * g.Cg()});
    runs[dg].push_back(Run{gi, c, next});
    c = next;
  }
  return runs;
}

// Pixel offsets (corner pixel * C) of a sample's four corners in a channels-last image (H, W, C).
template <typename T>
std::array<int64_t, 4> corner_offsets(const Corners<T>& q, int64_t C) {
  return {q.i00 * C, (q.i00 + q.dx) * C, (q.i00 + q.dy) * C, (q.i00 + q.dy + q.dx) * C};
}

// dst[c] = w0*v0[c] + w1*v1[c] + w2*v2[c] + w3*v3[c]: the bilinear blend of one sample over a run of
// channels, the whole of im2col's arithmetic. Cloned for AVX-512 and AVX2 and picked at load time:
// the x86-64 baseline build does it 4 floats at a time. Each clone does the same multiplications and
// additions in the same order (no FMA contraction, see setup.py), so every clone gives the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define DCNVIZ_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DCNVIZ_CLONES
#endif
DCNVIZ_CLONES void blend(float* __restrict dst, const float* __restrict v0, const float* __restrict v1,
                         const float* __restrict v2, const float* __restrict v3, float w0, float w1, float w2,
                         float w3, int64_t n) {
  for (int64_t c = 0; c < n; ++c) dst[c] = w0 * v0[c] + w1 * v1[c] + w2 * v2[c] + w3 * v3[c];
}
DCNVIZ_CLONES void blend(double* __restrict dst, const double* __restrict v0, const double* __restrict v1,
                         const double* __restrict v2, const double* __restrict v3, double w0, double w1,
                         double w2, double w3, int64_t n) {
  for (int64_t c = 0; c < n; ++c) dst[c] = w0 * v0[c] + w1 * v1[c] + w2 * v2[c] + w3 * v3[c];
}

// The float blend rounded to bfloat16 (the bfloat16 forward's columns): the float32 sum of blend(),
// rounded once as it is stored, where a float32 column buffer and a rounding pass over it cost twice
// the memory traffic (~3 ms a call at res5).
DCNVIZ_CLONES void blend(c10::BFloat16* __restrict dst_, const float* __restrict v0, const float* __restrict v1,
                         const float* __restrict v2, const float* __restrict v3, float w0, float w1, float w2,
                         float w3, int64_t n) {
  uint16_t* __restrict dst = reinterpret_cast<uint16_t*>(dst_);
  for (int64_t c = 0; c < n; ++c) dst[c] = round_bf16(w0 * v0[c] + w1 * v1[c] + w2 * v2[c] + w3 * v3[c]);
}

// The float blend (and the zero fill of a sample outside the map) with non-temporal stores, for whole
// 64-byte lines: the columns (tens of MB) are written once and read back by the GEMM from memory
// anyway, and streaming stores skip reading each line in before it is overwritten. Same operations in
// the same order as blend(), so the same bits. In AVX-512 and AVX2 forms (stream_kernel() picks one at
// run time, none under DCNVIZ_CPU_ISA=baseline), for runs that start on a 64-byte boundary and are whole
// lines (channel counts divisible by 16); blend() elsewhere. (DCNVIZ_X86_INTRINSICS, conv_backward_simd.h:
// where the x86 intrinsics are compiled in.)
#ifdef DCNVIZ_X86_INTRINSICS
// blend() of the 16 channels at c, weights broadcast in a0..a3.
__attribute__((target("avx512f"))) inline __m512 blend16_avx512(__m512 a0, __m512 a1, __m512 a2, __m512 a3,
                                                                const float* v0, const float* v1, const float* v2,
                                                                const float* v3, int64_t c) {
  __m512 s = _mm512_add_ps(_mm512_mul_ps(a0, _mm512_loadu_ps(v0 + c)), _mm512_mul_ps(a1, _mm512_loadu_ps(v1 + c)));
  s = _mm512_add_ps(s, _mm512_mul_ps(a2, _mm512_loadu_ps(v2 + c)));
  return _mm512_add_ps(s, _mm512_mul_ps(a3, _mm512_loadu_ps(v3 + c)));
}

__attribute__((target("avx512f"))) void blend_stream_avx512(float* dst, const float* v0, const float* v1,
                                                            const float* v2, const float* v3, float w0, float w1,
                                                            float w2, float w3, int64_t n, bool zero) {
  if (zero) {
    for (int64_t c = 0; c < n; c += 16) _mm512_stream_ps(dst + c, _mm512_setzero_ps());
    return;
  }
  const __m512 a0 = _mm512_set1_ps(w0), a1 = _mm512_set1_ps(w1), a2 = _mm512_set1_ps(w2), a3 = _mm512_set1_ps(w3);
  for (int64_t c = 0; c < n; c += 16) _mm512_stream_ps(dst + c, blend16_avx512(a0, a1, a2, a3, v0, v1, v2, v3, c));
}

__attribute__((target("avx2"))) void blend_stream_avx2(float* dst, const float* v0, const float* v1,
                                                       const float* v2, const float* v3, float w0, float w1,
                                                       float w2, float w3, int64_t n, bool zero) {
  if (zero) {
    for (int64_t c = 0; c < n; c += 8) _mm256_stream_ps(dst + c, _mm256_setzero_ps());
    return;
  }
  const __m256 a0 = _mm256_set1_ps(w0), a1 = _mm256_set1_ps(w1), a2 = _mm256_set1_ps(w2), a3 = _mm256_set1_ps(w3);
  for (int64_t c = 0; c < n; c += 8) {
    __m256 s = _mm256_add_ps(_mm256_mul_ps(a0, _mm256_loadu_ps(v0 + c)), _mm256_mul_ps(a1, _mm256_loadu_ps(v1 + c)));
    s = _mm256_add_ps(s, _mm256_mul_ps(a2, _mm256_loadu_ps(v2 + c)));
    s = _mm256_add_ps(s, _mm256_mul_ps(a3, _mm256_loadu_ps(v3 + c)));
    _mm256_stream_ps(dst + c, s);
  }
}

// round_bf16 on 16 floats. (The maskz forms with a full mask: GCC 12 warns about the undefined
// pass-through of the plain ones.)
__attribute__((target("avx512f"))) inline __m256i round_bf16_avx512(__m512 s) {
  constexpr __mmask16 all = 0xFFFF;
  const __m512i u = _mm512_castps_si512(s);
  const __m512i lsb = _mm512_and_si512(_mm512_maskz_srli_epi32(all, u, 16), _mm512_set1_epi32(1));
  const __m512i biased = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb);
  __m512i r = _mm512_maskz_srli_epi32(all, biased, 16);
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(s, s, _CMP_ORD_Q), _mm512_set1_epi32(0x7FC0), r);
  return _mm512_maskz_cvtepi32_epi16(all, r);
}

// The bfloat16 blend() with non-temporal stores, as blend_stream_avx512 for whole 64-byte lines (runs of
// 32 values): the same sums and the same rounding (round_bf16), so the same bits.
__attribute__((target("avx512f"))) void blend_stream_bf16_avx512(c10::BFloat16* dst, const float* v0,
                                                                 const float* v1, const float* v2, const float* v3,
                                                                 float w0, float w1, float w2, float w3, int64_t n,
                                                                 bool zero) {
  if (zero) {
    for (int64_t c = 0; c < n; c += 32)
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + c), _mm512_setzero_si512());
    return;
  }
  const __m512 a0 = _mm512_set1_ps(w0), a1 = _mm512_set1_ps(w1), a2 = _mm512_set1_ps(w2), a3 = _mm512_set1_ps(w3);
  for (int64_t c = 0; c < n; c += 16)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + c),
                        round_bf16_avx512(blend16_avx512(a0, a1, a2, a3, v0, v1, v2, v3, c)));
}

using BlendStream = void (*)(float*, const float*, const float*, const float*, const float*, float, float, float,
                             float, int64_t, bool);

BlendStream stream_kernel() {
  if (use_avx512()) return &blend_stream_avx512;
  return use_avx2() ? &blend_stream_avx2 : nullptr;
}
#endif

// Columns (G, B*P, K*C/G): row (conv group, b*P + p), tap-major and channel-minor within the row, so
// that each tap of a sample fills a contiguous run from contiguous channels-last input (the weight is
// permuted to match). A sample outside the map is exactly 0 (not 0 * value, which would be NaN next
// to an infinite input value).
//
// Out: T, or bfloat16 for a float T (the bfloat16 forward: float32 samples rounded as they are stored).
template <typename T, typename Out>
void im2col(const T* x_cl, const T* offset_chunk, const ConvGeometry& g, int64_t B, Out* columns) {
  const int64_t BP = B * g.P(), Cg = g.Cg(), CgK = Cg * g.K();
  const auto runs = channel_runs(g, 0, g.C);
#ifdef DCNVIZ_X86_INTRINSICS
  const BlendStream stream = stream_kernel();
#endif
  at::parallel_for(0, BP, std::max<int64_t>(1, 4096 / (g.C * g.K())), [&](int64_t begin, int64_t end) {
#ifdef DCNVIZ_X86_INTRINSICS
    // the streamed stores are weakly ordered: fence them before the GEMM (another thread) reads them
    struct Fence {
      ~Fence() { _mm_sfence(); }
    } fence;
#endif
    for (int64_t bp = begin; bp < end; ++bp) {
      const Position pos = position(g, bp);
      const T* image = x_cl + pos.b * g.H * g.W * g.C;
      for (int64_t dg = 0; dg < g.DG; ++dg) {
        for_each_tap(offset_chunk, g, pos, dg, [&](int64_t k, const Corners<T>& q) {
          const auto a = corner_offsets(q, g.C);
          const T w0 = q.w00(), w1 = q.w01(), w2 = q.w10(), w3 = q.w11();
          for (const Run& r : runs[dg]) {
            Out* __restrict__ dst = columns + (r.gi * BP + bp) * CgK + k * Cg + (r.lo - r.gi * Cg);
            const int64_t n = r.hi - r.lo;
#ifdef DCNVIZ_X86_INTRINSICS
            if constexpr (std::is_same_v<Out, c10::BFloat16>) {
              if (use_avx512() && n % 32 == 0 && reinterpret_cast<uintptr_t>(dst) % 64 == 0) {
                blend_stream_bf16_avx512(dst, image + a[0] + r.lo, image + a[1] + r.lo, image + a[2] + r.lo,
                                         image + a[3] + r.lo, w0, w1, w2, w3, n, !q.valid);
                continue;
              }
            }
            if constexpr (std::is_same_v<Out, float>) {
              if (stream && n % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 64 == 0) {
                stream(dst, image + a[0] + r.lo, image + a[1] + r.lo, image + a[2] + r.lo, image + a[3] + r.lo,
                             w0, w1, w2, w3, n, !q.valid);
                continue;
              }
            }
#endif
            if (!q.valid) {
              std::fill(dst, dst + n, Out(0));
              continue;
            }
            const T *v0 = image + a[0] + r.lo, *v1 = image + a[1] + r.lo, *v2 = image + a[2] + r.lo,
                    *v3 = image + a[3] + r.lo;
            blend(dst, v0, v1, v2, v3, w0, w1, w2, w3, n);
          }
        });
      }
    }
  });
}

// grad_x_cl (B, H, W, C) += scatter of grad_columns (laid out as the columns) to the forward's corners
// and weights. Threads split the channels, so no two threads ever write the same element.
template <typename T>
void col2im(const T* grad_columns, const T* offset_chunk, const ConvGeometry& g, int64_t B, T* grad_x_cl) {
  const int64_t BP = B * g.P(), Cg = g.Cg(), CgK = Cg * g.K();
  const BackwardLoops<T> loops = backward_loops<T>();
  at::parallel_for(0, g.C, 1, [&](int64_t c_begin, int64_t c_end) {
    const auto runs = channel_runs(g, c_begin, c_end);
    for (int64_t bp = 0; bp < BP; ++bp) {
      const Position pos = position(g, bp);
      T* image = grad_x_cl + pos.b * g.H * g.W * g.C;
      for (int64_t dg = 0; dg < g.DG; ++dg) {
        if (runs[dg].empty()) continue;
        for_each_tap(offset_chunk, g, pos, dg, [&](int64_t k, const Corners<T>& q) {
          if (!q.valid) return;
          const auto a = corner_offsets(q, g.C);
          const T w[4] = {q.w00(), q.w01(), q.w10(), q.w11()};
          for (const Run& r : runs[dg]) {
            const T* src = grad_columns + (r.gi * BP + bp) * CgK + k * Cg + (r.lo - r.gi * Cg);
            T* const dst[4] = {image + a[0] + r.lo, image + a[1] + r.lo, image + a[2] + r.lo, image + a[3] + r.lo};
            loops.scatter(dst, w, src, r.hi - r.lo);
          }
        });
      }
    }
  });
}

// grad_offset_chunk (B, 2*DG*K, Ho, Wo): derivative of each sample's bilinear blend with the forward's
// floor-based corners (zero along a clamped axis, zero outside), summed over the group's channels in
// lane partial sums added in a fixed tree (SlopeSums), so the vector loops give the generic loop's bits.
template <typename T>
void offset_grad(const T* grad_columns, const T* x_cl, const T* offset_chunk, const ConvGeometry& g, int64_t B,
                 T* grad_offset_chunk) {
  const int64_t K = g.K(), P = g.P(), BP = B * P, Cg = g.Cg(), CgK = Cg * K;
  const auto runs = channel_runs(g, 0, g.C);
  const BackwardLoops<T> loops = backward_loops<T>();
  at::parallel_for(0, BP, std::max<int64_t>(1, 4096 / (g.C * K)), [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const Position pos = position(g, bp);
      const T* image = x_cl + pos.b * g.H * g.W * g.C;
      for (int64_t dg = 0; dg < g.DG; ++dg) {
        for_each_tap(offset_chunk, g, pos, dg, [&](int64_t k, const Corners<T>& q) {
          T gy = T(0), gx = T(0);
          if (q.valid) {
            const auto a = corner_offsets(q, g.C);
            SlopeSums<T> sums;
            for (const Run& r : runs[dg]) {
              const T* gc = grad_columns + (r.gi * BP + bp) * CgK + k * Cg + (r.lo - r.gi * Cg);
              const T *v00 = image + a[0] + r.lo, *v01 = image + a[1] + r.lo, *v10 = image + a[2] + r.lo,
                      *v11 = image + a[3] + r.lo;
              loops.slopes(sums, gc, v00, v01, v10, v11, q.ly, q.lx, r.hi - r.lo);
            }
            sums.total(gy, gx);
          }
          T* out = grad_offset_chunk + ((pos.b * g.DG + dg) * K + k) * 2 * P + pos.p;  // channel 2k: dy, 2k+1: dx
          out[0] = gy;
          out[P] = gx;
        });
      }
    }
  });
}

// Rows [g*Fg, (g+1)*Fg) of a (B, F, Ho, Wo) block of a batch tensor as an (Fg, B*P) matrix (a view
// when B == 1 or the tensor is channels-last).
at::Tensor group_rows(const at::Tensor& t, int64_t n0, int64_t B, int64_t gi, const ConvGeometry& g) {
  return t.narrow(0, n0, B).narrow(1, gi * g.Fg(), g.Fg()).transpose(0, 1).reshape({g.Fg(), B * g.P()});
}

// dst (batch, cols, rows) = src (batch, rows, cols), both contiguous and of one dtype (transpose.h).
void transpose_into(const at::Tensor& src, const at::Tensor& dst, int64_t batch, int64_t rows, int64_t cols) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, src.scalar_type(), "transpose_into", [&] {
    transpose_batched(src.const_data_ptr<scalar_t>(), dst.mutable_data_ptr<scalar_t>(), batch, rows, cols);
  });
}

// weight (F, C/G, kh, kw) -> (G, F/G, K*C/G) in dtype `type`, tap-major like the columns: a view of a
// channels-last weight of that dtype, whose memory is (F, kh, kw, C/G) already (as the models store it,
// see dcnviz/models/mxnet_cpu.py); else a copy in a kept buffer (transpose.h for a contiguous weight of
// that dtype: ~0.85 ms at res5, about the time to read it from memory, where torch's copy_ took ~1.1).
at::Tensor tap_major(const at::Tensor& weight, const ConvGeometry& g, at::ScalarType type) {
  const at::Tensor hwc = weight.permute({0, 2, 3, 1});
  if (hwc.is_contiguous() && weight.scalar_type() == type) return hwc.view({g.G, g.Fg(), g.K() * g.Cg()});
  at::Tensor w = scratch(Scratch::kWeight, weight.numel(), weight.options().dtype(type));
  if (weight.is_contiguous() && weight.scalar_type() == type)
    transpose_into(weight, w, g.F, g.Cg(), g.K());
  else
    w.view({g.G, g.Fg(), g.K(), g.Cg()}).copy_(weight.reshape({g.G, g.Fg(), g.Cg(), g.K()}).transpose(2, 3));
  return w.view({g.G, g.Fg(), g.K() * g.Cg()});
}

// Whether the input is channels-last (and not also NCHW-contiguous, as with one channel or a 1x1 map):
// then the output and the input gradient are channels-last too, as with torch's conv2d. The fake
// kernels in dcnviz/ops/deform_conv.py follow the same rule.
bool channels_last(const at::Tensor& input) {
  return input.permute({0, 2, 3, 1}).is_contiguous() && !input.is_contiguous();
}

// x_cl (N, H, W, C) as an NCHW-contiguous (N, C, H, W) tensor.
at::Tensor to_nchw(const at::Tensor& x_cl) {
  at::Tensor out = at::empty({x_cl.size(0), x_cl.size(3), x_cl.size(1), x_cl.size(2)}, x_cl.options());
  transpose_into(x_cl, out, x_cl.size(0), x_cl.size(1) * x_cl.size(2), x_cl.size(3));
  return out;
}

// t in memory format `format`, in float32 when `widen` (one pass either way): the layouts the kernels
// read. (Not t.to(float, ..., format) for both: without a dtype change it can return a permuted view as
// it is.)
at::Tensor laid_out(const at::Tensor& t, at::MemoryFormat format, bool widen) {
  return widen ? t.to(at::kFloat, false, false, format) : t.contiguous(format);
}

// input (N, C, H, W) as a contiguous (N, H, W, C) tensor, in float32 when `widen`: the input itself for
// a channels-last one, a tiled transpose for an NCHW one, else one torch copy.
at::Tensor channels_last_copy(const at::Tensor& input, bool widen) {
  if (widen || !input.is_contiguous())
    return laid_out(input.permute({0, 2, 3, 1}), at::MemoryFormat::Contiguous, widen);
  at::Tensor out = at::empty({input.size(0), input.size(2), input.size(3), input.size(1)}, input.options());
  transpose_into(input, out, input.size(0), input.size(1), input.size(2) * input.size(3));
  return out;
}

// bfloat16: the samples are taken in float32 on upcast copies as for every dtype, rounded to bfloat16 as
// they are stored in the columns, and the GEMM runs in bfloat16 with float32 accumulation (oneDNN's AMX
// or AVX512-BF16 kernels where the CPU has them), the arithmetic of a bfloat16 conv2d and of the CUDA
// forward; a bias is added to the rounded result. At the res5 shape that GEMM takes ~6 ms where the
// float32 one on upcast copies took ~33 (2 threads, AMX), which was half of a bfloat16 R-FCN forward.
// float16 computes in float32 on upcast copies and rounds the result once.
at::Tensor deform_conv2d_cpu(const at::Tensor& input, const at::Tensor& offset_, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                             int64_t dh, int64_t dw, int64_t groups, int64_t dgroups) {
  const ConvGeometry g = check_deform_conv2d(input, offset_, weight, sh, sw, ph, pw, dh, dw, groups, dgroups);
  const bool bf16 = input.scalar_type() == at::kBFloat16;
  if (reduced_precision(input)) {
    TORCH_CHECK(!bias.has_value() || !bias->defined() || bias->dtype() == input.dtype(),
                "deform_conv2d: bias must have shape (F,) and the input's dtype and device");
    if (!bf16) {
      return deform_conv2d_cpu(upcast(input), upcast(offset_), upcast(weight), upcast(bias), sh, sw, ph, pw, dh, dw,
                               groups, dgroups)
          .to(input.scalar_type());
    }
  }
  // The GEMMs run in the op's own dtype even inside an autocast region (autocast would lower them).
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const bool cl = channels_last(input);
  at::Tensor output = cl ? at::empty({g.N, g.Ho, g.Wo, g.F}, input.options()).permute({0, 3, 1, 2})
                         : at::empty({g.N, g.F, g.Ho, g.Wo}, input.options());
  const int64_t K = g.K(), P = g.P(), CgK = g.Cg() * K;
  if (output.numel() > 0 && CgK == 0) output.zero_();
  if (output.numel() > 0 && CgK > 0) {
    // sampled in float32 (bfloat16: on float32 copies made in the layout the kernels read)
    const at::Tensor offset = laid_out(offset_, at::MemoryFormat::Contiguous, bf16);
    const at::Tensor x_cl = channels_last_copy(input, bf16);
    const at::Tensor w = tap_major(weight, g, weight.scalar_type());  // in the GEMM's dtype, the weight's
    const int64_t B = chunk_size(g, input.element_size());
    at::Tensor columns = scratch(Scratch::kColumns, g.G * B * P * CgK, input.options());  // the GEMM's dtype too
    AT_DISPATCH_FLOATING_TYPES(x_cl.scalar_type(), "deform_conv2d_cpu", [&] {
      for (int64_t n0 = 0; n0 < g.N; n0 += B) {
        const int64_t nb = std::min(B, g.N - n0);
        const scalar_t* x = x_cl.const_data_ptr<scalar_t>() + n0 * g.H * g.W * g.C;
        const scalar_t* off = offset.const_data_ptr<scalar_t>() + n0 * 2 * g.DG * K * P;
        if (!bf16)
          im2col(x, off, g, nb, columns.mutable_data_ptr<scalar_t>());
        else if constexpr (std::is_same_v<scalar_t, float>)
          im2col(x, off, g, nb, columns.mutable_data_ptr<c10::BFloat16>());
        const at::Tensor cols = columns.narrow(0, 0, g.G * nb * P * CgK).view({g.G, nb * P, CgK});
        // out_g (B*P, Fg) = cols_g @ W_g^T, into the channels-last output in place or, for an NCHW
        // output, into a kept (B*P, F) block that is then transposed into place. Not W_g @ cols_g^T
        // straight into the NCHW rows: MKL's sgemm ran that orientation 16 % (Zen 4) to ~30 % (Zen 3)
        // slower, next to which the transpose (~1 ms at res5) is small; and one orientation gives NCHW
        // and channels-last outputs the same bits.
        at::Tensor rows = cl ? output.permute({0, 2, 3, 1}).view({g.N * P, g.F}).narrow(0, n0 * P, nb * P)
                             : scratch(Scratch::kOutput, nb * P * g.F, output.options()).view({nb * P, g.F});
        for (int64_t gi = 0; gi < g.G; ++gi) {
          at::Tensor out = rows.narrow(1, gi * g.Fg(), g.Fg());
          at::mm_out(out, cols[gi], w[gi].t());
        }
        if (!cl) transpose_into(rows, output.narrow(0, n0, nb), nb, P, g.F);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad_output_, const at::Tensor& input, const at::Tensor& offset_, const at::Tensor& weight,
    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, int64_t dgroups) {
  const ConvGeometry g = check_deform_conv2d(input, offset_, weight, sh, sw, ph, pw, dh, dw, groups, dgroups);
  // The GEMMs run in the op's own dtype even inside an autocast region (autocast would lower them).
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  TORCH_CHECK(grad_output_.dim() == 4 && grad_output_.size(0) == g.N && grad_output_.size(1) == g.F &&
                  grad_output_.size(2) == g.Ho && grad_output_.size(3) == g.Wo,
              "deform_conv2d backward: grad_output must have shape (N, F, Ho, Wo)");
  TORCH_CHECK(grad_output_.dtype() == input.dtype() && grad_output_.device() == input.device(),
              "deform_conv2d backward: grad_output must have the input's dtype and device");
  // bfloat16 and float16 compute in float32 (reduced_precision.h), on copies made in the layouts the
  // kernels read (one pass each), and round each gradient once
  const bool low = reduced_precision(input);
  const at::ScalarType work = low ? at::kFloat : input.scalar_type();
  const bool cl = channels_last(input);
  const at::Tensor offset = laid_out(offset_, at::MemoryFormat::Contiguous, low);
  const at::Tensor x_cl = channels_last_copy(input, low);
  // grad_output in the output's layout; group_rows reads either as (Fg, B*P) matrices
  const at::Tensor grad_output =
      laid_out(grad_output_, cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous, low);
  const int64_t K = g.K(), P = g.P(), CgK = g.Cg() * K;
  at::Tensor grad_x_cl = at::zeros_like(x_cl);
  at::Tensor grad_offset = at::zeros_like(offset);
  // tap-major, as the columns; the first chunk's GEMM overwrites it (no zero fill)
  at::Tensor grad_w = scratch(Scratch::kGradWeight, g.G * g.Fg() * CgK, x_cl.options()).view({g.G, g.Fg(), CgK});
  if (grad_output.numel() == 0 || CgK == 0) grad_w.zero_();
  at::Tensor grad_bias = grad_output.sum({0, 2, 3});
  if (grad_output.numel() > 0 && CgK > 0) {
    const int64_t B = chunk_size(g, x_cl.element_size());
    const at::Tensor w = tap_major(weight, g, work);
    at::Tensor columns = scratch(Scratch::kColumns, g.G * B * P * CgK, x_cl.options());
    AT_DISPATCH_FLOATING_TYPES(x_cl.scalar_type(), "deform_conv2d_backward_cpu", [&] {
      for (int64_t n0 = 0; n0 < g.N; n0 += B) {
        const int64_t nb = std::min(B, g.N - n0);
        const scalar_t* x = x_cl.data_ptr<scalar_t>() + n0 * g.H * g.W * g.C;
        const scalar_t* off = offset.data_ptr<scalar_t>() + n0 * 2 * g.DG * K * P;
        const at::Tensor cols = columns.narrow(0, 0, g.G * nb * P * CgK).view({g.G, nb * P, CgK});
        im2col(x, off, g, nb, columns.data_ptr<scalar_t>());
        for (int64_t gi = 0; gi < g.G; ++gi) {
          const at::Tensor gout = group_rows(grad_output, n0, nb, gi, g);
          at::Tensor gw = grad_w[gi];
          if (n0 == 0) {
            at::mm_out(gw, gout, cols[gi]);
          } else {
            gw.addmm_(gout, cols[gi]);
          }
          // The group's columns are no longer needed: they now receive grad_columns = grad_out^T @ W.
          at::Tensor gcol = cols[gi];
          at::mm_out(gcol, gout.t(), w[gi]);
        }
        const scalar_t* gcol = columns.data_ptr<scalar_t>();
        col2im(gcol, off, g, nb, grad_x_cl.data_ptr<scalar_t>() + n0 * g.H * g.W * g.C);
        offset_grad(gcol, x, off, g, nb, grad_offset.data_ptr<scalar_t>() + n0 * 2 * g.DG * K * P);
      }
    });
  }
  const at::ScalarType type = input.scalar_type();
  at::Tensor grad_weight = at::empty({g.F, g.Cg(), g.kh, g.kw}, x_cl.options().dtype(type));
  if (type == work)
    transpose_into(grad_w, grad_weight, g.F, K, g.Cg());
  else
    grad_weight.copy_(grad_w.view({g.F, g.kh, g.kw, g.Cg()}).permute({0, 3, 1, 2}));
  at::Tensor grad_input = cl ? grad_x_cl.permute({0, 3, 1, 2}) : to_nchw(grad_x_cl);
  return {grad_input.to(type), grad_offset.to(type), grad_weight, grad_bias.to(type)};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnviz, CPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_cpu);
  m.impl("_deform_conv2d_backward", &deform_conv2d_backward_cpu);
}

}  // namespace dcnviz
