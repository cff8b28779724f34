// The one run-time choice of instruction set for the CPU kernels' hand-picked paths (deform_psroi_pool's
// lane loops, deform_conv2d's streamed column stores): AVX-512 where the CPU has AVX512F and AVX512DQ,
// unless DCNVIZ_CPU_ISA=baseline. Both choices give the same bits (the build turns off FMA contraction);
// the tests compare them.
#pragma once
#include <cstdlib>
#include <string>

namespace dcnviz {

inline bool use_avx512() {
  static const bool avx512 = [] {
    const char* isa = std::getenv("DCNVIZ_CPU_ISA");
    const bool baseline = isa != nullptr && std::string(isa) == "baseline";
    return !baseline && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  }();
  return avx512;
}

}  // namespace dcnviz
