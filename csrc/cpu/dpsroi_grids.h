// Per-call geometry of the deform_psroi_pool CPU kernels (deform_psroi_pool_cpu.cpp): RoI frames, the
// bins of each input channel, and the bins' sample grids, computed once and reused where the kernels
// loop. Everything here is built from the shared rules of csrc/pooling.h.
#pragma once
#include <ATen/Parallel.h>

#include <optional>
#include <utility>
#include <vector>

#include "../pooling.h"

namespace dcnviz {

// Every RoI's frame (batch index -1: unusable RoI).
template <typename T>
std::vector<RoiFrame<T>> roi_frames(const T* rois, const DeformPoolGeometry& g) {
  std::vector<RoiFrame<T>> frames(g.rois);
  for (int64_t n = 0; n < g.rois; ++n) frames[n] = dpsroi_frame<T>(rois + n * 5, g);
  return frames;
}

// An output bin of one input channel: with group_size == pooled_size a channel has one bin per RoI,
// with group_size 1 it has all pooled_size**2.
struct ChannelBin {
  int64_t ph, pw;
  int64_t out;   // (ctop*P + ph)*P + pw: the bin's element within one RoI's output
  int64_t grid;  // (offset class*P + ph)*P + pw: the bin's sample grid, which all channels of the class share
  BinCell cell;
};

template <typename T>
void channel_bins(int64_t channel, const DeformPoolGeometry& g, std::vector<ChannelBin>& bins) {
  const int64_t P = g.pooled_size, G = g.group_size;
  const int64_t ctop = channel / (G * G), gh = channel / G % G, gw = channel % G;
  bins.clear();
  for (int64_t ph = 0; ph < P; ++ph) {
    if (group_of(ph, G, P) != gh) continue;
    for (int64_t pw = 0; pw < P; ++pw)
      if (group_of(pw, G, P) == gw)
        bins.push_back({ph, pw, (ctop * P + ph) * P + pw, (ctop / g.channels_each_class * P + ph) * P + pw,
                        bin_cell<T>(ctop, ph, pw, g)});
  }
}

// The samples of `size` bins that lie on the map: each bin's valid rows and columns, computed once
// (the shared for_each_sample recomputes a column per row, which costs more than the sample on a CPU)
// and visited in for_each_sample's order. Axes are kept field by field: copying whole AxisSample
// structs through memory stalled store-to-load forwarding.
template <typename T>
class SampleGrids {
 public:
  SampleGrids(int64_t size, int64_t sample_per_part) : rows_(size, sample_per_part), cols_(size, sample_per_part) {}

  // Grid k becomes bin b of RoI frame f.
  void fill(int64_t k, const RoiFrame<T>& f, const Bin<T>& b, const DeformPoolGeometry& g) {
    auto rows = rows_.view(k), cols = cols_.view(k);
    rows.size = cols.size = 0;
    for (int64_t i = 0; i < g.sample_per_part; ++i) {
      rows.add(sample_row(f, b, i, g));
      cols.add(sample_col(f, b, i, g));
    }
    rows_.size[k] = rows.size;
    cols_.size[k] = cols.size;
  }

  int64_t count(int64_t k) const { return rows_.size[k] * cols_.size[k]; }

  template <typename Fn>
  void for_each(int64_t k, int64_t width, Fn&& fn) const {
    const auto rows = rows_.view(k), cols = cols_.view(k);
    for (int64_t r = 0; r < rows.size; ++r) {
      const AxisSample<T> row = rows[r];
      for (int64_t c = 0; c < cols.size; ++c) fn(dpsroi_corners(row, cols[c], width));
    }
  }

 private:
  // One grid's axes, its count held in a local while it is filled or read rather than in memory.
  template <typename I, typename F>
  struct View {
    I *i0, *step;
    F* frac;
    int64_t size;
    void add(const AxisSample<T>& a) {
      if (!a.valid) return;
      i0[size] = a.i0;
      step[size] = a.step;
      frac[size] = a.frac;
      ++size;
    }
    AxisSample<T> operator[](int64_t m) const { return {i0[m], step[m], frac[m], true}; }
  };

