// The forward pass, top to bottom like the math (transformers' LlamaDecoderLayer /
// BitNetDecoderLayer):
//   x = embed[token]
//   per layer:  h = rmsnorm(x)·attn_norm;  q|k|v = h·Wqkvᵀ  [+ q|k|v bias: Qwen2]
//               [Qwen3: q, k = rmsnorm(each head)·q_norm, k_norm];  rope(q, k);  cache k, v
//               a = attention(q, K, V)  [sliding layers: over the last sliding_window positions]
//               [BitNet: a = rmsnorm(a)·attn_sub_norm]
//               x += a·Woᵀ  [+ o bias: o_bias]
//               h = rmsnorm(x)·ffn_norm;  g|u = h·Wgate_upᵀ  [+ gate|up biases: mlp_bias]
//               f = silu(g)·u (Llama) | relu(g)²·u (BitNet)  [BitNet: f = rmsnorm(f)·ffn_sub_norm]
//               x += f·Wdownᵀ  [+ down bias: mlp_bias]
//   logits = (rmsnorm(x)·norm)·Wheadᵀ
// With linear_norm (transformers' BitNet quantizer, use_rms_norm) every layer linear W
// computes (rmsnorm(in)·in_norm_W)·Wᵀ: its own input norm, with linear_norm_eps (but the
// linears in plain_linears, left float by modules_to_not_convert, which read in as it is).
// With rotate_inputs the inputs of the named linears are rotated first (in·H, their weights
// stored as W·H), and activation_quant quantizes every layer linear's input to 4 bits:
// transformer_linear.cc.
#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "kernels/vector_ops.h"
#include "model/context_memory.h"
#include "runtime/out_of_memory.h"
#include "runtime/phase_timers.h"

