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

#include <unistd.h>  // sysconf

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "kernels/vector_ops.h"
#include "runtime/out_of_memory.h"

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

size_t PhysicalMemoryBytes() {  // 0 when unknown
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) return size_t(pages) * size_t(page);
#endif
  return 0;
}

std::string Gigabytes(double bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3g GB (%.0f bytes)", bytes / 1e9, bytes);
  return buf;
}

// The buffers that grow with the context, in bytes, computed in double so that no
// context overflows them: the KV cache (slabs of round_up(context, kKeyBlock) positions),
// the RoPE tables and the per-thread attention scores. Refused when they and the weights
// exceed physical memory (they are only reserved until positions are reached, but a
// context that cannot be filled is a mistake better reported at load than as the OOM
// killer mid-generation).
void CheckFits(const ModelConfig& c, size_t context, size_t threads, size_t score_rows, size_t kv_elem,
               size_t weight_bytes) {
  const double positions = std::ceil(double(context) / double(kKeyBlock)) * double(kKeyBlock);
  const double kv = 2.0 * double(c.num_layers) * double(c.num_kv_heads) * positions * double(c.head_dim) * double(kv_elem);
  const double rope = 2.0 * double(context) * double(c.head_dim / 2) * sizeof(float);
  const double scores = double(threads) * double(score_rows) * positions * sizeof(float);
  const double need = kv + rope + scores, have = double(PhysicalMemoryBytes());
  const double limit = have > 0 ? have : std::ldexp(1.0, 62);
  if (need + double(weight_bytes) <= limit) return;
  throw std::invalid_argument(
      "context=" + std::to_string(context) + " needs " + Gigabytes(need) + " for the KV cache (" + Gigabytes(kv) +
      "), RoPE tables and attention scores, beside " + Gigabytes(double(weight_bytes)) + " of weights: more than " +
      (have > 0 ? "the " + Gigabytes(have) + " of physical memory of this machine" : std::string("any machine has")) +
      "; use a smaller context");
}

// The attention heads' shape, from the config.
struct HeadShape {
  size_t dim, heads, kv_heads;
  size_t group;       // query heads per KV head
  size_t q_dim;       // floats per token of att (the query heads side by side)
  size_t qkv_stride;  // floats per token of qkv (q | k | v)
  float scale;        // 1 / sqrt(dim)
};

HeadShape HeadShapeOf(const ModelConfig& c) {
  return {c.head_dim, c.num_heads, c.num_kv_heads, c.num_heads / c.num_kv_heads, c.q_dim(),
          c.q_dim() + 2 * c.kv_dim(), 1.0f / std::sqrt(float(c.head_dim))};
}

// How one Attention call is cut into pool tasks: each task is one (block of kAttendTokens
// query tokens, KV head, part of the cached positions).
struct AttentionSplit {
  size_t token_blocks;
  size_t parts;     // cached positions split into this many parts (1: not split)
  size_t part_len;  // positions per part
};

size_t MaxPieceRows(const FusedProjection& p) {  // 0 when fused: MatMul writes the row layout
  size_t r = 0;
  for (const QuantizedMatrix& m : p.pieces) r = std::max(r, m.rows());
  return r;
}

}  // namespace

Transformer::Transformer(const ModelConfig& config, Weights weights, size_t context,
                         ThreadPool& pool, KvDtype kv_dtype)
    : config_(config), w_(std::move(weights)), pool_(pool) {
  config_.Validate();
  if (context == 0) throw std::invalid_argument("context must be >= 1");
  const ModelConfig& c = config_;
  const size_t chunk = std::min(kMaxChunk, context);
  const size_t group = c.num_heads / c.num_kv_heads, threads = pool.num_threads();
  const size_t score_rows = std::min(kAttendTokens, chunk) * group;
  CheckFits(c, context, threads, score_rows, kv_dtype == KvDtype::kF16 ? 2 : 4, w_.nbytes());

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
  s_.scores_per_thread = score_rows * AttendScoresStride(0, context);
  s_.scores = Allocate(threads * s_.scores_per_thread, total, "attention scores");
  s_.row_stats = Allocate(threads * 2 * kAttendTokens * group, total, "attention scores");
  s_.max_parts = threads > 1 ? std::min<size_t>(64, 4 * threads) : 1;
  if (s_.max_parts > 1) {
    s_.parts = Allocate(s_.max_parts * kAttendTokens * c.q_dim(), total, "attention parts");
    s_.part_stats = Allocate(s_.max_parts * 2 * kAttendTokens * c.num_heads, total, "attention parts");
  }
  s_.logits = Allocate(c.vocab_size, total, "logits");
  const size_t half = c.head_dim / 2;
  s_.rope_cos = Allocate(context * half, total, "RoPE tables");
  s_.rope_sin = Allocate(context * half, total, "RoPE tables");
  s_.inv_freq.resize(half);
  RopeInverseFrequencies(c, s_.inv_freq.data());
  s_.kv = KvCache(c.num_layers, c.num_kv_heads, context, c.head_dim, kv_dtype);
  total += s_.kv.nbytes();
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

void Transformer::Truncate(size_t pos) {
  if (pos > pos_)
    throw std::invalid_argument("truncate(" + std::to_string(pos) + "): only " +
                                std::to_string(pos_) + " positions are cached");
  pos_ = pos;
}

void Transformer::CheckTokens(const char* what, const int32_t* tokens, size_t n) const {
  if (n == 0) throw std::invalid_argument(std::string(what) + ": no tokens given");
  for (size_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || size_t(tokens[i]) >= config_.vocab_size)
      throw std::invalid_argument(std::string(what) + ": token id " + std::to_string(tokens[i]) +
                                  " at index " + std::to_string(i) + " is outside the vocabulary [0, " +
                                  std::to_string(config_.vocab_size) + ")");
  if (pos_ + n > context())
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(n) + " tokens at position " +
                                std::to_string(pos_) + " go past the context of " +
                                std::to_string(context()) + " tokens");
}

