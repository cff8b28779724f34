// Greedy NMS of the official py_nms (lib/nms/nms.py), for dcnviz.models.boxes.nms: as a numpy loop,
// the proposal layer's NMS (6000 boxes down to 300; 12000 to 2000 for FPN) took ~30 ms an image, a
// quarter of `dcnviz eval`'s time with the bundled R-FCN models.
//
// The arithmetic is numpy's on the boxes' dtype, step for step, so the kept boxes are the ones the
// numpy code keeps, bit for bit: every operation in T (float32 or float64) with no contraction, "+1"
// widths, IoU = inter / (area_i + area_j - inter), and a box dropped unless IoU <= thresh (thresh
// rounded to T first, as numpy compares a float32 array with a Python float), so a NaN IoU drops it.
// std::min/std::max differ from np.minimum/np.maximum only for NaN, and a NaN coordinate makes its
// box's area, hence its every IoU, NaN: the decisions are the same.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace dcnviz {
namespace {

// Kept box indices in visiting order (``order``: box indices by decreasing score), at most max_keep
// (< 0: no limit). As numpy's ``order = rest[iou <= thresh]``, each kept box compacts the boxes still in
// the running: they stay in contiguous columns, so the IoU loop has no branch and vectorises.
template <typename T>
std::vector<int64_t> greedy_nms(const T* boxes, const int64_t* order, int64_t n, T thresh, int64_t max_keep) {
  const int64_t limit = max_keep < 0 ? n : std::min(max_keep, n);
  std::vector<T> x1(n), y1(n), x2(n), y2(n), area(n);
  std::vector<int64_t> id(order, order + n);
  std::vector<uint8_t> stays(n);
  for (int64_t a = 0; a < n; ++a) {
    const T* b = boxes + order[a] * 4;
    x1[a] = b[0], y1[a] = b[1], x2[a] = b[2], y2[a] = b[3];
    area[a] = (x2[a] - x1[a] + T(1)) * (y2[a] - y1[a] + T(1));
  }
  std::vector<int64_t> keep;
  for (int64_t m = n; m > 0 && int64_t(keep.size()) < limit;) {
    keep.push_back(id[0]);
    const T kx1 = x1[0], ky1 = y1[0], kx2 = x2[0], ky2 = y2[0], karea = area[0];
    for (int64_t c = 1; c < m; ++c) {
      const T w = std::max(T(0), std::min(kx2, x2[c]) - std::max(kx1, x1[c]) + T(1));
      const T h = std::max(T(0), std::min(ky2, y2[c]) - std::max(ky1, y1[c]) + T(1));
      const T inter = w * h;
      stays[c] = inter / (karea + area[c] - inter) <= thresh;
    }
    int64_t k = 0;
    for (int64_t c = 1; c < m; ++c) {  // k <= c - 1: every write lands on an entry already read
      x1[k] = x1[c], y1[k] = y1[c], x2[k] = x2[c], y2[k] = y2[c], area[k] = area[c], id[k] = id[c];
      k += stays[c];
    }
    m = k;
  }
  return keep;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& order, double thresh, int64_t max_keep) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "_nms: boxes must have shape (N, 4)");
  TORCH_CHECK(order.dim() == 1 && order.scalar_type() == at::kLong, "_nms: order must be a 1-D int64 tensor");
  const int64_t n = order.size(0);
  const auto b = boxes.contiguous();
  const auto o = order.contiguous();
  const int64_t* idx = o.data_ptr<int64_t>();
  for (int64_t a = 0; a < n; ++a)
    TORCH_CHECK(idx[a] >= 0 && idx[a] < boxes.size(0), "_nms: order holds ", idx[a], ", not a box index");
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "_nms", [&] {
    keep = greedy_nms<scalar_t>(b.data_ptr<scalar_t>(), idx, n, static_cast<scalar_t>(thresh), max_keep);
  });
  at::Tensor out = at::empty({int64_t(keep.size())}, order.options());
  if (!keep.empty()) std::memcpy(out.data_ptr<int64_t>(), keep.data(), keep.size() * sizeof(int64_t));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnviz, CPU, m) { m.impl("_nms", &nms_cpu); }

}  // namespace dcnviz
