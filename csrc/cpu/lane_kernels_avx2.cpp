// The lane loops of lane_grids.h for AVX2, picked at run time where the CPU has AVX2 but not AVX-512
// (e.g. AMD Zen 2/3): lane vectors of 8 floats or 4 doubles, one register each (the baseline's hold 4
// floats or 2 doubles).
#include "lane_grids.h"

namespace dcnviz {
namespace lanes_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2")
constexpr int kVectorBytes = 32;  // the lane vectors' width (lane_kernels.inc)
#include "lane_kernels.inc"
#pragma GCC pop_options
}  // namespace lanes_avx2

template <typename T>
LaneKernels<T> lane_kernels_avx2() {
  return lanes_avx2::table<T>();
}

template LaneKernels<float> lane_kernels_avx2<float>();
template LaneKernels<double> lane_kernels_avx2<double>();

}  // namespace dcnviz
