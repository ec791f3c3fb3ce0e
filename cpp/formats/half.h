// Scalar IEEE half (fp16) and bfloat16 <-> float conversions, round to nearest even.
// Used off the hot path (building matrices, the f16 KV cache's stores); the kernels widen
// whole vectors with Highway instead.
#pragma once
#include <cstdint>

namespace ternlm {

// Overflow (|f| rounding to >= 65520) gives +-Inf; NaN stays a (quiet) NaN.
uint16_t F16FromF32(float f);
float F32FromF16(uint16_t h);
// NaN becomes a quiet NaN; everything else rounds to nearest even (overflow gives Inf).
uint16_t BF16FromF32(float f);
// Exact: a bfloat16 is the upper half of a float.
inline float F32FromBF16(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

}  // namespace ternlm
