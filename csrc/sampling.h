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

// DeformablePSROIPooling (deformable_psroi_pooling.cu): a sample outside [-0.5, W-0.5] x [-0.5, H-0.5]
// is skipped (not counted); otherwise it is clamped to [0, W-1] x [0, H-1] and interpolated between
// floor and ceil, so an integer coordinate reads a single row or column.
template <typename T>
DCNVIZ_HD Corners<T> dpsroi_corners(T y, T x, int64_t H, int64_t W) {
  Corners<T> c{0, 0, 0, T(0), T(0), false};
  if (!(x >= T(-0.5) && x <= T(W) - T(0.5) && y >= T(-0.5) && y <= T(H) - T(0.5))) return c;
  x = x < T(0) ? T(0) : (x > T(W - 1) ? T(W - 1) : x);
  y = y < T(0) ? T(0) : (y > T(H - 1) ? T(H - 1) : y);
  const int64_t x0 = static_cast<int64_t>(::floor(x)), x1 = static_cast<int64_t>(::ceil(x));
  const int64_t y0 = static_cast<int64_t>(::floor(y)), y1 = static_cast<int64_t>(::ceil(y));
  c.i00 = y0 * W + x0;
  c.dx = x1 - x0;
  c.dy = (y1 - y0) * W;
  c.lx = x - T(x0);
  c.ly = y - T(y0);
  c.valid = true;
  return c;
}

// C's round(): half away from zero, as the official kernels round RoI corners (torch.round would
// round half to even). Computed in the RoI's own precision, as the official kernels do.
template <typename T>
DCNVIZ_HD T round_half_away(T v) {
  return ::round(v);
}

}  // namespace dcnviz
