// The one run-time choice of instruction set for the CPU kernels' hand-picked paths (deform_psroi_pool's
// lane loops, deform_conv2d's streamed column stores and backward loops): AVX-512 where the CPU has
// AVX512F and AVX512DQ, else AVX2 where it has that, unless DCNVIZ_CPU_ISA=baseline. Every choice gives
// the same bits (the build turns off FMA contraction); the tests compare them.
#pragma once
#include <cstdlib>
#include <string>

namespace dcnviz {

inline bool baseline_only() {
  static const bool baseline = [] {
    const char* isa = std::getenv("DCNVIZ_CPU_ISA");
    return isa != nullptr && std::string(isa) == "baseline";
  }();
  return baseline;
}

inline bool use_avx512() {
  static const bool avx512 =
      !baseline_only() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return avx512;
}

// AVX2, where use_avx512() is false (e.g. AMD Zen 2/3).
inline bool use_avx2() {
  static const bool avx2 = !baseline_only() && __builtin_cpu_supports("avx2");
  return avx2;
}

}  // namespace dcnviz
