// The inner loops of deform_conv2d's CPU backward over one run of channels of one sample, each in a
// generic form (the definition) and, for float, AVX-512 and AVX2 forms doing the same operations in the
// same order: the same bits either way (no FMA contraction, see setup.py). backward_loops() picks one
// set at run time (cpu_isa.h).
#pragma once
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <type_traits>

#include "cpu_isa.h"

namespace dcnviz {

// col2im: dst_i[c] += w_i * src[c] for the sample's four corners i = 0..3. Two corners may be one
// pixel (an axis clamped at the edge): per channel the corners are updated in order, each reading what
// the one before wrote, so the result is that of four separate passes.
template <typename T>
void scatter_corners(T* const dst[4], const T w[4], const T* src, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    for (int i = 0; i < 4; ++i) dst[i][c] += w[i] * src[c];
  }
}

// offset_grad: a sample's two slope sums over channels, gy = sum_c g[c] * d(blend)/dy and gx likewise,
// are accumulated in kSlopeLanes partial sums (channel c of a run into lane c mod kSlopeLanes), which
// SlopeSums::total() adds in a fixed tree: an order that 16-wide vectors follow with no other work.
constexpr int kSlopeLanes = 16;

template <typename T>
struct SlopeSums {
  T y[kSlopeLanes] = {}, x[kSlopeLanes] = {};

  static T tree(T* s) {
    for (int width = kSlopeLanes / 2; width >= 1; width /= 2) {
      for (int l = 0; l < width; ++l) s[l] += s[l + width];
    }
    return s[0];
  }
  // both totals; the partial sums are used up
  void total(T& gy, T& gx) {
    gy = tree(y);
    gx = tree(x);
  }
};

// Adds channels [0, n) of one run: g the gradient columns, v00..v11 the corners' channel runs, (ly, lx)
// the sample's fractional position. Lane l of a block takes channel c0 + l, in the order below.
template <typename T>
void add_slopes(SlopeSums<T>& s, const T* g, const T* v00, const T* v01, const T* v10, const T* v11, T ly, T lx,
                int64_t n) {
  const T ay = T(1) - ly, ax = T(1) - lx;
  for (int64_t c0 = 0; c0 < n; c0 += kSlopeLanes) {
    const int lanes = static_cast<int>(n - c0 < kSlopeLanes ? n - c0 : kSlopeLanes);
    for (int l = 0; l < lanes; ++l) {
      const int64_t c = c0 + l;
      s.y[l] += g[c] * (ax * (v10[c] - v00[c]) + lx * (v11[c] - v01[c]));
      s.x[l] += g[c] * (ay * (v01[c] - v00[c]) + ly * (v11[c] - v10[c]));
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define DCNVIZ_X86_INTRINSICS 1

__attribute__((target("avx512f"))) inline void scatter_corners_avx512(float* const dst[4], const float w[4],
                                                                      const float* src, int64_t n) {
  const __m512 w0 = _mm512_set1_ps(w[0]), w1 = _mm512_set1_ps(w[1]), w2 = _mm512_set1_ps(w[2]),
               w3 = _mm512_set1_ps(w[3]);
  float *d0 = dst[0], *d1 = dst[1], *d2 = dst[2], *d3 = dst[3];
  int64_t c = 0;
  // d0..d3 may be the same pixel: each store comes before the next corner's load (no restrict)
  for (; c + 16 <= n; c += 16) {
    const __m512 s = _mm512_loadu_ps(src + c);
    _mm512_storeu_ps(d0 + c, _mm512_add_ps(_mm512_loadu_ps(d0 + c), _mm512_mul_ps(w0, s)));
    _mm512_storeu_ps(d1 + c, _mm512_add_ps(_mm512_loadu_ps(d1 + c), _mm512_mul_ps(w1, s)));
    _mm512_storeu_ps(d2 + c, _mm512_add_ps(_mm512_loadu_ps(d2 + c), _mm512_mul_ps(w2, s)));
    _mm512_storeu_ps(d3 + c, _mm512_add_ps(_mm512_loadu_ps(d3 + c), _mm512_mul_ps(w3, s)));
  }
  if (c < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - c)) - 1u);
    const __m512 s = _mm512_maskz_loadu_ps(m, src + c);
    _mm512_mask_storeu_ps(d0 + c, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, d0 + c), _mm512_mul_ps(w0, s)));
    _mm512_mask_storeu_ps(d1 + c, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, d1 + c), _mm512_mul_ps(w1, s)));
    _mm512_mask_storeu_ps(d2 + c, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, d2 + c), _mm512_mul_ps(w2, s)));
    _mm512_mask_storeu_ps(d3 + c, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, d3 + c), _mm512_mul_ps(w3, s)));
  }
}

__attribute__((target("avx512f"))) inline void add_slopes_avx512(SlopeSums<float>& s, const float* g,
                                                                 const float* v00, const float* v01,
                                                                 const float* v10, const float* v11, float ly,
                                                                 float lx, int64_t n) {
  const __m512 ay = _mm512_set1_ps(1.0f - ly), ax = _mm512_set1_ps(1.0f - lx);
  const __m512 by = _mm512_set1_ps(ly), bx = _mm512_set1_ps(lx);
  __m512 sy = _mm512_loadu_ps(s.y), sx = _mm512_loadu_ps(s.x);
  for (int64_t c = 0; c < n; c += 16) {
    // a partial block leaves the lanes past its end as they were (masked add), as add_slopes does
    const __mmask16 m = n - c >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - c)) - 1u);
    const __m512 gc = _mm512_maskz_loadu_ps(m, g + c);
    const __m512 a = _mm512_maskz_loadu_ps(m, v00 + c), b = _mm512_maskz_loadu_ps(m, v01 + c);
    const __m512 d = _mm512_maskz_loadu_ps(m, v10 + c), e = _mm512_maskz_loadu_ps(m, v11 + c);
    const __m512 ty = _mm512_add_ps(_mm512_mul_ps(ax, _mm512_sub_ps(d, a)), _mm512_mul_ps(bx, _mm512_sub_ps(e, b)));
    const __m512 tx = _mm512_add_ps(_mm512_mul_ps(ay, _mm512_sub_ps(b, a)), _mm512_mul_ps(by, _mm512_sub_ps(e, d)));
    sy = _mm512_mask_add_ps(sy, m, sy, _mm512_mul_ps(gc, ty));
    sx = _mm512_mask_add_ps(sx, m, sx, _mm512_mul_ps(gc, tx));
  }
  _mm512_storeu_ps(s.y, sy);
  _mm512_storeu_ps(s.x, sx);
}

