// Bilinear sampling rules of the official MXNet operators, shared by the CPU and CUDA kernels.
// Each rule lives here once so that the two backends cannot drift apart.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DCNVIZ_HD __host__ __device__ __forceinline__
#else
#define DCNVIZ_HD inline
#endif

namespace dcnviz {

// The four corners and weights of one sample; v = w00*x[i00] + w01*x[i00+dx] + w10*x[i00+dy] + w11*x[i00+dy+dx].
// An invalid sample has all weights zero and i00 = dx = dy = 0, so reading it is always in bounds.
template <typename T>
struct Corners {
  int64_t i00;
  int64_t dx;  // 0 or 1: column step to the right corner (0 when clamped to the last column)
  int64_t dy;  // 0 or width: row step to the lower corner (0 when clamped to the last row)
  T ly, lx;    // fractional parts; the weights below follow from them
  bool valid;
  DCNVIZ_HD T w00() const { return (T(1) - ly) * (T(1) - lx); }
  DCNVIZ_HD T w01() const { return (T(1) - ly) * lx; }
  DCNVIZ_HD T w10() const { return ly * (T(1) - lx); }
  DCNVIZ_HD T w11() const { return ly * lx; }
};

// DeformableConvolution (DCNv1, deformable_im2col.cuh): a sample is zero when y < 0, x < 0, y >= H or
// x >= W (NaN fails every comparison and is zero too). Inside, corners are floor-based; once
// floor(y) >= H-1 the row is clamped to H-1 with zero fractional weight (edge replicated, not blended
// with zero), likewise for x. At an integer y the corners are (y, y+1): a one-sided difference.
template <typename T>
DCNVIZ_HD Corners<T> dcn_v1_corners(T y, T x, int64_t H, int64_t W) {
  Corners<T> c{0, 0, 0, T(0), T(0), false};
  if (!(y >= T(0) && x >= T(0) && y < T(H) && x < T(W))) return c;
  int64_t y0 = static_cast<int64_t>(::floor(y));
  int64_t x0 = static_cast<int64_t>(::floor(x));
  if (y0 >= H - 1) {
    y0 = H - 1;
    c.ly = T(0);
  } else {
    c.dy = W;
    c.ly = y - T(y0);
  }
  if (x0 >= W - 1) {
    x0 = W - 1;
    c.lx = T(0);
  } else {
    c.dx = 1;
    c.lx = x - T(x0);
  }
  c.i00 = y0 * W + x0;
  c.valid = true;
  return c;
}

// One axis of a DeformablePSROIPooling sample; dpsroi_corners below combines two of them.
template <typename T>
struct AxisSample {
  int64_t i0;    // floor of the clamped coordinate
  int64_t step;  // ceil - floor: 0 at an integer (or clamped) coordinate, else 1
  T frac;        // clamped coordinate - i0
  bool valid;
};

// DeformablePSROIPooling (deformable_psroi_pooling.cu), along an axis of n pixels (n >= 1): a
// coordinate outside [-0.5, n-0.5] is invalid (NaN too); otherwise it is clamped to [0, n-1] and
// interpolated between floor and ceil, so an integer coordinate reads a single pixel.
template <typename T>
DCNVIZ_HD AxisSample<T> dpsroi_axis(T v, int64_t n) {
  AxisSample<T> a{0, 0, T(0), false};
  if (!(v >= T(-0.5) && v <= T(n) - T(0.5))) return a;
  v = v < T(0) ? T(0) : (v > T(n - 1) ? T(n - 1) : v);
  // v >= 0 here, so truncation is floor and ceil is floor + (v > floor): the official floor/ceil
  // exactly, without two libm calls per sample on CPUs that lack a rounding instruction (x86-64
  // before SSE4.1, the default target).
  a.i0 = static_cast<int64_t>(v);
  // T(n - 1) rounds up to n for some n above 2**24 in float32: clamp the index itself, so the last
  // pixel is read, never the one past it.
  if (a.i0 > n - 1) {
    a.i0 = n - 1;
    a.step = 0;
    a.frac = T(0);
    a.valid = true;
    return a;
  }
  a.step = T(a.i0) < v ? 1 : 0;
  a.frac = v - T(a.i0);
  a.valid = true;
  return a;
}

// A sample is skipped (not counted) unless both axes are valid. Both axes are separable, so a bin's
// kernel may compute each row and column once and combine them here.
template <typename T>
DCNVIZ_HD Corners<T> dpsroi_corners(const AxisSample<T>& y, const AxisSample<T>& x, int64_t W) {
  Corners<T> c{0, 0, 0, T(0), T(0), false};
  if (!(y.valid && x.valid)) return c;
  c.i00 = y.i0 * W + x.i0;
  c.dx = x.step;
  c.dy = y.step * W;
  c.lx = x.frac;
  c.ly = y.frac;
  c.valid = true;
  return c;
}

template <typename T>
DCNVIZ_HD Corners<T> dpsroi_corners(T y, T x, int64_t H, int64_t W) {
  return dpsroi_corners(dpsroi_axis(y, H), dpsroi_axis(x, W), W);
}

// C's round(): half away from zero, as the official kernels round RoI corners (torch.round would
// round half to even). Computed in the RoI's own precision, as the official kernels do.
template <typename T>
DCNVIZ_HD T round_half_away(T v) {
  return ::round(v);
}

}  // namespace dcnviz
