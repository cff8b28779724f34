// Bins of the deform_psroi_pool CPU kernels (deform_psroi_pool_cpu.cpp) for kLanes RoIs at once: the same
// output bin of kLanes consecutive RoIs, laid out lane-innermost (value k of lane l at k*kLanes + l), so
// that every loop over lanes is a vector loop (lane_kernels.inc): their windows (BinWindow), and their
// sample grids (LaneGrid) where a lane does not fit its window. The sample positions are those of
// csrc/pooling.h, written out lane-wise: each lane computes exactly what pooling.h computes for one bin.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../pooling.h"
#include "cpu_isa.h"

namespace dcnviz {

constexpr int64_t kLanes = 16;

// Asks for the cache line of p. An asm statement, not __builtin_prefetch: GCC 12 counts a function
// whose only effect is that builtin as pure (ipa-pure-const) and deletes the calls it does not inline,
// prefetches and all (a helper like prefetch_slice below once came out with no prefetch in it, and the
// forward 20 % slower); a volatile asm stays where it is written.
inline void prefetch_line(const void* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p);
#endif
}

// Asks for slice `block` of `blocks` of the planes of input channel `channel` (every image) in cache.
// The kernels read one plane (a few KiB) per channel at the RoIs' scattered positions, and a plane that
// comes from memory stalls every read that misses (a head's input, 38 MB at R-FCN's, does not stay in
// cache between calls), so they ask for the next channel's planes, a slice per block of RoIs: a whole
// plane at once (~150 lines at the R-FCN head) filled the line fill buffers and stalled the loop on
// its prefetches.
template <typename T>
void prefetch_slice(const T* input, const DeformPoolGeometry& g, int64_t channel, int64_t block, int64_t blocks) {
  const int64_t plane = g.height * g.width, slice = (plane + blocks - 1) / blocks;
  const int64_t from = std::min(plane, block * slice), to = std::min(plane, from + slice);
  for (int64_t b = 0; b < g.batch; ++b) {
    const T* p = input + (b * g.channels + channel) * plane;
    for (int64_t i = from; i < to; i += 64 / int64_t(sizeof(T))) prefetch_line(p + i);
  }
}

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

// The frames of kLanes RoIs, field by field (RoiFrame's fields; an unusable RoI or a lane past the
// last RoI has usable 0 and zero fields).
template <typename T>
struct LaneFrames {
  T y_start[kLanes], x_start[kLanes], height[kLanes], width[kLanes], bin_h[kLanes], bin_w[kLanes];
  T sub_h[kLanes], sub_w[kLanes], usable[kLanes];
  int64_t batch[kLanes];  // the batch image as an element offset (batch * channels * H * W in the input)
};

