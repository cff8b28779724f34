// A batched 2-D transpose in tiles (an exact copy), for the layout changes around deform_conv2d's CPU
// kernels: the NCHW input to channels-last and the weight to tap-major before the GEMMs, the GEMM's
// channels-last rows into an NCHW output, the gradients back. torch's strided copy_ reads or writes a
// cache line per element there (3x slower for the res5 input gradient). float32 goes through register
// tiles, 16 x 16 on AVX-512 and 16 x 8 on AVX2 (use_avx512()/use_avx2()), large destinations with
// streamed stores (kStreamBytes); other types and DCNVIZ_CPU_ISA=baseline through a scalar loop over
// 32 x 32 tiles. Every path is a copy: the same bits.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu_isa.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define DCNVIZ_TILE_TRANSPOSE 1
#endif

namespace dcnviz {

#ifdef DCNVIZ_TILE_TRANSPOSE
// out[c * out_stride + r] = src[r * stride + c] for r < rows, c < cols (rows, cols <= 16), in registers:
// three rounds of interleaving, 2 x 2 blocks of floats, of float pairs, then of 128-bit quarters (two
// shuffles). Masked loads and stores: nothing outside the tile is read or written. (The maskz forms
// with a full mask: GCC 12 warns about the undefined pass-through of the plain ones.)
__attribute__((target("avx512f"))) inline void transpose_tile16(const float* src, int64_t stride, int64_t rows,
                                                                int64_t cols, float* out, int64_t out_stride) {
  constexpr __mmask16 all = 0xFFFF;
  constexpr __mmask8 pairs = 0xFF;
  const __mmask16 col_mask = static_cast<__mmask16>((1u << cols) - 1),
                  row_mask = static_cast<__mmask16>((1u << rows) - 1);
  __m512 r[16], t[16];
  for (int64_t i = 0; i < 16; ++i)
    r[i] = i < rows ? _mm512_maskz_loadu_ps(col_mask, src + i * stride) : _mm512_setzero_ps();
  // t[i], quarter k: r[i][4k], r[i+1][4k], r[i][4k+1], r[i+1][4k+1]; t[i+1]: the same of 4k+2, 4k+3
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_maskz_unpacklo_ps(all, r[i], r[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_ps(all, r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // r[i + j], quarter k: column 4k + j of rows i .. i+3
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]), c = _mm512_castps_pd(t[i + 2]),
                  d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(pairs, a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(pairs, a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(pairs, b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(pairs, b, d));
  }
  constexpr int kEven = _MM_SHUFFLE(2, 0, 2, 0), kOdd = _MM_SHUFFLE(3, 1, 3, 1);
  for (int j = 0; j < 4; ++j) {  // column 4k + j: quarter k of r[j], r[4 + j], r[8 + j], r[12 + j]
    const __m512 even0 = _mm512_maskz_shuffle_f32x4(all, r[j], r[4 + j], kEven);  // quarters 0, 2 of each
    const __m512 odd0 = _mm512_maskz_shuffle_f32x4(all, r[j], r[4 + j], kOdd);    // quarters 1, 3
    const __m512 even1 = _mm512_maskz_shuffle_f32x4(all, r[8 + j], r[12 + j], kEven);
    const __m512 odd1 = _mm512_maskz_shuffle_f32x4(all, r[8 + j], r[12 + j], kOdd);
    t[j] = _mm512_maskz_shuffle_f32x4(all, even0, even1, kEven);
    t[4 + j] = _mm512_maskz_shuffle_f32x4(all, odd0, odd1, kEven);
    t[8 + j] = _mm512_maskz_shuffle_f32x4(all, even0, even1, kOdd);
    t[12 + j] = _mm512_maskz_shuffle_f32x4(all, odd0, odd1, kOdd);
  }
  for (int64_t c = 0; c < cols; ++c) _mm512_mask_storeu_ps(out + c * out_stride, row_mask, t[c]);
}

// Line k of the dst rows [c0, c0 + nc) (nc <= 16) of dst (cols, rows) = src (rows, cols) transposed,
// streamed as whole 64-byte lines whatever the rows' alignment: line k of dst row c is its 16 values
// from 16k + a_c on, where a_c (< 16) is the offset of the row's first aligned line, so it is cut from
// the transposes of src rows 16k .. 16k+15 and 16k+16 .. 16k+31 by one two-register permute. The values
// before a row's first line (with line 0) and after its last whole one go with masked plain stores.
__attribute__((target("avx512f"))) inline void stream_line16(const float* src, int64_t rows, int64_t cols,
                                                             int64_t c0, int64_t nc, int64_t k, float* dst) {
  alignas(64) float lo[16 * 16], hi[16 * 16];  // column c of a tile at c * 16
  if (16 * (k + 2) > rows) {  // the last lines: lanes past the rows stay 0 (they are never stored)
    std::fill(lo, lo + 16 * 16, 0.f);
    std::fill(hi, hi + 16 * 16, 0.f);
  }
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  transpose_tile16(src + 16 * k * cols + c0, cols, std::min<int64_t>(16, rows - 16 * k), nc, lo, 16);
  if (16 * (k + 1) < rows)
    transpose_tile16(src + 16 * (k + 1) * cols + c0, cols, std::min<int64_t>(16, rows - 16 * (k + 1)), nc, hi, 16);
  for (int64_t c = 0; c < nc; ++c) {
    float* row = dst + (c0 + c) * rows;
    const int64_t a = (16 - reinterpret_cast<uintptr_t>(row) / sizeof(float) % 16) % 16;
    const __m512 low = _mm512_load_ps(lo + c * 16);
    if (k == 0) _mm512_mask_storeu_ps(row, static_cast<__mmask16>((1u << std::min(a, rows)) - 1), low);
    const int64_t at = 16 * k + a;
    if (at >= rows) continue;
    const __m512 v = _mm512_permutex2var_ps(low, _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(a))),
                                            _mm512_load_ps(hi + c * 16));
    if (at + 16 <= rows)
      _mm512_stream_ps(row + at, v);
    else
      _mm512_mask_storeu_ps(row + at, static_cast<__mmask16>((1u << (rows - at)) - 1), v);
  }
}

// transpose_tile16 for rows <= 16, cols <= 8 with AVX2: two 8 x 8 transposes in registers (pairs of
// floats, of float pairs, then 128-bit halves), so that each column's 16 values, a whole cache line
// where the output is 64-byte aligned, are stored one right after the other.
template <bool Stream>
__attribute__((target("avx2"))) inline void transpose_tile16x8(const float* src, int64_t stride, int64_t rows,
                                                               int64_t cols, float* out, int64_t out_stride) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i col_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols)), lane);
  __m256 r[16], t[16];
  for (int64_t i = 0; i < 16; ++i)
    r[i] = i < rows ? _mm256_maskload_ps(src + i * stride, col_mask) : _mm256_setzero_ps();
  for (int i = 0; i < 16; i += 2) {  // t[i], half h: r[i][4h], r[i+1][4h], r[i][4h+1], r[i+1][4h+1]; t[i+1]: 4h+2, 4h+3
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // r[i + j], half h: column 4h + j of rows i .. i+3
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int h = 0; h < 2; ++h)  // t[2c + h]: column c of rows 8h .. 8h+7
    for (int j = 0; j < 4; ++j) {
      t[2 * j + h] = _mm256_permute2f128_ps(r[8 * h + j], r[8 * h + 4 + j], 0x20);
      t[2 * (4 + j) + h] = _mm256_permute2f128_ps(r[8 * h + j], r[8 * h + 4 + j], 0x31);
    }
  const __m256i low = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rows)), lane),
                high = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rows - 8)), lane);
  for (int64_t c = 0; c < cols; ++c) {
    float* o = out + c * out_stride;
    if constexpr (Stream) {
      _mm256_stream_ps(o, t[2 * c]);
      _mm256_stream_ps(o + 8, t[2 * c + 1]);
    } else if (rows == 16) {
      _mm256_storeu_ps(o, t[2 * c]);
      _mm256_storeu_ps(o + 8, t[2 * c + 1]);
    } else {  // a masked store of no lanes still writes nothing
      _mm256_maskstore_ps(o, low, t[2 * c]);
      _mm256_maskstore_ps(o + 8, high, t[2 * c + 1]);
    }
  }
}
#endif