void Transformer::Forward(const int32_t* tokens, size_t n, bool all_logits, float* logits) {
  CheckTokens("forward", tokens, n);
  ForwardChunks(tokens, n, all_logits, logits);
}

void Transformer::ForwardChunks(const int32_t* tokens, size_t n, bool all_logits, float* logits) {
  const size_t vocab = config_.vocab_size;
  const size_t first_pos = pos_;
  for (size_t start = 0; start < n; start += s_.chunk) {
    if (start > 0 && between_chunks_) {
      try {
        between_chunks_();
      } catch (...) {
        pos_ = first_pos;  // drop the chunks already appended: the cache is as before the call
        throw;
      }
    }
    const size_t len = std::min(s_.chunk, n - start);
    ForwardChunk(tokens + start, len);
    if (all_logits) {
      Logits(0, len, logits + start * vocab);
    } else if (start + len == n) {
      Logits(len - 1, 1, logits);
    }
  }
}

int32_t Transformer::SampleAt(const char* what, Sampler& sampler) {
  try {
    return sampler.Sample(s_.logits.get());
  } catch (const NonFiniteLogits& e) {
    throw NonFiniteLogits(std::string(what) + ": " + e.what() + " at position " + std::to_string(pos_ - 1));
  }
}

int32_t Transformer::Prefill(const int32_t* tokens, size_t n, Sampler& sampler) {
  CheckTokens("prefill", tokens, n);
  ForwardChunks(tokens, n, false, s_.logits.get());
  sampler.SetHistory(tokens, n, config_.vocab_size);
  return SampleAt("prefill", sampler);
}

int32_t Transformer::Step(int32_t token, Sampler& sampler) {
  CheckTokens("step", &token, 1);
  if (sampler.vocab() != config_.vocab_size)
    throw std::invalid_argument("step: the sampler's history is over a vocabulary of " +
                                std::to_string(sampler.vocab()) + " tokens, this model's has " +
                                std::to_string(config_.vocab_size) + " (prefill sets it)");
  sampler.Append(token);
  ForwardChunk(&token, 1);
  Logits(0, 1, s_.logits.get());
  return SampleAt("step", sampler);
}