// AVX2 has no masked arithmetic: whole vectors here, the rest of the run by the generic loop.
__attribute__((target("avx2"))) inline void scatter_corners_avx2(float* const dst[4], const float w[4],
                                                                 const float* src, int64_t n) {
  const __m256 w0 = _mm256_set1_ps(w[0]), w1 = _mm256_set1_ps(w[1]), w2 = _mm256_set1_ps(w[2]),
               w3 = _mm256_set1_ps(w[3]);
  float *d0 = dst[0], *d1 = dst[1], *d2 = dst[2], *d3 = dst[3];
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 s = _mm256_loadu_ps(src + c);
    _mm256_storeu_ps(d0 + c, _mm256_add_ps(_mm256_loadu_ps(d0 + c), _mm256_mul_ps(w0, s)));
    _mm256_storeu_ps(d1 + c, _mm256_add_ps(_mm256_loadu_ps(d1 + c), _mm256_mul_ps(w1, s)));
    _mm256_storeu_ps(d2 + c, _mm256_add_ps(_mm256_loadu_ps(d2 + c), _mm256_mul_ps(w2, s)));
    _mm256_storeu_ps(d3 + c, _mm256_add_ps(_mm256_loadu_ps(d3 + c), _mm256_mul_ps(w3, s)));
  }
  if (c < n) {
    float* const rest[4] = {d0 + c, d1 + c, d2 + c, d3 + c};
    scatter_corners(rest, w, src + c, n - c);
  }
}

// Lanes 0-7 and 8-15 of the slope sums in two vectors each; a partial last block goes to add_slopes,
// which puts its channels in the same lanes (the block starts at a multiple of kSlopeLanes).
__attribute__((target("avx2"))) inline void add_slopes_avx2(SlopeSums<float>& s, const float* g, const float* v00,
                                                            const float* v01, const float* v10, const float* v11,
                                                            float ly, float lx, int64_t n) {
  const __m256 ay = _mm256_set1_ps(1.0f - ly), ax = _mm256_set1_ps(1.0f - lx);
  const __m256 by = _mm256_set1_ps(ly), bx = _mm256_set1_ps(lx);
  __m256 sy[2] = {_mm256_loadu_ps(s.y), _mm256_loadu_ps(s.y + 8)};
  __m256 sx[2] = {_mm256_loadu_ps(s.x), _mm256_loadu_ps(s.x + 8)};
  int64_t c0 = 0;
  for (; c0 + kSlopeLanes <= n; c0 += kSlopeLanes) {
    for (int h = 0; h < 2; ++h) {
      const int64_t c = c0 + 8 * h;
      const __m256 gc = _mm256_loadu_ps(g + c);
      const __m256 a = _mm256_loadu_ps(v00 + c), b = _mm256_loadu_ps(v01 + c);
      const __m256 d = _mm256_loadu_ps(v10 + c), e = _mm256_loadu_ps(v11 + c);
      const __m256 ty = _mm256_add_ps(_mm256_mul_ps(ax, _mm256_sub_ps(d, a)), _mm256_mul_ps(bx, _mm256_sub_ps(e, b)));
      const __m256 tx = _mm256_add_ps(_mm256_mul_ps(ay, _mm256_sub_ps(b, a)), _mm256_mul_ps(by, _mm256_sub_ps(e, d)));
      sy[h] = _mm256_add_ps(sy[h], _mm256_mul_ps(gc, ty));
      sx[h] = _mm256_add_ps(sx[h], _mm256_mul_ps(gc, tx));
    }
  }
  _mm256_storeu_ps(s.y, sy[0]);
  _mm256_storeu_ps(s.y + 8, sy[1]);
  _mm256_storeu_ps(s.x, sx[0]);
  _mm256_storeu_ps(s.x + 8, sx[1]);
  if (c0 < n) add_slopes(s, g + c0, v00 + c0, v01 + c0, v10 + c0, v11 + c0, ly, lx, n - c0);
}
#endif

// The loops for T: for float the AVX-512 or AVX2 forms where the CPU has them (and DCNVIZ_CPU_ISA is not
// baseline), else the generic ones.
template <typename T>
struct BackwardLoops {
  void (*scatter)(T* const[4], const T[4], const T*, int64_t);
  void (*slopes)(SlopeSums<T>&, const T*, const T*, const T*, const T*, const T*, T, T, int64_t);
};

template <typename T>
BackwardLoops<T> backward_loops() {
#ifdef DCNVIZ_X86_INTRINSICS
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx512()) return {&scatter_corners_avx512, &add_slopes_avx512};
    if (use_avx2()) return {&scatter_corners_avx2, &add_slopes_avx2};
  }
#endif
  return {&scatter_corners<T>, &add_slopes<T>};
}

}  // namespace dcnviz