namespace ternlm {

namespace {

// Sizes are checked by the constructor before any buffer is allocated (CheckFits).
RunState::Buffer Allocate(size_t count, size_t& total, const char* what) {
  total += count * sizeof(float);
  RunState::Buffer b = hwy::AllocateAligned<float>(std::max<size_t>(count, 1));
  if (!b) throw OutOfMemory(std::string("Transformer: could not allocate ") + std::to_string(count * sizeof(float)) +
                            " bytes for " + what);
  return b;
}

size_t MaxPieceRows(const FusedProjection& p) {  // 0 when fused: MatMul writes the row layout
  size_t r = 0;
  for (const QuantizedMatrix& m : p.pieces) r = std::max(r, m.rows());
  return r;
}

}  // namespace

Transformer::Transformer(const ModelConfig& config, Weights weights, size_t context,
                         ThreadPool& pool, KvDtype kv_dtype, size_t sequences)
    : config_(config), w_(std::move(weights)), pool_(pool), context_(context) {
  config_.Validate();
  if (context == 0) throw std::invalid_argument("context must be >= 1");
  if (sequences > kMaxSequences)
    throw std::invalid_argument("sequences must be in [1, " + std::to_string(kMaxSequences) + "] (0: automatic), got " +
                                std::to_string(sequences));
  const ModelConfig& c = config_;
  const size_t group = c.num_heads / c.num_kv_heads, threads = pool.num_threads();
  const size_t kv_elem = kv_dtype == KvDtype::kF16 ? 2 : 4;
  // A decode step of every sequence is one chunk: the chunk holds at least `sequences` rows.
  const size_t most = sequences == 0 ? kDefaultSequences : sequences;
  const size_t chunk = std::min(kMaxChunk, std::max(context, most));
  const size_t score_rows = std::min(kAttendTokens, chunk) * group;
  const ContextBytes need = ContextNeeds(c, context, threads, score_rows, kv_elem);
  if (sequences == 0) sequences = SequencesThatFit(need, most, w_.nbytes());
  CheckFits(need, context, sequences, w_.nbytes());

  size_t proj_cols = c.hidden_size;
  for (const LayerWeights& l : w_.layers)
    proj_cols = std::max({proj_cols, MaxPieceRows(l.qkv), MaxPieceRows(l.gate_up)});
  size_t& total = s_.nbytes;
  s_.chunk = chunk;
  s_.x = Allocate(chunk * c.hidden_size, total, "activations");
  s_.xb = Allocate(chunk * c.hidden_size, total, "activations");
  s_.qkv = Allocate(chunk * (c.q_dim() + 2 * c.kv_dim()), total, "activations");
  s_.att = Allocate(chunk * c.q_dim(), total, "activations");
  s_.gate_up = Allocate(chunk * 2 * c.intermediate_size, total, "activations");
  s_.act = Allocate(chunk * c.intermediate_size, total, "activations");
  s_.proj = Allocate(chunk * proj_cols, total, "activations");
  s_.lin_in = Allocate(c.linear_norm ? chunk * std::max({c.hidden_size, c.q_dim(), c.intermediate_size}) : 0,
                       total, "activations");
  s_.scores_per_thread = score_rows * AttendScoresStride(0, context);
  s_.scores = Allocate(threads * s_.scores_per_thread, total, "attention scores");
  s_.row_stats = Allocate(threads * 4 * kAttendTokens * group, total, "attention scores");
  s_.part_out = Allocate(threads * kAttendTokens * group * c.head_dim, total, "attention scores");
  s_.part_len = AttentionPartLength(context);
  if (threads > 1) {
    s_.max_parts = (context + s_.part_len - 1) / s_.part_len;
    s_.parts = Allocate(s_.max_parts * kSplitTokens * c.q_dim(), total, "attention parts");
    s_.part_stats = Allocate(s_.max_parts * 2 * kSplitTokens * c.num_heads, total, "attention parts");
  }
  logit_rows_ = std::max(sequences, kMaxDraft + 1);
  s_.logits = Allocate(logit_rows_ * c.vocab_size, total, "logits");
  const size_t half = c.head_dim / 2;
  s_.rope_cos = Allocate(context * half, total, "RoPE tables");
  s_.rope_sin = Allocate(context * half, total, "RoPE tables");
  s_.inv_freq.resize(half);
  RopeInverseFrequencies(c, s_.inv_freq.data());
  slots_.resize(sequences);
  for (Slot& slot : slots_) {
    slot.kv = KvCache(c.num_layers, c.num_kv_heads, context, c.head_dim, kv_dtype);
    total += slot.kv.nbytes();
  }
  row_tokens_.resize(chunk);
  row_slot_.resize(chunk);
  row_pos_.resize(chunk);
  segs_.resize(chunk);
  sample_rows_.resize(logit_rows_);
  first_pos_.resize(sequences);
}

// RoPE tables as transformers computes them: angle = f32(pos) * inv_freq in f32, then
// cos/sin of that f32 angle. Rows are filled when a forward first reaches them (a 10^6
// token context costs nothing until it is used) and kept across Reset.
void Transformer::FillRope(size_t end) {
  const size_t half = config_.head_dim / 2;
  for (size_t p = s_.rope_ready; p < end; ++p)
    for (size_t i = 0; i < half; ++i) {
      const float angle = float(p) * s_.inv_freq[i];
      s_.rope_cos[p * half + i] = float(std::cos(double(angle)));
      s_.rope_sin[p * half + i] = float(std::sin(double(angle)));
    }
  s_.rope_ready = std::max(s_.rope_ready, end);
}

void Transformer::Truncate(size_t pos, size_t slot) {
  std::lock_guard<std::mutex> lock(mu_);
  Slot& sl = slots_.at(slot);
  if (pos > sl.pos)
    throw std::invalid_argument("truncate(" + std::to_string(pos) + "): only " + std::to_string(sl.pos) +
                                " positions are cached");
  sl.pos = pos;
}

void Transformer::CheckTokens(const char* what, const int32_t* tokens, size_t n, size_t slot) const {
  if (n == 0) throw std::invalid_argument(std::string(what) + ": no tokens given");
  for (size_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || size_t(tokens[i]) >= config_.vocab_size)
      throw std::invalid_argument(std::string(what) + ": token id " + std::to_string(tokens[i]) +
                                  " at index " + std::to_string(i) + " is outside the vocabulary [0, " +
                                  std::to_string(config_.vocab_size) + ")");
  const size_t pos = slots_.at(slot).pos;
  if (pos + n > context_)
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(n) + " tokens at position " +
                                std::to_string(pos) + " go past the context of " + std::to_string(context_) +
                                " tokens");
}

