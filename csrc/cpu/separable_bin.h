// One bin of one RoI as the deform_psroi_pool CPU kernels (deform_psroi_pool_cpu.cpp) sum it (forward)
// and spread its gradient (backward): for any bin here, and on a fixed window for kLanes RoIs at once in
// BinWindow (lane_grids.h), which gives the same gradient bits.
//
// A bin's samples form a grid: sample_per_part rows y_r times sample_per_part columns x_c, and a sample
// lies on the map when its row and its column do. Bilinear weights factor into a row part and a column
// part, so the bin's samples taken together factor too: with
//   ay[i] = sum over valid rows r of the weight row r gives pixel row i ((1 - ly_r) at y0_r, ly_r at y1_r),
//   ax[j] = the same over valid columns,
// the sum of the samples' values is sum_ij ay[i] ax[j] x[i, j], and the gradient they spread is the
// outer product (d * ay[i]) * ax[j] (d = grad / count). That is one term per touched pixel instead of
// four per sample (a 4x4 grid of samples closer than a pixel touches 2x2 to 3x3 pixels, not 64 corners),
// and the pixels of a row are a contiguous run. The sums are regrouped, so forward and gradient differ
// from a sample-by-sample sum (pooling.h, the CUDA kernels) in rounding only; their order is fixed by
// the data, never by the threads.
//
// Exactly the pixels a sample-by-sample sum touches are read or changed: rows are only the touched
// ones, and a column inside the run that no sample touches (ax == 0) is skipped in the forward and
// receives +0 in the backward (masked, so that an infinite d cannot make it NaN), which leaves any
// gradient unchanged (one that starts at +0 never becomes -0). Where a sample-by-sample sum multiplies
// an inf or NaN pixel by a corner weight of 0 and gets NaN, the merged weights can skip it (forward) or
// give inf (backward, infinite d): not finite either way in the backward, finite in the forward.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "lane_grids.h"

namespace dcnviz {

template <typename T>
class SeparableBin {
 public:
  SeparableBin(int64_t sample_per_part, int64_t width)
      : s_(sample_per_part), row_(2 * s_), ay_(2 * s_), ax_(width) {}

  // Lane l of grid q. Call only for a lane with samples on the map (BinWindow::count[l] > 0).
  void set(const LaneGrid<T>& q, int64_t l) {
    rows_ = 0;
    for (int64_t r = 0; r < s_; ++r) {
      const int64_t at = r * kLanes + l;
      if (q.row_ok[at] == T(0)) continue;
      add_row(q.row[at], T(1) - q.ly[at]);
      add_row(q.row[at] + q.dy[at], q.ly[at]);
    }
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    for (int64_t c = 0; c < s_; ++c) {
      const int64_t at = c * kLanes + l;
      if (q.col_ok[at] == T(0)) continue;
      lo = std::min(lo, q.col[at]);
      hi = std::max(hi, q.col[at] + q.dx[at]);
    }
    batch_ = q.batch[l];
    first_ = lo;
    cols_ = hi - lo + 1;
    std::fill_n(ax_.data(), cols_, T(0));
    for (int64_t c = 0; c < s_; ++c) {
      const int64_t at = c * kLanes + l;
      if (q.col_ok[at] == T(0)) continue;
      const int64_t j0 = q.col[at] - lo;
      ax_[j0] += T(1) - q.lx[at];
      ax_[j0 + q.dx[at]] += q.lx[at];
    }
  }

  // out[c] = sum_j ax[j] * (sum_i ay[i] x[i, j, c]) over the touched columns j and rows i, in order,
  // for n channels c of x: a plane (C = n = 1) or a channels-last image at its first channel (C channels
  // per pixel). Channels go in chunks, so the partial sums are small local arrays.
  void sum(const T* x, int64_t C, int64_t n, T* out) const {
    constexpr int64_t kChunk = 64;
    for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
      const int64_t m = std::min(kChunk, n - c0);
      T acc[kChunk], e[kChunk];
      std::fill_n(acc, m, T(0));
      for (int64_t j = 0; j < cols_; ++j) {
        if (ax_[j] == T(0)) continue;
        std::fill_n(e, m, T(0));
        for (int64_t k = 0; k < rows_; ++k) {
          if (ay_[k] == T(0)) continue;  // a row listed with weight 0 (a sample at fraction 0)
          const T* __restrict v = x + batch_ + (row_[k] + first_ + j) * C + c0;
          for (int64_t c = 0; c < m; ++c) e[c] += ay_[k] * v[c];
        }
        for (int64_t c = 0; c < m; ++c) acc[c] += ax_[j] * e[c];
      }
      std::copy_n(acc, m, out + c0);
    }
  }

  // gx[pixel] += d * ay[i] * ax[j] over the bin's pixels (gx: a plane of the input gradient).
  void scatter(T d, T* gx) const {
    const T* __restrict ax = ax_.data();
    for (int64_t k = 0; k < rows_; ++k) {
      const T s = d * ay_[k];
      T* __restrict g = gx + batch_ + first_ + row_[k];
      for (int64_t j = 0; j < cols_; ++j) g[j] += ax[j] != T(0) ? s * ax[j] : T(0);
    }
  }

 private:
  // Rows arrive in non-decreasing order (sample positions grow with the row index), so a row already
  // listed is one of the last two entries. Merging is only a saving: a repeated entry would still
  // give the right sums.
  void add_row(int64_t offset, T a) {
    for (int64_t k = rows_ - 1; k >= 0 && k >= rows_ - 2; --k)
      if (row_[k] == offset) {
        ay_[k] += a;
        return;
      }
    row_[rows_] = offset, ay_[rows_] = a;
    ++rows_;
  }

  int64_t s_;
  std::vector<int64_t> row_;  // element offset of each touched row within the plane
  std::vector<T> ay_;         // per touched row
  std::vector<T> ax_;         // per column of the run
  int64_t rows_ = 0, cols_ = 0;
  int64_t batch_ = 0;  // the batch image as an element offset (LaneFrames::batch)
  int64_t first_ = 0;  // the run's first column
};

}  // namespace dcnviz