// out[n, p.rows] = in[n, cols] · [pieces]ᵀ, each piece's columns at its offset in a row.
void Transformer::Project(const FusedProjection& p, const float* in, size_t n, float* out) {
  if (p.is_fused()) {
    MatMul(p.fused, in, n, out, pool_);
    return;
  }
  size_t offset = 0;
  for (const QuantizedMatrix& m : p.pieces) {
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
  if (pos_ + n > s_.rope_ready) FillRope(pos_ + n);
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
      for (size_t h = 0; h < c.num_kv_heads; ++h) s_.kv.Store(l, h, pos, k + h * hd, v + h * hd);
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
// query head h reads KV head h / group (group = heads / kv_heads). One task per (block of
// kAttendTokens query tokens, KV head) scores all their query heads together, so each
// cached key and value is read once per token block. When that gives few tasks per thread
// (decode), the cached positions are also split into parts, one task each, whose partial
// softmax sums are combined afterwards (AttendPartial's contract).
void Transformer::Attention(size_t layer, size_t n) {
  const HeadShape shape = HeadShapeOf(config_);
  AttentionSplit split{(n + kAttendTokens - 1) / kAttendTokens, 1, 0};
  const size_t len = pos_ + n, threads = pool_.num_threads();
  constexpr size_t kMinPartPositions = 8 * kKeyBlock;
  if (split.token_blocks == 1 && s_.max_parts > 1 && shape.kv_heads < 4 * threads) {
    const size_t want = std::min((4 * threads + shape.kv_heads - 1) / shape.kv_heads, s_.max_parts);
    split.parts = std::max<size_t>(1, std::min(want, len / kMinPartPositions));
  }
  split.part_len = AttendScoresStride(0, (len + split.parts - 1) / split.parts);
  split.parts = (len + split.part_len - 1) / split.part_len;

  const size_t tasks = split.token_blocks * shape.kv_heads * split.parts;
  pool_.Run(tasks, [this, &shape, &split, layer, n](size_t task, size_t thread) {
    const size_t part = task % split.parts, kvh = task / split.parts % shape.kv_heads;
    const size_t tb = task / split.parts / shape.kv_heads;
    const size_t t0 = tb * kAttendTokens, rows_tokens = std::min(kAttendTokens, n - t0);
    const size_t h0 = kvh * shape.group, rows = rows_tokens * shape.group;
    float* stats = s_.row_stats.get() + thread * 2 * kAttendTokens * shape.group;
    AttendArgs a;
    a.q = s_.qkv.get() + t0 * shape.qkv_stride + h0 * shape.dim;
    a.q_stride = shape.qkv_stride;
    a.tokens = rows_tokens;
    a.group = shape.group;
    a.first_len = pos_ + t0 + 1;
    a.keys = s_.kv.Keys(layer, kvh);
    a.values = s_.kv.Values(layer, kvh);
    a.f16 = s_.kv.f16();
    a.begin = part * split.part_len;
    a.end = std::min(a.first_len + rows_tokens - 1, a.begin + split.part_len);
    a.head_dim = shape.dim;
    a.scale = shape.scale;
    a.scores = s_.scores.get() + thread * s_.scores_per_thread;
    a.out_stride = shape.q_dim;
    a.row_max = stats;
    a.row_sum = stats + rows;
    if (split.parts == 1) {
      a.out = s_.att.get() + t0 * shape.q_dim + h0 * shape.dim;
      AttendPartial(a);
      for (size_t r = 0; r < rows; ++r) {  // every row sees at least its own position
        float* o = a.out + (r / shape.group) * shape.q_dim + (r % shape.group) * shape.dim;
        const float inv = 1.0f / a.row_sum[r];
        for (size_t i = 0; i < shape.dim; ++i) o[i] *= inv;
      }
      return;
    }
    a.out = s_.parts.get() + part * kAttendTokens * shape.q_dim + h0 * shape.dim;
    AttendPartial(a);
    float* part_max = s_.part_stats.get() + part * 2 * kAttendTokens * shape.heads;
    float* part_sum = part_max + kAttendTokens * shape.heads;
    for (size_t r = 0; r < rows; ++r) {
      const size_t at = (r / shape.group) * shape.heads + h0 + r % shape.group;
      part_max[at] = a.row_max[r];
      part_sum[at] = a.row_sum[r];
    }
  });
  if (split.parts == 1) return;
  // out = sum_j e^(m_j - M) o_j / sum_j e^(m_j - M) s_j over the parts j of each row.
  for (size_t t = 0; t < n; ++t)
    for (size_t h = 0; h < shape.heads; ++h) {
      const size_t at = t * shape.heads + h;
      auto part_max = [&](size_t j) { return s_.part_stats[j * 2 * kAttendTokens * shape.heads + at]; };
      auto part_sum = [&](size_t j) { return s_.part_stats[(j * 2 + 1) * kAttendTokens * shape.heads + at]; };
      float m = -INFINITY, sum = 0.0f;
      for (size_t j = 0; j < split.parts; ++j) m = std::max(m, part_max(j));
      float* out = s_.att.get() + t * shape.q_dim + h * shape.dim;
      std::fill(out, out + shape.dim, 0.0f);
      for (size_t j = 0; j < split.parts; ++j) {
        if (part_sum(j) == 0.0f) continue;  // no visible position in this part
        const float w = std::exp(part_max(j) - m);
        sum += w * part_sum(j);
        Axpy(w, s_.parts.get() + j * kAttendTokens * shape.q_dim + t * shape.q_dim + h * shape.dim, shape.dim, out);
      }
      const float inv = 1.0f / sum;
      for (size_t i = 0; i < shape.dim; ++i) out[i] *= inv;
    }
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
