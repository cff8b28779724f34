// The geometry of one deform_conv2d call, shared by the CPU kernels, the CUDA kernels and the checks
// (conv_checks.h); it includes no torch header, so the CUDA kernel files can use it.
#pragma once
#include <cstdint>

#include "sampling.h"

namespace dcnviz {

// Shapes and hyper-parameters of one call; all sizes int64 so that no index product overflows.
struct ConvGeometry {
  int64_t N, C, H, W, F, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, G, DG;
  DCNVIZ_HD int64_t K() const { return kh * kw; }
  DCNVIZ_HD int64_t P() const { return Ho * Wo; }
  DCNVIZ_HD int64_t Cg() const { return C / G; }
  DCNVIZ_HD int64_t Fg() const { return F / G; }
  DCNVIZ_HD int64_t Cdg() const { return C / DG; }
};

}  // namespace dcnviz
