// The forward pass, top to bottom like the math (transformers' LlamaDecoderLayer /
// BitNetDecoderLayer):
//   x = embed[token]
//   per layer:  h = rmsnorm(x)·attn_norm;  q|k|v = h·Wqkvᵀ;  rope(q, k);  cache k, v
//               a = attention(q, K, V)  [BitNet: a = rmsnorm(a)·attn_sub_norm]
//               x += a·Woᵀ
//               h = rmsnorm(x)·ffn_norm;  g|u = h·Wgate_upᵀ
//               f = silu(g)·u (Llama) | relu(g)²·u (BitNet)  [BitNet: f = rmsnorm(f)·ffn_sub_norm]
//               x += f·Wdownᵀ
//   logits = (rmsnorm(x)·norm)·Wheadᵀ
#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/matmul.h"
#include "kernels/vector_ops.h"

namespace ternlm {

size_t FusedProjection::nbytes() const {
  size_t b = 0;
  for (const QuantizedMatrix& m : parts) b += m.nbytes();
  return b;
}

size_t Weights::nbytes() const {
  size_t b = embed.nbytes() + lm_head.nbytes() + norm.size() * 4;
  for (const LayerWeights& l : layers)
    b += l.qkv.nbytes() + l.o.nbytes() + l.gate_up.nbytes() + l.down.nbytes() +
         4 * (l.attn_norm.size() + l.attn_sub_norm.size() + l.ffn_norm.size() + l.ffn_sub_norm.size());
  return b;
}

namespace {

RunState::Buffer Allocate(size_t count, size_t& total) {
  total += count * sizeof(float);
  return hwy::AllocateAligned<float>(std::max<size_t>(count, 1));
}

size_t MaxPartRows(const FusedProjection& p) {
  if (p.parts.size() <= 1) return 0;  // fused: MatMul writes straight into the row layout
  size_t r = 0;
  for (const QuantizedMatrix& m : p.parts) r = std::max(r, m.rows());
  return r;
}

}  // namespace

Transformer::Transformer(const ModelConfig& config, Weights weights, size_t context,
                         ThreadPool& pool)
    : config_(config), w_(std::move(weights)), pool_(pool) {
  config_.Validate();
  if (context == 0) throw std::invalid_argument("context must be >= 1");
  const ModelConfig& c = config_;
  const size_t chunk = std::min(kMaxChunk, context);
  size_t proj_cols = c.hidden_size;
  for (const LayerWeights& l : w_.layers)
    proj_cols = std::max({proj_cols, MaxPartRows(l.qkv), MaxPartRows(l.gate_up)});
  size_t& total = s_.nbytes;
  s_.chunk = chunk;
  s_.x = Allocate(chunk * c.hidden_size, total);
  s_.xb = Allocate(chunk * c.hidden_size, total);
  s_.qkv = Allocate(chunk * (c.q_dim() + 2 * c.kv_dim()), total);
  s_.att = Allocate(chunk * c.q_dim(), total);
  s_.gate_up = Allocate(chunk * 2 * c.intermediate_size, total);
  s_.act = Allocate(chunk * c.intermediate_size, total);
  s_.proj = Allocate(chunk * proj_cols, total);
  s_.scores_per_thread = (c.num_heads / c.num_kv_heads) * context;
  s_.scores = Allocate(pool.num_threads() * s_.scores_per_thread, total);
  s_.logits = Allocate(c.vocab_size, total);
  const size_t half = c.head_dim / 2;
  s_.rope_cos = Allocate(context * half, total);
  s_.rope_sin = Allocate(context * half, total);
  s_.kv = KvCache(c.num_layers, c.num_kv_heads, context, c.head_dim);
  total += s_.kv.nbytes();

  // RoPE tables as transformers computes them: angle = f32(pos) * inv_freq in f32,
  // then cos/sin of that f32 angle.
  std::vector<float> inv_freq(half);
  RopeInverseFrequencies(c, inv_freq.data());
  for (size_t p = 0; p < context; ++p)
    for (size_t i = 0; i < half; ++i) {
      const float angle = float(p) * inv_freq[i];
      s_.rope_cos[p * half + i] = float(std::cos(double(angle)));
      s_.rope_sin[p * half + i] = float(std::sin(double(angle)));
    }
}

void Transformer::Truncate(size_t pos) {
  if (pos > pos_)
    throw std::invalid_argument("truncate(" + std::to_string(pos) + "): only " +
                                std::to_string(pos_) + " positions are cached");
  pos_ = pos;
}

void Transformer::CheckTokens(const int32_t* tokens, size_t n) const {
  if (n == 0) throw std::invalid_argument("forward: no tokens given");
  for (size_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || size_t(tokens[i]) >= config_.vocab_size)
      throw std::invalid_argument("forward: token id " + std::to_string(tokens[i]) + " at index " +
                                  std::to_string(i) + " is outside the vocabulary [0, " +
                                  std::to_string(config_.vocab_size) + ")");
  if (pos_ + n > context())
    throw std::invalid_argument("forward: " + std::to_string(n) + " tokens at position " +
                                std::to_string(pos_) + " go past the context of " +
                                std::to_string(context()) + " tokens");
}

void Transformer::Forward(const int32_t* tokens, size_t n, bool all_logits, float* logits) {
  CheckTokens(tokens, n);
  const size_t vocab = config_.vocab_size;
  for (size_t start = 0; start < n; start += s_.chunk) {
    const size_t len = std::min(s_.chunk, n - start);
    ForwardChunk(tokens + start, len);
    if (all_logits) {
      Logits(0, len, logits + start * vocab);
    } else if (start + len == n) {
      Logits(len - 1, 1, logits);
    }
  }
}

const float* Transformer::Decode(int32_t token) {
  CheckTokens(&token, 1);
  ForwardChunk(&token, 1);
  Logits(0, 1, s_.logits.get());
  return s_.logits.get();
}

// out[n, p.rows] = in[n, cols] · [parts]ᵀ, each part's columns at its offset in a row.
void Transformer::Project(const FusedProjection& p, const float* in, size_t n, float* out) {
  if (p.parts.size() == 1) {
    MatMul(p.parts[0], in, n, out, pool_);
    return;
  }
  size_t offset = 0;
  for (const QuantizedMatrix& m : p.parts) {
    MatMul(m, in, n, s_.proj.get(), pool_);
    for (size_t t = 0; t < n; ++t)
      std::memcpy(out + t * p.rows + offset, s_.proj.get() + t * m.rows(), m.rows() * sizeof(float));
    offset += m.rows();
  }
}

// Per-token row work (norms, RoPE, activations): over the pool for a prefill chunk,
// inline for one decode token (a pool dispatch would cost more than the work).
template <class Fn>
void Transformer::ForEachToken(size_t n, const Fn& fn) {
  if (n == 1) {
    fn(size_t(0));
    return;
  }
  pool_.Run(n, [&](size_t t, size_t /*thread*/) { fn(t); });
}

void Transformer::ForwardChunk(const int32_t* tokens, size_t n) {
  const ModelConfig& c = config_;
  const size_t hidden = c.hidden_size, inter = c.intermediate_size, hd = c.head_dim;
  const size_t qkv_cols = c.q_dim() + 2 * c.kv_dim(), half = hd / 2;
  float* x = s_.x.get();
  float* xb = s_.xb.get();
  ForEachToken(n, [&](size_t t) { DequantizeRow(w_.embed, size_t(tokens[t]), x + t * hidden); });

  for (size_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w_.layers[l];
    // --- attention block
    ForEachToken(n, [&](size_t t) {
      RmsNorm(x + t * hidden, lw.attn_norm.data(), hidden, c.rms_norm_eps, xb + t * hidden);
    });
    Project(lw.qkv, xb, n, s_.qkv.get());
    ForEachToken(n, [&](size_t t) {  // RoPE on q and k, then k and v into the cache
      const size_t pos = pos_ + t;
      float* row = s_.qkv.get() + t * qkv_cols;
      const float* cs = s_.rope_cos.get() + pos * half;
      const float* sn = s_.rope_sin.get() + pos * half;
      for (size_t h = 0; h < c.num_heads + c.num_kv_heads; ++h) RopeRotateHalf(row + h * hd, cs, sn, hd);
      const float* k = row + c.q_dim();
      const float* v = k + c.kv_dim();
      for (size_t h = 0; h < c.num_kv_heads; ++h) {
        std::memcpy(s_.kv.Keys(l, h) + pos * hd, k + h * hd, hd * sizeof(float));
        std::memcpy(s_.kv.Values(l, h) + pos * hd, v + h * hd, hd * sizeof(float));
      }
    });
    Attention(l, n);
    if (c.is_bitnet())
      ForEachToken(n, [&](size_t t) {
        RmsNorm(s_.att.get() + t * c.q_dim(), lw.attn_sub_norm.data(), c.q_dim(), c.rms_norm_eps,
                s_.att.get() + t * c.q_dim());
      });
    MatMul(lw.o, s_.att.get(), n, s_.proj.get(), pool_);
    AddInPlace(s_.proj.get(), n * hidden, x);

    // --- feed-forward block
    ForEachToken(n, [&](size_t t) {
      RmsNorm(x + t * hidden, lw.ffn_norm.data(), hidden, c.rms_norm_eps, xb + t * hidden);
    });
    Project(lw.gate_up, xb, n, s_.gate_up.get());
    ForEachToken(n, [&](size_t t) {
      const float* gate = s_.gate_up.get() + t * 2 * inter;
      float* act = s_.act.get() + t * inter;
      if (c.hidden_act == HiddenAct::kSilu) {
        SiluMul(gate, gate + inter, inter, act);
      } else {
        Relu2Mul(gate, gate + inter, inter, act);
      }
      if (c.is_bitnet()) RmsNorm(act, lw.ffn_sub_norm.data(), inter, c.rms_norm_eps, act);
    });
    MatMul(lw.down, s_.act.get(), n, s_.proj.get(), pool_);
    AddInPlace(s_.proj.get(), n * hidden, x);
  }
  pos_ += n;
}

// Causal attention of the n new queries (positions pos_ .. pos_+n-1) over the cache;
// query head h reads KV head h / group (group = heads / kv_heads). One task per
// (query token, KV head) handles the group's query heads together, so each cached key
// and value row is read once per group; when that gives fewer tasks than threads
// (decode with few KV heads), one task per (query token, query head) instead.
void Transformer::Attention(size_t layer, size_t n) {
  const ModelConfig& c = config_;
  const size_t hd = c.head_dim, heads = c.num_heads, kv_heads = c.num_kv_heads;
  // The task captures two pointers, so std::function stores it without allocating.
  struct Args { size_t layer, hd, group, per_task, tasks_per_token, qkv_cols, q_dim, scratch; float scale; } a{
      layer, hd, heads / kv_heads, 0, 0, c.q_dim() + 2 * c.kv_dim(), c.q_dim(), s_.scores_per_thread,
      1.0f / std::sqrt(float(hd))};
  const bool grouped = n * kv_heads >= pool_.num_threads();
  a.per_task = grouped ? a.group : 1;               // query heads per task
  a.tasks_per_token = grouped ? kv_heads : heads;
  pool_.Run(n * a.tasks_per_token, [this, &a](size_t task, size_t thread) {
    const size_t t = task / a.tasks_per_token, h0 = (task % a.tasks_per_token) * a.per_task;
    const size_t kvh = h0 / a.group;
    AttendGroup(s_.qkv.get() + t * a.qkv_cols + h0 * a.hd, a.hd, a.per_task, s_.kv.Keys(a.layer, kvh),
                s_.kv.Values(a.layer, kvh), pos_ + t + 1, a.hd, a.scale, s_.scores.get() + thread * a.scratch,
                s_.att.get() + t * a.q_dim + h0 * a.hd, a.hd);
  });
}

// Final norm of x rows [first_row, first_row + n) and the head matmul into out [n, vocab].
void Transformer::Logits(size_t first_row, size_t n, float* out) {
  const size_t hidden = config_.hidden_size;
  ForEachToken(n, [&](size_t t) {
    RmsNorm(s_.x.get() + (first_row + t) * hidden, w_.norm.data(), hidden, config_.rms_norm_eps,
            s_.xb.get() + t * hidden);
  });
  MatMul(w_.head(), s_.xb.get(), n, out, pool_);
}

}  // namespace ternlm
