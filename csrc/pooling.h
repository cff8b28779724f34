// Geometry of the position-sensitive RoI pooling operators (MXNet's PSROIPooling and
// DeformablePSROIPooling, official.md §3.2-3.3), shared by the CPU and CUDA kernels so that the two
// backends cannot drift apart. Each formula is split where a CPU kernel can hoist it out of its loops:
// a RoI's frame depends on the RoI only, a bin's channel and offset cell on (ctop, ph, pw) only.
//
// Template parameters: T is the stored type, A the type computed in (at::opmath_type<T> on CUDA, T on
// CPU). Coordinates are feature-map pixels; the pixel (h, w) of a plane is element h*W + w.
#pragma once
#include <cmath>
#include <cstdint>

#include "sampling.h"

namespace dcnviz {

// Sizes of one psroi_pool call (validated by check_psroi_pool in pooling_checks.cpp).
struct PoolGeometry {
  int64_t batch, channels, height, width;  // input (N, C, H, W)
  int64_t rois;                            // R
  int64_t output_dim, group_size, pooled_size;
  double spatial_scale;
};

// Sizes of one deform_psroi_pool call (validated by check_deform_psroi_pool).
struct DeformPoolGeometry : PoolGeometry {
  int64_t part_size, sample_per_part;
  int64_t num_classes;          // offset classes (1 in no_trans mode)
  int64_t channels_each_class;  // output channels that share one offset class
  double trans_std;
  bool has_offset;
};

template <typename A>
DCNVIZ_HD bool is_finite(A v) {
#if defined(__CUDA_ARCH__)
  return ::isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// A RoI in feature-map pixels: corners rounded half away from zero, scaled, shifted by -shift (0.5 in
// DeformablePSROIPooling, 0 in PSROIPooling); its size is at least 0.1.
template <typename A>
struct RoiFrame {
  int64_t batch;  // -1: unusable RoI (bad batch index, non-finite corner, empty map): zeros, no gradient
  A x_start, y_start, width, height;
  A bin_w, bin_h;  // one of the pooled_size x pooled_size bins
  A sub_w, sub_h;  // deform_psroi_pool: step between the sample_per_part**2 samples of a bin
};

template <typename A, typename T>
DCNVIZ_HD RoiFrame<A> roi_frame(const T* roi_in, const PoolGeometry& g, A shift) {
  RoiFrame<A> f{-1, A(0), A(0), A(0), A(0), A(0), A(0), A(0), A(0)};
  A roi[5];
  for (int k = 0; k < 5; ++k) roi[k] = static_cast<A>(roi_in[k]);
  if (!(roi[0] >= A(0) && roi[0] < A(g.batch)) || g.height == 0 || g.width == 0) return f;
  for (int k = 1; k < 5; ++k)
    if (!is_finite(roi[k])) return f;
  const A s = static_cast<A>(g.spatial_scale);
  f.x_start = round_half_away(roi[1]) * s - shift;
  f.y_start = round_half_away(roi[2]) * s - shift;
  const A width = (round_half_away(roi[3]) + A(1)) * s - shift - f.x_start;
  const A height = (round_half_away(roi[4]) + A(1)) * s - shift - f.y_start;
  f.width = width < A(0.1) ? A(0.1) : width;
  f.height = height < A(0.1) ? A(0.1) : height;
  f.bin_w = f.width / A(g.pooled_size);
  f.bin_h = f.height / A(g.pooled_size);
  f.batch = static_cast<int64_t>(roi[0]);
  return f;
}

template <typename A, typename T>
DCNVIZ_HD RoiFrame<A> psroi_frame(const T* roi, const PoolGeometry& g) {
  return roi_frame<A>(roi, g, A(0));
}

template <typename A, typename T>
DCNVIZ_HD RoiFrame<A> dpsroi_frame(const T* roi, const DeformPoolGeometry& g) {
  RoiFrame<A> f = roi_frame<A>(roi, g, A(0.5));
  f.sub_w = f.bin_w / A(g.sample_per_part);
  f.sub_h = f.bin_h / A(g.sample_per_part);
  return f;
}

// Group cell of bin p along one axis: floor(p*G/P), clamped to [0, G-1] as in the official kernels.
DCNVIZ_HD int64_t group_of(int64_t p, int64_t G, int64_t P) {
  const int64_t q = p * G / P;
  return q < 0 ? 0 : (q > G - 1 ? G - 1 : q);
}

// Output element `index` of an (R, output_dim, P, P) result: RoI n, output channel ctop, bin (ph, pw).
struct OutputBin {
  int64_t n, ctop, ph, pw;
};

DCNVIZ_HD OutputBin output_bin(int64_t index, const PoolGeometry& g) {
  const int64_t P = g.pooled_size;
  return {index / (P * P * g.output_dim), index / (P * P) % g.output_dim, index / P % P, index % P};
}

// Position-sensitive input channel that bin (ph, pw) of output channel ctop reads: the channel of
// (ctop, gh, gw) for its group cell.
DCNVIZ_HD int64_t ps_channel(int64_t ctop, int64_t ph, int64_t pw, const PoolGeometry& g) {
  const int64_t G = g.group_size, P = g.pooled_size;
  return (ctop * G + group_of(ph, G, P)) * G + group_of(pw, G, P);
}

// ---- psroi_pool: a bin averages the whole pixels it overlaps ----

// floor/ceil of a bin edge, clamped to [0, extent] (NaN gives 0). The upper clamp is done on the
// integer: A(extent) rounds up for extents above 2**24 in float32 (e.g. 2**24 + 3 -> 2**24 + 4), so
// comparing in A alone could let an index past the map through.
template <typename A>
DCNVIZ_HD int64_t edge_index(A v, int64_t extent) {
  if (!(v >= A(0))) return 0;
  if (!(v < A(extent))) return extent;  // also keeps the cast below in range
  const int64_t i = static_cast<int64_t>(v);
  return i < extent ? i : extent;
}

// The pixels [h0, h1) x [w0, w1) that bin (ph, pw) of a RoI averages; the same in every channel.
struct Window {
  int64_t h0, h1, w0, w1;
  DCNVIZ_HD bool empty() const { return h1 <= h0 || w1 <= w0; }
  DCNVIZ_HD int64_t area() const { return (h1 - h0) * (w1 - w0); }
};

template <typename A>
DCNVIZ_HD Window make_window(const RoiFrame<A>& f, int64_t ph, int64_t pw, const PoolGeometry& g) {
  if (f.batch < 0) return {0, 0, 0, 0};
  return {edge_index(::floor(A(ph) * f.bin_h + f.y_start), g.height),
          edge_index(::ceil(A(ph + 1) * f.bin_h + f.y_start), g.height),
          edge_index(::floor(A(pw) * f.bin_w + f.x_start), g.width),
          edge_index(::ceil(A(pw + 1) * f.bin_w + f.x_start), g.width)};
}

// ---- deform_psroi_pool: a bin averages sample_per_part**2 bilinear samples ----

// Where output bin (ctop, ph, pw) reads, whatever the RoI: its input channel and its offset cell.
struct BinCell {
  int64_t channel;  // position-sensitive input channel
  int64_t offset;   // element of RoI 0's offsets holding the bin's dx (dy is part_size**2 further)
};

template <typename A>
DCNVIZ_HD BinCell bin_cell(int64_t ctop, int64_t ph, int64_t pw, const DeformPoolGeometry& g) {
  const int64_t P = g.pooled_size, K = g.part_size;
  // The official kernel computes the part cell in floating point; clamp against rounding. The value
  // is >= 0, so truncation is floor.
  const int64_t part_h = static_cast<int64_t>(A(ph) / A(P) * A(K)), part_w = static_cast<int64_t>(A(pw) / A(P) * A(K));
  const int64_t class_id = ctop / g.channels_each_class;
  return {ps_channel(ctop, ph, pw, g),
          (class_id * 2 * K + (part_h < K - 1 ? part_h : K - 1)) * K + (part_w < K - 1 ? part_w : K - 1)};
}

// Offset element holding the dx of bin cell `cell` of RoI n.
DCNVIZ_HD int64_t offset_index(int64_t n, const BinCell& cell, const DeformPoolGeometry& g) {
  return n * g.num_classes * 2 * g.part_size * g.part_size + cell.offset;
}

// The first sample of bin (ph, pw) of RoI n, moved by its offset; samples step by (f.sub_h, f.sub_w).
template <typename A>
struct Bin {
  A hstart, wstart;
};

template <typename A, typename T>
DCNVIZ_HD Bin<A> make_bin(const RoiFrame<A>& f, const T* offset, int64_t n, const BinCell& cell, int64_t ph,
                          int64_t pw, const DeformPoolGeometry& g) {
  Bin<A> b{A(ph) * f.bin_h + f.y_start, A(pw) * f.bin_w + f.x_start};
  if (g.has_offset) {
    const A trans_std = static_cast<A>(g.trans_std);
    const int64_t dx = offset_index(n, cell, g);
    b.wstart += static_cast<A>(offset[dx]) * trans_std * f.width;
    b.hstart += static_cast<A>(offset[dx + g.part_size * g.part_size]) * trans_std * f.height;
  }
  return b;
}

// Row (ih) and column (iw) of the bin's samples, ih, iw in [0, sample_per_part). A sample lies on the
// map when both its row and its column do; samples are visited rows outer, columns inner.
template <typename A>
DCNVIZ_HD AxisSample<A> sample_row(const RoiFrame<A>& f, const Bin<A>& b, int64_t ih, const DeformPoolGeometry& g) {
  return dpsroi_axis(b.hstart + A(ih) * f.sub_h, g.height);
}

template <typename A>
DCNVIZ_HD AxisSample<A> sample_col(const RoiFrame<A>& f, const Bin<A>& b, int64_t iw, const DeformPoolGeometry& g) {
  return dpsroi_axis(b.wstart + A(iw) * f.sub_w, g.width);
}

// Calls fn(corners) for every sample of the bin that lies on the map, in order; returns how many.
template <typename A, typename Fn>
DCNVIZ_HD int64_t for_each_sample(const RoiFrame<A>& f, const Bin<A>& b, const DeformPoolGeometry& g, Fn&& fn) {
  int64_t count = 0;
  for (int64_t ih = 0; ih < g.sample_per_part; ++ih) {
    const AxisSample<A> y = sample_row(f, b, ih, g);
    if (!y.valid) continue;
    for (int64_t iw = 0; iw < g.sample_per_part; ++iw) {
      const AxisSample<A> x = sample_col(f, b, iw, g);
      if (!x.valid) continue;
      fn(dpsroi_corners(y, x, g.width));
      ++count;
    }
  }
  return count;
}

// How many samples for_each_sample visits: valid rows times valid columns.
template <typename A>
DCNVIZ_HD int64_t sample_count(const RoiFrame<A>& f, const Bin<A>& b, const DeformPoolGeometry& g) {
  int64_t rows = 0, cols = 0;
  for (int64_t i = 0; i < g.sample_per_part; ++i) {
    rows += sample_row(f, b, i, g).valid;
    cols += sample_col(f, b, i, g).valid;
  }
  return rows * cols;
}

// Bilinear value of one sample of plane x.
template <typename A, typename T>
DCNVIZ_HD A bilinear(const Corners<A>& c, const T* x) {
  return c.w00() * A(x[c.i00]) + c.w01() * A(x[c.i00 + c.dx]) + c.w10() * A(x[c.i00 + c.dy]) +
         c.w11() * A(x[c.i00 + c.dy + c.dx]);
}

// Adds the derivative of one sample's bilinear value along x and along y (zero at an integer or
// clamped coordinate, where floor == ceil).
template <typename A, typename T>
DCNVIZ_HD void add_bilinear_slopes(const Corners<A>& c, const T* x, A& dvdx, A& dvdy) {
  const A v00 = A(x[c.i00]), v01 = A(x[c.i00 + c.dx]), v10 = A(x[c.i00 + c.dy]), v11 = A(x[c.i00 + c.dy + c.dx]);
  dvdx += (A(1) - c.ly) * (v01 - v00) + c.ly * (v11 - v10);
  dvdy += (A(1) - c.lx) * (v10 - v00) + c.lx * (v11 - v01);
}

}  // namespace dcnviz
