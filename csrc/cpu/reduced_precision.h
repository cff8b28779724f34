// bfloat16 and float16 on the CPU: the kernels run in float32 on upcast copies of the tensors (float32
// arithmetic and accumulation, one rounding of each result to the input's type). The copies are one
// pass over the inputs, small next to the kernels; the CUDA kernels instead compute in
// at::opmath_type (float32) on the stored values, which gives the same arithmetic. Where a copy was not
// small (deform_conv2d's bfloat16 columns, deform_psroi_pool's bfloat16 maps and pooled features), the
// kernels convert in cache with widen_bf16 and round_bf16, which give the bits the copies gave.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstring>
#include <optional>

namespace dcnviz {

inline bool reduced_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

inline at::Tensor upcast(const at::Tensor& t) { return t.to(at::kFloat); }

inline std::optional<at::Tensor> upcast(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? std::optional<at::Tensor>(t->to(at::kFloat)) : t;
}

// f rounded to bfloat16 as c10::BFloat16(f) rounds it (to nearest, ties to even; NaN to 0x7FC0), in
// integer steps that vectorise.
inline uint16_t round_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint16_t rounded = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return f != f ? uint16_t(0x7FC0) : rounded;
}

// dst[i] = src[i] rounded to bfloat16, i < n.
inline void round_bf16(const float* __restrict src, c10::BFloat16* __restrict dst_, int64_t n) {
  uint16_t* __restrict dst = reinterpret_cast<uint16_t*>(dst_);
  for (int64_t i = 0; i < n; ++i) dst[i] = round_bf16(src[i]);
}

// dst[i] = src[i] in float32 (exact: bfloat16 is float32's upper half), i < n.
inline void widen_bf16(const c10::BFloat16* __restrict src_, float* __restrict dst, int64_t n) {
  const uint16_t* __restrict src = reinterpret_cast<const uint16_t*>(src_);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = uint32_t(src[i]) << 16;
    std::memcpy(dst + i, &u, sizeof(u));
  }
}

}  // namespace dcnviz