// Destinations from this size up are written with non-temporal stores, whole aligned cache lines
// only: they are larger than a core's L2, so their lines would only be read in (and others written
// back) to be overwritten. Inside deform_conv2d's NCHW forward at res5 (2 threads, AVX-512), plain
// stores (register tiles or torch's copy_) -> streamed: the 4.9 MB input 0.58-1.05 -> 0.44-0.48 ms and
// the 9.4 MB weight 0.80-1.15 -> 0.82-0.90 (both about the time to read them from memory), the 4.9 MB
// output from the GEMM's rows 1.1-1.6 -> 0.32.
constexpr int64_t kStreamBytes = int64_t(4) << 20;

// dst (batch, cols, rows) = src (batch, rows, cols) transposed, for every batch item; both contiguous.
// In parallel over tiles, a batch item's tiles row band by row band: a band's reads run along its
// rows. Streamed (above): on AVX-512 by stream_line16, on AVX2 by 16 x 8 tiles where every dst row
// starts a line (rows a multiple of 16, dst aligned).
template <typename T>
void transpose_batched(const T* src, T* dst, int64_t batch, int64_t rows, int64_t cols) {
  using Tile = void (*)(const float*, int64_t, int64_t, int64_t, float*, int64_t);
  Tile tile = nullptr;
  int64_t tile_rows = 32, tile_cols = 32;
  bool stream = false;
#ifdef DCNVIZ_TILE_TRANSPOSE
  if constexpr (std::is_same_v<T, float>) {
    // a row shorter than 16 holds no whole line (the weight gradient's 9: 0.99 ms after a GEMM by plain
    // tiles, 1.30 by stream_line16)
    const bool streamable = rows >= 16 && batch * rows * cols * int64_t(sizeof(float)) >= kStreamBytes;
    if (use_avx512()) {
      if (streamable) {  // line by line, each across every strip of 16 dst rows: the reads run along src rows
        const int64_t strips = (cols + 15) / 16, lines = (rows + 15) / 16;
        at::parallel_for(0, batch * lines * strips, 64, [&](int64_t begin, int64_t end) {
          for (int64_t t = begin; t < end; ++t) {
            const int64_t b = t / (lines * strips), k = t / strips % lines, c0 = t % strips * 16;
            stream_line16(src + b * rows * cols, rows, cols, c0, std::min<int64_t>(16, cols - c0), k,
                          dst + b * rows * cols);
          }
          _mm_sfence();  // the streamed stores are weakly ordered: fence them before others read
        });
        return;
      }
      tile = &transpose_tile16, tile_rows = 16, tile_cols = 16;
    } else if (use_avx2()) {
      stream = streamable && rows % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 64 == 0;
      tile = stream ? &transpose_tile16x8<true> : &transpose_tile16x8<false>, tile_rows = 16, tile_cols = 8;
    }
  }
#endif
  const int64_t row_tiles = (rows + tile_rows - 1) / tile_rows, col_tiles = (cols + tile_cols - 1) / tile_cols;
  const int64_t tiles = batch * row_tiles * col_tiles,
                tile_size = std::min(rows, tile_rows) * std::min(cols, tile_cols);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, tile_size));  // ~16K elements
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (row_tiles * col_tiles), r0 = (t / col_tiles) % row_tiles * tile_rows,
                    c0 = t % col_tiles * tile_cols;
      const int64_t r1 = std::min(rows, r0 + tile_rows), c1 = std::min(cols, c0 + tile_cols);
      const T* s = src + b * rows * cols;
      T* d = dst + b * rows * cols;
      if constexpr (std::is_same_v<T, float>) {
        if (tile != nullptr) {
          tile(s + r0 * cols + c0, cols, r1 - r0, c1 - c0, d + c0 * rows + r0, rows);
          continue;
        }
      }
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t r = r0; r < r1; ++r) d[c * rows + r] = s[r * cols + c];
      }
    }
#ifdef DCNVIZ_TILE_TRANSPOSE
    if (stream) _mm_sfence();
#endif
  });
}

}  // namespace dcnviz
