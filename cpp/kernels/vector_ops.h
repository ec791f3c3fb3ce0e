// Vector operations of the transformer forward pass, in f32, with Highway SIMD
// (vector_ops-inl.h, dispatched at run time to the best target of this CPU).
// Each function works on one row (one token, or one head of one token); the
// model loops over rows and threads. Numerics follow transformers' float32
// LlamaForCausalLM / BitNetForCausalLM (see each function).
#pragma once
#include <cstddef>
#include <cstdint>

namespace ternlm {

// out[i] = x[i] * (1 / sqrt(mean(x²) + eps)) * weight[i]; x, weight, out: [n]. out may be x.
void RmsNorm(const float* x, const float* weight, size_t n, float eps, float* out);

// Rotate-half RoPE (Hugging Face layout: element i pairs with i + head_dim/2, NOT
// interleaved pairs) on one head vector x [head_dim], in place:
//   x[i]      = x[i] * cos[i] - x[i+h] * sin[i]
//   x[i+h]    = x[i+h] * cos[i] + x[i] * sin[i]          for i < h = head_dim/2
// cos, sin: [head_dim/2] for this position.
void RopeRotateHalf(float* x, const float* cos, const float* sin, size_t head_dim);

// y[i] += a * x[i]
void Axpy(float a, const float* x, size_t n, float* y);

// x[i] += y[i]  (residual add)
void AddInPlace(const float* y, size_t n, float* x);

// ---- attention over one KV head's cache (GQA: the `group` query heads that share it)
//
// Keys are stored in blocks of kKeyBlock positions, each block [head_dim][kKeyBlock]
// (dimension-major): the scores of a block's positions for one query are kKeyBlock-wide
// multiply-adds with no horizontal sums. Values are rows [position][head_dim].
constexpr size_t kKeyBlock = 16;
inline size_t KeyOffset(size_t pos, size_t d, size_t head_dim) {
  return ((pos / kKeyBlock) * head_dim + d) * kKeyBlock + pos % kKeyBlock;
}

// Attention of `tokens` consecutive query tokens x `group` query heads ("rows", token-major)
// over the cached positions [begin, end) of one KV head; token i sees positions
// [0, first_len + i) (causal). begin is a multiple of kKeyBlock. For each row r, with s_t =
// scale * q_r . K[t] over its visible t in [begin, end):
//   row_max[r] = max_t s_t,  row_sum[r] = sum_t e^(s_t - row_max[r]),
//   out_r      = sum_t e^(s_t - row_max[r]) V[t]      (not yet divided by row_sum)
// and row_max = -inf, row_sum = 0, out_r = 0 where no position is visible. One call over
// [0, end) then out_r / row_sum[r] is softmax attention; calls over disjoint ranges combine
// (AttendCombine). Each key block and value row is read once for all rows.
struct AttendArgs {
  const float* q;          // row (i, g) at q + i * q_stride + g * head_dim
  size_t q_stride, tokens, group, first_len;
  const void* keys;        // this KV head's key blocks (from position 0)
  const void* values;      // this KV head's value rows (from position 0)
  bool f16;                // keys and values are IEEE half (uint16_t bits), else f32
  size_t begin, end, head_dim;
  float scale;
  float* scores;           // scratch: tokens * group rows of AttendScoresStride(begin, end)
  float* out;              // row (i, g) at out + i * out_stride + g * head_dim
  size_t out_stride;
  float* row_max;          // [tokens * group]
  float* row_sum;          // [tokens * group]
};
inline size_t AttendScoresStride(size_t begin, size_t end) {
  return (end - begin + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
}
void AttendPartial(const AttendArgs& args);

// Gated FFN activations; gate, up, out: [n]; out may alias gate.
//   SiluMul:  out = gate * sigmoid(gate) * up            (Llama, hidden_act "silu")
//   Relu2Mul: out = max(gate, 0)² * up                   (BitNet, hidden_act "relu2")
void SiluMul(const float* gate, const float* up, size_t n, float* out);
void Relu2Mul(const float* gate, const float* up, size_t n, float* out);

// Index of the largest x[i] (the first one on ties).
size_t Argmax(const float* x, size_t n);

}  // namespace ternlm
