// bfloat16 and float16 on the CPU: the kernels run in float32 on upcast copies of the tensors (float32
// arithmetic and accumulation, one rounding of each result to the input's type). The copies are one
// pass over the inputs, small next to the kernels; the CUDA kernels instead compute in
// at::opmath_type (float32) on the stored values, which gives the same arithmetic.
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace dcnviz {

inline bool reduced_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

inline at::Tensor upcast(const at::Tensor& t) { return t.to(at::kFloat); }

inline std::optional<at::Tensor> upcast(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? std::optional<at::Tensor>(t->to(at::kFloat)) : t;
}

}  // namespace dcnviz
