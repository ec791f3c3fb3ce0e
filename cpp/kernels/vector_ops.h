// Vector operations of the transformer forward pass, in f32, with Highway SIMD
// (vector_ops-inl.h, dispatched at run time to the best target of this CPU).
// Each function works on one row (one token, or one head of one token); the
// model loops over rows and threads. Numerics follow transformers' float32
// LlamaForCausalLM / BitNetForCausalLM (see each function). Attention has its own
// unit, kernels/attention.h.
#pragma once
#include <cstddef>

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

// Gated FFN activations; gate, up, out: [n]; out may alias gate.
//   SiluMul:  out = gate * sigmoid(gate) * up            (Llama, hidden_act "silu")
//   Relu2Mul: out = max(gate, 0)² * up                   (BitNet, hidden_act "relu2")
void SiluMul(const float* gate, const float* up, size_t n, float* out);
void Relu2Mul(const float* gate, const float* up, size_t n, float* out);

// Index of the largest x[i] (the first one on ties).
size_t Argmax(const float* x, size_t n);

}  // namespace ternlm
