// A batched 2-D transpose in tiles, so that both sides move a cache line at a time (an exact copy).
// deform_conv2d's CPU backward turns its channels-last input gradient into NCHW with it, where torch's
// strided copy_ reads a line per element (3x slower at the res5 shape).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace dcnviz {

// dst (batch, cols, rows) = src (batch, rows, cols) transposed, for every batch item.
template <typename T>
void transpose_batched(const T* src, T* dst, int64_t batch, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
  const int64_t tiles = batch * row_tiles * col_tiles, tile_size = std::min(rows, kTile) * std::min(cols, kTile);
  const int64_t grain = std::max<int64_t>(1, 16 * kTile * kTile / std::max<int64_t>(1, tile_size));  // ~16K elements
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (row_tiles * col_tiles), r0 = (t / col_tiles) % row_tiles * kTile,
                    c0 = t % col_tiles * kTile;
      const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
      const T* s = src + b * rows * cols;
      T* d = dst + b * rows * cols;
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t r = r0; r < r1; ++r) d[c * rows + r] = s[r * cols + c];
      }
    }
  });
}

}  // namespace dcnviz
