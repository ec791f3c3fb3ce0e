// Activations prepared once per MatMul call, shared by every row task.
//   ternary: q int8 [n, padded_cols] per row (QuantizeActivationsInt8), sum(q) and 1/s_x per row
//   int4:    q int8 [n, padded_cols] per block of 32, 1/s_b per block, f32 sum of x per group
//   int8/q6: q int8 [n, padded_cols] per block of 32, 1/s_b per block, sum(q) per 16
//   bf16/f32: x copied to [n, padded_cols] f32 with zero padding
// A model trained with 4-bit activations (ModelConfig.activation_bits) asks MatMul for
// ActivationQuant::kInt4*: then q holds each row's 4-bit codes (QuantizeActivationsInt4,
// one unit per row) and every format's extras are derived from them (kernels/matmul.cc).
// Buffers live in thread-local scratch and are reused, so decode allocates nothing.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ternlm {

struct PreparedActivations {
  size_t n = 0;
  size_t stride = 0;               // padded_cols: elements per row of q / xf
  const int8_t* q = nullptr;       // [n, stride]
  const int32_t* q_sum = nullptr;  // ternary: [n]
  const float* inv_scale = nullptr;  // ternary: [n] (1/s_x); int4, int8, q6: [n, stride/32] (1/s_b)
  const int32_t* sub_sum = nullptr;  // int8, q6: [n, stride/16] sum of q per 16 inputs
  const float* group_sum = nullptr;  // int4: [n, stride/group] f32 sum of the dequantized int8 x per group
  const float* xf = nullptr;       // bf16/f32: [n, stride]
};

// y[x, r] written for r in [r0, r1): out[x * y_stride + r].
struct MatMulOutput {
  float* y = nullptr;
  size_t y_stride = 0;
};

// The int8 activation quantization of the ternary, int4, int8 and q6 matmuls, absmax over
// the n values (a row for ternary, a block of 32 for the others): s = 127 / max(max|x|, 1e-5),
// q = clamp(round_half_even(x * s), -128, 127). Returns 1/s; writes n values.
float QuantizeActivationsInt8(const float* x, size_t n, int8_t* q);

// How a MatMul quantizes its activations: as the weight format's kernel does (kFormat,
// above), or to 4 bits per row of a layer input (QuEST; distill's 4-bit modes).
enum class ActivationQuant { kFormat, kInt4Absmax, kInt4Gaussian };

// The MSE-optimal clip of a 16-level uniform grid for a unit Gaussian: alpha / sigma.
constexpr float kGaussianClip4 = 2.513930578568423f;

// 4-bit activations of one row of n values (python/ternlm/distill/quest.py is the torch
// twin; the codes agree bit for bit given the same x):
//   alpha = max|x|                                       (absmax), or
//   alpha = float(kGaussianClip4 * sqrt(sum(x^2) / n))   (gaussian: in float64, one rounding)
//   s = 7.5 / max(alpha, 1e-5)                           (f32)
//   q = clamp(2 floor(x s) + 1, -15, 15)                 odd codes: the levels k - 7.5, k = 0..15
//   x_hat = q * u,  u = 1 / (2 s)                        (returned)
// so [-alpha, alpha] holds 16 levels 2 alpha / 15 apart and x is rounded to the nearest
// (ties upward). The float64 sum and root are exact to far below a float32 ulp, so two
// summation orders (or a root within an ulp of float64) give the same alpha unless they
// straddle a float32 rounding boundary (about 1e-9 of rows).
float QuantizeActivationsInt4(const float* x, size_t n, bool gaussian, int8_t* q);

}  // namespace ternlm