// The LaneFrames of every block of kLanes RoIs, image b at element offset b * batch_stride.
template <typename T>
std::vector<LaneFrames<T>> lane_frames(const std::vector<RoiFrame<T>>& frames, const DeformPoolGeometry& g,
                                       int64_t batch_stride) {
  std::vector<LaneFrames<T>> blocks((g.rois + kLanes - 1) / kLanes);
  for (size_t k = 0; k < blocks.size(); ++k) {
    LaneFrames<T>& f = blocks[k];
    for (int64_t l = 0; l < kLanes; ++l) {
      const int64_t n = int64_t(k) * kLanes + l;
      const bool usable = n < g.rois && frames[n].batch >= 0;
      const RoiFrame<T> r = usable ? frames[n] : RoiFrame<T>{0, T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
      f.y_start[l] = r.y_start, f.x_start[l] = r.x_start, f.height[l] = r.height, f.width[l] = r.width;
      f.bin_h[l] = r.bin_h, f.bin_w[l] = r.bin_w, f.sub_h[l] = r.sub_h, f.sub_w[l] = r.sub_w;
      f.usable[l] = usable ? T(1) : T(0);
      f.batch[l] = usable ? r.batch * batch_stride : 0;
    }
  }
  return blocks;
}

// One bin of kLanes RoIs. Each sample row and column of a lane is an AxisSample held field by field:
// the plane offset of its first pixel (row: i0*W, column: i0), its step to the second (row: 0 or W,
// column: 0 or 1), its fraction and whether it lies on the map (1 or 0, in T so that every lane loop
// works on one element width). An off-map axis is {0, 0, 0}, so reading it stays in bounds.
template <typename T>
struct LaneGrid {
  int64_t *row, *dy, *col, *dx;
  int64_t* y;  // the row's pixel index (row / W)
  T *ly, *lx, *row_ok, *col_ok;
  int64_t* batch;  // LaneFrames::batch
};

// One bin of kLanes RoIs as the deform_psroi_pool CPU kernels sum it (forward) and spread it (backward),
// separably (separable_bin.h): a window of kWindow x kWindow pixels around the pixels each lane's
// samples touch, with the bin's column weights ax and row weights ay, and (backward) the weights bx, by
// of its bilinear slopes (+1 at each valid sample's second pixel, -1 at its first). The row weights
// ay, by are position-major (weight k of lane l at k*kLanes + l: a lane reads one per row), the
// column weights ax, bx lane-major (at l*kWindow + k: a lane reads them as one window row). A lane
// whose samples span more than kWindow rows or columns (a bin over ~6 pixels), on a map narrower than
// kWindow, or (backward) with a non-finite grad/count does not fit and takes SeparableBin (and
// add_slopes) on its LaneGrid instead.
constexpr int64_t kWindow = 8;

template <typename T>
struct BinWindow {
  T ax[kWindow * kLanes], ay[kWindow * kLanes], bx[kWindow * kLanes], by[kWindow * kLanes];
  int64_t col0[kLanes];  // the window's first column (at most W - kWindow)
  int64_t row0[kLanes];  // its first row
  int64_t rows[kLanes];  // rows the samples span (at most kWindow where the lane fits)
  int64_t batch[kLanes];  // LaneFrames::batch
  int64_t count[kLanes];  // valid sample rows * valid sample columns (0 for an unusable RoI): the divisor
  bool fits[kLanes];      // the samples fit the window (whatever the gradient)
};

// The lane loops, compiled once per instruction set (lane_kernels_*.cpp) and picked at run time.
template <typename T>
struct LaneKernels {
  // Bin (ph, pw) moved by the lanes' offsets dx[l], dy[l] (not read without offsets).
  void (*fill)(const LaneGrid<T>& q, const LaneFrames<T>& f, const T* dx, const T* dy, int64_t ph, int64_t pw,
               const DeformPoolGeometry& g);
  void (*add_slopes)(const LaneGrid<T>& q, const T* x, int64_t sample_per_part, T* dvdx, T* dvdy);
  // The window of the same bin (slopes: with bx, by), what fill's grid gives, without the grid.
  void (*window)(const LaneFrames<T>& f, const T* dx, const T* dy, int64_t ph, int64_t pw,
                 const DeformPoolGeometry& g, bool slopes, BinWindow<T>& w);
  // Lane l's input gradient for grad/count d added to g, and (slopes not null) its slope sums dv/dx,
  // dv/dy on x; x and g point at the window's first pixel of their planes.
  void (*window_backward)(const BinWindow<T>& w, int64_t l, int64_t W, T d, const T* x, T* g, T* slopes);
  // The forward: the means of the bilinear samples of the first `lanes` lanes that fit, from plane x,
  // lane l into out[l * stride]; and lane l's sums for n channels of a channels-last image x at the
  // window's first pixel, C channels per pixel, into out.
  void (*window_means)(const BinWindow<T>& w, int64_t lanes, int64_t W, const T* x, T* out, int64_t stride);
  void (*window_sum_cl)(const BinWindow<T>& w, int64_t l, int64_t W, int64_t C, const T* x, int64_t n, T* out);
  // out[e * out_stride + l] = src[l * stride + e] for every e < elements, 0 for the lanes l >= lanes.
  void (*gather_lanes)(const T* src, int64_t stride, int64_t lanes, int64_t elements, T* out, int64_t out_stride);
};

template <typename T>
LaneKernels<T> lane_kernels_default();
template <typename T>
LaneKernels<T> lane_kernels_avx2();
template <typename T>
LaneKernels<T> lane_kernels_avx512();

// AVX-512, AVX2 or the x86-64 baseline loops, as use_avx512() and use_avx2() pick.
template <typename T>
const LaneKernels<T>& lane_kernels() {
  static const LaneKernels<T> kernels = use_avx512() ? lane_kernels_avx512<T>()
                                        : use_avx2() ? lane_kernels_avx2<T>()
                                                     : lane_kernels_default<T>();
  return kernels;
}

// Storage for `size` LaneGrids of sample_per_part rows and columns.
template <typename T>
class LaneGrids {
 public:
  LaneGrids(int64_t size, int64_t sample_per_part)
      : s_(sample_per_part), index_(size * index_size()), value_(size * 4 * s_ * kLanes) {}

  LaneGrid<T> operator[](int64_t k) {
    int64_t* i = index_.data() + k * index_size();
    T* v = value_.data() + k * 4 * s_ * kLanes;
    const int64_t m = s_ * kLanes;
    return {i, i + m, i + 2 * m, i + 3 * m, i + 4 * m, v, v + m, v + 2 * m, v + 3 * m, i + 5 * m};
  }

  // Grid k becomes bin `bin` of the RoIs of frames f, moved by their offsets dx[l], dy[l].
  void fill(int64_t k, const LaneFrames<T>& f, const T* dx, const T* dy, const ChannelBin& bin,
            const DeformPoolGeometry& g) {
    lane_kernels<T>().fill((*this)[k], f, dx, dy, bin.ph, bin.pw, g);
  }

 private:
  int64_t index_size() const { return 5 * s_ * kLanes + kLanes; }
  int64_t s_;
  std::vector<int64_t> index_;
  std::vector<T> value_;
};

// The offsets of a run of offset classes, element-major and RoI-minor ([class][element][RoI], RoIs
// padded to whole blocks with 0), so that the kLanes RoIs of a block read a cell's offsets from one run
// of memory (in place, each RoI's cell is a cache line of its own: the R-FCN class offsets are 31 KB per
// RoI). Each thread keeps one, holding the classes it works on, and copies the next run when it moves
// on: the kernels visit classes in order, so a thread copies each of its classes once, into ~0.5 MB
// that stays in cache. Copied a class at a time, with scalar reads, it was ~20 % of the class-score
// forward (measured by skipping it): the reads jump 31 KB from RoI to RoI, a cache line and a page
// each. Now gather_lanes asks for a block's RoIs at once, and a run of classes is one stretch of each
// RoI's offsets, read in one pass. A copy of every class up front (9.5 MB at the R-FCN head) was ~10 %
// of the class-score forward, written out to memory and read back.
template <typename T>
class ClassOffsets {
 public:
  static constexpr int64_t kRunBytes = int64_t(512) << 10;

  ClassOffsets(const T* offset, const DeformPoolGeometry& g, int64_t blocks)
      : offset_(offset),
        g_(g),
        cells_(g.part_size * g.part_size),
        padded_(blocks * kLanes),
        run_(std::clamp<int64_t>(kRunBytes / std::max<int64_t>(1, 2 * cells_ * padded_ * int64_t(sizeof(T))), 1,
                                 std::max<int64_t>(1, g.num_classes))),
        rows_(offset != nullptr ? run_ * 2 * cells_ * padded_ : 0) {}

  // The lanes' dx and dy of `bin` for the RoIs of `block`; null without offsets (then never read).
  void lanes(const ChannelBin& bin, int64_t block, const T*& dx, const T*& dy) {
    if (offset_ == nullptr) {
      dx = dy = nullptr;
      return;
    }
    const int64_t cls = bin.cell.offset / (2 * cells_);
    if (cls < first_ || cls >= first_ + count_) load(cls);
    dx = rows_.data() + (bin.cell.offset - first_ * 2 * cells_) * padded_ + block * kLanes;
    dy = dx + cells_ * padded_;
  }

 private:
  void load(int64_t cls) {
    const int64_t per_roi = g_.num_classes * 2 * cells_;
    const int64_t count = std::min(run_, g_.num_classes - cls), elements = count * 2 * cells_;
    const T* src = offset_ + cls * 2 * cells_;
    T* out = rows_.data();
    const LaneKernels<T>& kernels = lane_kernels<T>();
    for (int64_t n0 = 0; n0 < g_.rois; n0 += kLanes)  // a block's run of each element: one cache line
      kernels.gather_lanes(src + n0 * per_roi, per_roi, std::min(kLanes, g_.rois - n0), elements, out + n0, padded_);
    first_ = cls, count_ = count;
  }

  const T* offset_;
  const DeformPoolGeometry& g_;
  int64_t cells_, padded_;
  int64_t run_;  // classes per copy
  std::vector<T> rows_;
  int64_t first_ = 0, count_ = 0;  // the classes in rows_
};

// The sample grids and windows of each (bin, block of kLanes RoIs). The grid of bin (ph, pw) of RoI n
// depends on the offset class, not on the output channel. The kernels work on windows (window()); a
// grid (get()) is only filled where a lane does not fit its window, just before use. Both read the
// offsets through the calling thread's ClassOffsets (class_offsets()). Their pixel offsets address
// image b at b * batch_stride: the input's, or (a kernel reading one channel's planes from a copy,
// image after image) a plane's.
template <typename T>
class BinGrids {
 public:
  BinGrids(const std::vector<RoiFrame<T>>& frames, const T* offset, const DeformPoolGeometry& g)
      : BinGrids(frames, offset, g, g.channels * g.height * g.width) {}
  BinGrids(const std::vector<RoiFrame<T>>& frames, const T* offset, const DeformPoolGeometry& g, int64_t batch_stride)
      : frames_(lane_frames(frames, g, batch_stride)), offset_(g.has_offset ? offset : nullptr), g_(g),
        blocks_(int64_t(frames_.size())) {}

  // The bin of sample grid `grid` ((offset class * P + ph) * P + pw) in the first channel of its class.
  ChannelBin grid_bin(int64_t grid) const {
    const int64_t P = g_.pooled_size, ph = grid / P % P, pw = grid % P;
    return {ph, pw, 0, grid, bin_cell<T>(grid / (P * P) * g_.channels_each_class, ph, pw, g_)};
  }

  int64_t grids() const { return g_.num_classes * g_.pooled_size * g_.pooled_size; }
  int64_t blocks() const { return blocks_; }

  // Room for `bins` grids that a thread fills itself.
  LaneGrids<T> scratch(int64_t bins) const { return LaneGrids<T>(bins, g_.sample_per_part); }

  // A thread's copy of the offsets of the class it works on.
  ClassOffsets<T> class_offsets() const { return ClassOffsets<T>(offset_, g_, blocks_); }

  // The window of `bin` for the RoIs of `block` (slopes: with bx, by). Threads call it at once.
  void window(const ChannelBin& bin, int64_t block, bool slopes, ClassOffsets<T>& offsets, BinWindow<T>& w) const {
    const T *dx, *dy;
    offsets.lanes(bin, block, dx, dy);
    lane_kernels<T>().window(frames_[block], dx, dy, bin.ph, bin.pw, g_, slopes, w);
  }

  // The grid of `bin` for the RoIs of `block`, filled into slot k of `scratch`.
  LaneGrid<T> get(const ChannelBin& bin, int64_t block, ClassOffsets<T>& offsets, LaneGrids<T>& scratch,
                  int64_t k) const {
    const T *dx, *dy;
    offsets.lanes(bin, block, dx, dy);
    scratch.fill(k, frames_[block], dx, dy, bin, g_);
    return scratch[k];
  }

 private:
  const std::vector<LaneFrames<T>> frames_;
  const T* offset_;  // (R, classes, 2, part, part); null without offsets
  const DeformPoolGeometry& g_;
  int64_t blocks_;
};

}  // namespace dcnviz