void Transformer::Forward(const int32_t* tokens, size_t n, bool all_logits, float* logits, size_t slot) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    CheckTokens("forward", tokens, n, slot);
  }
  ForwardChunks(tokens, n, all_logits, logits, slot);
}

// Each chunk under the lock, the Ctrl-C check between chunks outside it: other callers'
// steps interleave with a long forward. Returns with the lock released; the logits are
// written into `logits` under it.
void Transformer::ForwardChunks(const int32_t* tokens, size_t n, bool all_logits, float* logits, size_t slot) {
  const size_t vocab = config_.vocab_size;
  const size_t first_pos = slots_.at(slot).pos;
  for (size_t start = 0; start < n; start += s_.chunk) {
    if (start > 0 && between_chunks_) {
      try {
        between_chunks_();
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        slots_[slot].pos = first_pos;  // drop the chunks already appended: the cache is as before the call
        throw;
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    const size_t len = std::min(s_.chunk, n - start);
    ForwardOne(tokens + start, len, slot);
    if (logits == nullptr) {
      continue;  // Prefill's chunks before the last
    } else if (all_logits) {
      Logits(0, len, logits + start * vocab);
    } else if (start + len == n) {
      Logits(len - 1, 1, logits);
    }
  }
}

void Transformer::ForwardOne(const int32_t* tokens, size_t n, size_t slot) {
  segs_[0] = Segment{slot, slots_[slot].pos, 0, n};
  ForwardRows(tokens, n, segs_.data(), 1);
}

int32_t Transformer::SampleAt(const char* what, Sampler& sampler, size_t pos, const float* logits, int32_t draft) {
  TERNLM_PHASE(kSample);
  try {
    return draft < 0 ? sampler.Sample(logits) : sampler.SampleDraft(logits, draft);
  } catch (const NonFiniteLogits& e) {
    throw NonFiniteLogits(std::string(what) + ": " + e.what() + " at position " + std::to_string(pos));
  }
}

int32_t Transformer::Prefill(const int32_t* tokens, size_t n, Sampler& sampler, size_t slot) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    CheckTokens("prefill", tokens, n, slot);
  }
  // The chunks before the last interleave with other callers; the last chunk and the draw
  // from its logits (kept in the shared RunState) happen under one lock.
  const size_t last = (n - 1) / s_.chunk * s_.chunk;
  if (last > 0) {
    const size_t first_pos = slots_[slot].pos;
    ForwardChunks(tokens, last, false, nullptr, slot);
    if (between_chunks_) {
      try {
        between_chunks_();
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        slots_[slot].pos = first_pos;
        throw;
      }
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  ForwardOne(tokens + last, n - last, slot);
  Logits(n - last - 1, 1, s_.logits.get());
  sampler.SetHistory(tokens, n, config_.vocab_size);
  return SampleAt("prefill", sampler, slots_[slot].pos - 1, s_.logits.get());
}

int32_t Transformer::Step(int32_t token, Sampler& sampler, size_t slot) {
  std::lock_guard<std::mutex> lock(mu_);
  CheckTokens("step", &token, 1, slot);
  if (sampler.vocab() != config_.vocab_size)
    throw std::invalid_argument("step: the sampler's history is over a vocabulary of " +
                                std::to_string(sampler.vocab()) + " tokens, this model's has " +
                                std::to_string(config_.vocab_size) + " (prefill sets it)");
  sampler.Append(token);
  ForwardOne(&token, 1, slot);
  Logits(0, 1, s_.logits.get());
  return SampleAt("step", sampler, slots_[slot].pos - 1, s_.logits.get());
}

// rows[n, bias.size()] += bias (an o / down projection's bias, before the residual add).
void Transformer::AddRowBias(const std::vector<float>& bias, size_t n, float* rows) {
  for (size_t t = 0; t < n; ++t) AddInPlace(bias.data(), bias.size(), rows + t * bias.size());
}

void Transformer::ForwardRows(const int32_t* tokens, size_t n, Segment* segs, size_t nseg) {
  const ModelConfig& c = config_;
  const size_t hidden = c.hidden_size, inter = c.intermediate_size;
  float* x = s_.x.get();
  float* xb = s_.xb.get();
  size_t end = 0;
  for (size_t i = 0; i < nseg; ++i) {
    const Segment& g = segs[i];
    end = std::max(end, g.pos + g.n);
    for (size_t t = 0; t < g.n; ++t) {
      row_slot_[g.row + t] = g.slot;
      row_pos_[g.row + t] = g.pos + t;
    }
  }
  if (end > s_.rope_ready) FillRope(end);
  {
    TERNLM_PHASE(kEmbed);
    ForEachToken(n, hidden, [&](size_t t) { DequantizeRow(w_.embed, size_t(tokens[t]), x + t * hidden); });
  }

  for (size_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w_.layers[l];
    // --- attention block
    {
      TERNLM_PHASE(kRowWork);
      ForEachToken(n, hidden, [&](size_t t) {
        RmsNorm(x + t * hidden, lw.attn_norm.data(), hidden, c.rms_norm_eps, xb + t * hidden);
      });
    }
    const std::vector<float>* in_norms = c.linear_norm ? lw.in_norm.data() : nullptr;
    RotateInput(kRotateQkv, xb, hidden, n);
    {
      TERNLM_PHASE(kQkv);
      Project(lw.qkv, xb, n, s_.qkv.get(), in_norms ? in_norms + kLinearQ : nullptr);
    }
    RopeAndCache(l, n);
    {
      TERNLM_PHASE(kAttention);
      Attention(l, segs, nseg);
    }
    {
      TERNLM_PHASE(kO);
      if (c.is_bitnet())
        ForEachToken(n, c.q_dim(), [&](size_t t) {
          RmsNorm(s_.att.get() + t * c.q_dim(), lw.attn_sub_norm.data(), c.q_dim(), c.rms_norm_eps,
                  s_.att.get() + t * c.q_dim());
        });
      RotateInput(kRotateO, s_.att.get(), c.q_dim(), n);
      MatMul(lw.o, in_norms ? LinearInput(in_norms[kLinearO], s_.att.get(), c.q_dim(), n) : s_.att.get(), n,
             s_.proj.get(), pool_, c.activation_quant);
      if (c.o_bias) AddRowBias(lw.o_bias, n, s_.proj.get());
      AddInPlace(s_.proj.get(), n * hidden, x);
    }

    // --- feed-forward block
    {
      TERNLM_PHASE(kGateUp);
      ForEachToken(n, hidden, [&](size_t t) {
        RmsNorm(x + t * hidden, lw.ffn_norm.data(), hidden, c.rms_norm_eps, xb + t * hidden);
      });
      RotateInput(kRotateGateUp, xb, hidden, n);
      Project(lw.gate_up, xb, n, s_.gate_up.get(), in_norms ? in_norms + kLinearGate : nullptr);
    }
    {
      TERNLM_PHASE(kRowWork);
      ForEachToken(n, 2 * inter, [&](size_t t) {
        float* gate = s_.gate_up.get() + t * 2 * inter;
        if (c.mlp_bias) {
          AddInPlace(lw.gate_bias.data(), inter, gate);
          AddInPlace(lw.up_bias.data(), inter, gate + inter);
        }
        float* act = s_.act.get() + t * inter;
        if (c.hidden_act == HiddenAct::kSilu) {
          SiluMul(gate, gate + inter, inter, act);
        } else {
          Relu2Mul(gate, gate + inter, inter, act);
        }
        if (c.is_bitnet()) RmsNorm(act, lw.ffn_sub_norm.data(), inter, c.rms_norm_eps, act);
      });
    }
    {
      TERNLM_PHASE(kDown);
      RotateInput(kRotateDown, s_.act.get(), inter, n);
      MatMul(lw.down, in_norms ? LinearInput(in_norms[kLinearDown], s_.act.get(), inter, n) : s_.act.get(), n,
             s_.proj.get(), pool_, c.activation_quant);
      if (c.mlp_bias) AddRowBias(lw.down_bias, n, s_.proj.get());
      AddInPlace(s_.proj.get(), n * hidden, x);
    }
  }
  for (size_t i = 0; i < nseg; ++i) slots_[segs[i].slot].pos += segs[i].n;
}

// [bias, q/k norms,] RoPE on q and k of the chunk's n rows, then k and v into each row's cache.
void Transformer::RopeAndCache(size_t l, size_t n) {
  TERNLM_PHASE(kRowWork);
  const ModelConfig& c = config_;
  const LayerWeights& lw = w_.layers[l];
  const size_t hd = c.head_dim, qkv_cols = c.q_dim() + 2 * c.kv_dim(), half = hd / 2;
  ForEachToken(n, qkv_cols, [&](size_t t) {
    const size_t pos = row_pos_[t];
    KvCache& kv = slots_[row_slot_[t]].kv;
    float* row = s_.qkv.get() + t * qkv_cols;
    if (c.attention_bias) {
      AddInPlace(lw.q_bias.data(), c.q_dim(), row);
      AddInPlace(lw.k_bias.data(), c.kv_dim(), row + c.q_dim());
      AddInPlace(lw.v_bias.data(), c.kv_dim(), row + c.q_dim() + c.kv_dim());
    }
    if (c.qk_norm) {
      for (size_t h = 0; h < c.num_heads; ++h)
        RmsNorm(row + h * hd, lw.q_norm.data(), hd, c.rms_norm_eps, row + h * hd);
      float* kh = row + c.q_dim();
      for (size_t h = 0; h < c.num_kv_heads; ++h)
        RmsNorm(kh + h * hd, lw.k_norm.data(), hd, c.rms_norm_eps, kh + h * hd);
    }
    const float* cs = s_.rope_cos.get() + pos * half;
    const float* sn = s_.rope_sin.get() + pos * half;
    for (size_t h = 0; h < c.num_heads + c.num_kv_heads; ++h) RopeRotateHalf(row + h * hd, cs, sn, hd);
    const float* k = row + c.q_dim();
    const float* v = k + c.kv_dim();
    for (size_t h = 0; h < c.num_kv_heads; ++h) kv.Store(l, h, pos, k + h * hd, v + h * hd);
  });
}

// Final norm of x rows [first_row, first_row + n) and the head matmul into out [n, vocab].
void Transformer::Logits(size_t first_row, size_t n, float* out) {
  TERNLM_PHASE(kHead);
  const size_t hidden = config_.hidden_size;
  ForEachToken(n, hidden, [&](size_t t) {
    RmsNorm(s_.x.get() + (first_row + t) * hidden, w_.norm.data(), hidden, config_.rms_norm_eps,
            s_.xb.get() + t * hidden);
  });
  MatMul(w_.head(), s_.xb.get(), n, out, pool_);
}

void Transformer::LogitsOfRows(const size_t* rows, size_t k, float* out) {
  TERNLM_PHASE(kHead);
  const size_t hidden = config_.hidden_size;
  ForEachToken(k, hidden, [&](size_t t) {
    RmsNorm(s_.x.get() + rows[t] * hidden, w_.norm.data(), hidden, config_.rms_norm_eps, s_.xb.get() + t * hidden);
  });
  MatMul(w_.head(), s_.xb.get(), k, out, pool_);
}

}  // namespace ternlm
