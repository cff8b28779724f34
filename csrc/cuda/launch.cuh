// Launch geometry of the CUDA kernels: 1-D grids of kThreads threads, each thread striding
// over the elements (torchvision's CUDA_1D_KERNEL_LOOP), so any element count fits a capped grid.
#pragma once
#include <algorithm>
#include <cstdint>

namespace dcnviz {

constexpr int kThreads = 256;

inline int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 16); }

}  // namespace dcnviz

#define DCNVIZ_KERNEL_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)
