// The lane loops of lane_grids.h for the build's default instruction set (x86-64 baseline; also
// what DCNVIZ_CPU_ISA=baseline picks).
#include "lane_grids.h"

namespace dcnviz {
namespace lanes_default {
constexpr int kVectorBytes = 16;  // the lane vectors' width (lane_kernels.inc)
#include "lane_kernels.inc"
}  // namespace lanes_default

template <typename T>
LaneKernels<T> lane_kernels_default() {
  return lanes_default::table<T>();
}

template LaneKernels<float> lane_kernels_default<float>();
template LaneKernels<double> lane_kernels_default<double>();

}  // namespace dcnviz
