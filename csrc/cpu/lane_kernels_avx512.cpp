// The lane loops of lane_grids.h for AVX-512, picked at run time where the CPU has AVX512F and
// AVX512DQ: one 16-lane vector per register, masks in mask registers, gathers for add_slopes.
#include <immintrin.h>

#include "lane_grids.h"
#include "transpose.h"

namespace dcnviz {
namespace lanes_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,tune=icelake-server,prefer-vector-width=512")
constexpr int kVectorBytes = 64;  // the lane vectors' width (lane_kernels.inc)
#ifdef DCNVIZ_TILE_TRANSPOSE
#define DCNVIZ_LANE_TILES  // gather_lanes transposes whole tiles in registers (transpose_tile16)
#endif
#include "lane_kernels.inc"
#undef DCNVIZ_LANE_TILES
#pragma GCC pop_options
}  // namespace lanes_avx512

template <typename T>
LaneKernels<T> lane_kernels_avx512() {
  return lanes_avx512::table<T>();
}

template LaneKernels<float> lane_kernels_avx512<float>();
template LaneKernels<double> lane_kernels_avx512<double>();

}  // namespace dcnviz
