// Overflow-checked size arithmetic for the argument checks (host code only). Sizes come from tensor
// dims and from plain int64 arguments of direct torch.ops calls; a product of them can exceed int64
// (a dim next to a zero-sized one, or a crafted group_size), and a wrapped product could pass an
// equality check and send a kernel outside its buffers. Every size product and sum that a check or a
// kernel relies on goes through these, which refuse the call with a RuntimeError instead.
#pragma once
#include <c10/util/Exception.h>

#include <cstdint>

namespace dcnviz {

inline int64_t checked_mul(int64_t a, int64_t b, const char* op) {
  int64_t r = 0;
  TORCH_CHECK(!__builtin_mul_overflow(a, b, &r), op, ": size product ", a, " * ", b, " overflows int64");
  return r;
}

inline int64_t checked_mul(int64_t a, int64_t b, int64_t c, const char* op) {
  return checked_mul(checked_mul(a, b, op), c, op);
}

inline int64_t checked_mul(int64_t a, int64_t b, int64_t c, int64_t d, const char* op) {
  return checked_mul(checked_mul(a, b, c, op), d, op);
}

inline int64_t checked_add(int64_t a, int64_t b, const char* op) {
  int64_t r = 0;
  TORCH_CHECK(!__builtin_add_overflow(a, b, &r), op, ": size sum ", a, " + ", b, " overflows int64");
  return r;
}

}  // namespace dcnviz
