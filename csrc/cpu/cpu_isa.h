// The one run-time choice of instruction set for the CPU kernels' hand-picked paths (deform_psroi_pool's
// lane loops, deform_conv2d's streamed column stores and backward loops): AVX-512 where the CPU has
// AVX512F and AVX512DQ, else AVX2 where it has that. DCNVIZ_CPU_ISA=avx2 or =baseline caps the choice,
// so that one AVX-512 machine can run (and the tests compare) all three. Every choice gives the same
// bits (the build turns off FMA contraction).
#pragma once
#include <cstdlib>
#include <string>

namespace dcnviz {

// DCNVIZ_CPU_ISA: "baseline", "avx2", anything else (or unset) no cap.
inline const std::string& isa_cap() {
  static const std::string cap = [] {
    const char* isa = std::getenv("DCNVIZ_CPU_ISA");
    return std::string(isa == nullptr ? "" : isa);
  }();
  return cap;
}

inline bool use_avx512() {
  static const bool avx512 = isa_cap() != "baseline" && isa_cap() != "avx2" &&
                             __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return avx512;
}

// AVX2, where use_avx512() is false (e.g. AMD Zen 2/3, or under DCNVIZ_CPU_ISA=avx2).
inline bool use_avx2() {
  static const bool avx2 = isa_cap() != "baseline" && __builtin_cpu_supports("avx2");
  return avx2;
}

}  // namespace dcnviz
