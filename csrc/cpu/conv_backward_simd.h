// The inner loops of deform_conv2d's CPU backward over one run of channels of one sample, each in a
// generic form (the definition) and, for float where use_avx512() (cpu_isa.h), an AVX-512 form doing
// the same operations in the same order: the same bits either way (no FMA contraction, see setup.py).
#pragma once
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstdint>

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
#define DCNVIZ_CONV_AVX512 1

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
#endif

}  // namespace dcnviz