  struct Axes {
    Axes(int64_t size, int64_t samples)
        : samples(samples), i0(size * samples), step(size * samples), frac(size * samples), size(size, 0) {}
    View<int64_t, T> view(int64_t k) {
      return {i0.data() + k * samples, step.data() + k * samples, frac.data() + k * samples, size[k]};
    }
    View<const int64_t, const T> view(int64_t k) const {
      return {i0.data() + k * samples, step.data() + k * samples, frac.data() + k * samples, size[k]};
    }
    int64_t samples;
    std::vector<int64_t> i0, step;
    std::vector<T> frac;
    std::vector<int64_t> size;
  };
  Axes rows_, cols_;
};

// Where each bin's sample grid comes from. The grid of bin (ph, pw) of RoI n depends on the offset
// class, not on the output channel: when a class has several channels (no_trans mode, where all
// output_dim channels form one class; the R-FCN offset branch pools 162 per bin), each grid is computed
// once per call into a table (2.6 MB there for 300 RoIs). Otherwise, or when the table would exceed
// kMaxTableBytes (very many RoIs and offset classes), a thread computes each bin's grid in a scratch
// grid just before using it.
template <typename T>
class BinGrids {
 public:
  static constexpr int64_t kMaxTableBytes = int64_t(64) << 20;

  BinGrids(const std::vector<RoiFrame<T>>& frames, const T* offset, const DeformPoolGeometry& g)
      : frames_(frames), offset_(offset), g_(g) {
    const int64_t P = g.pooled_size, grids = g.num_classes * P * P * g.rois;
    // Per grid: sample_per_part rows and columns (i0, step, frac) and their two counts.
    const int64_t grid_bytes = 2 * (g.sample_per_part * int64_t(2 * sizeof(int64_t) + sizeof(T)) + int64_t(sizeof(int64_t)));
    if (g.channels_each_class == 1 || grids * grid_bytes > kMaxTableBytes) return;
    shared_.emplace(grids, g.sample_per_part);
    at::parallel_for(0, g.num_classes * P * P, 1, [&](int64_t begin, int64_t end) {
      for (int64_t grid = begin; grid < end; ++grid) {
        const int64_t ph = grid / P % P, pw = grid % P;
        const BinCell cell = bin_cell<T>(grid / (P * P) * g.channels_each_class, ph, pw, g);  // the class's cell
        for (int64_t n = 0; n < g.rois; ++n)
          if (frames[n].batch >= 0)
            shared_->fill(grid * g.rois + n, frames[n], make_bin(frames[n], offset, n, cell, ph, pw, g), g);
      }
    });
  }

  SampleGrids<T> scratch() const { return SampleGrids<T>(shared_ ? 0 : 1, g_.sample_per_part); }

  // Calls body(grid_of), where grid_of(n, bin, scratch) gives the grids holding bin `bin` of (usable)
  // RoI n and its index there, filling `scratch` when there is no table. One instantiation of the
  // kernel's loop per source keeps each lean (a run-time choice per bin cost 15%).
  template <typename Body>
  void with_source(Body&& body) const {
    using Found = std::pair<const SampleGrids<T>*, int64_t>;
    if (shared_) {
      body([this](int64_t n, const ChannelBin& bin, SampleGrids<T>&) -> Found {
        return {&*shared_, bin.grid * g_.rois + n};
      });
    } else {
      body([this](int64_t n, const ChannelBin& bin, SampleGrids<T>& scratch) -> Found {
        scratch.fill(0, frames_[n], make_bin(frames_[n], offset_, n, bin.cell, bin.ph, bin.pw, g_), g_);
        return {&scratch, 0};
      });
    }
  }

 private:
  const std::vector<RoiFrame<T>>& frames_;
  const T* offset_;
  const DeformPoolGeometry& g_;
  std::optional<SampleGrids<T>> shared_;
};

}  // namespace dcnviz
