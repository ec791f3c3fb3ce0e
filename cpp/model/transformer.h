// Transformer: a Llama or BitNet b1.58 decoder, run in f32 around MatMul over any
// weight format (formats/quantized_matrix.h), with a pool of KV-cache slots.
//
// Plain structs hold everything (as llama2.c's run.c):
//   ModelConfig   (config.h)  shapes and hyper-parameters
//   Weights       (weights.h) every matrix and norm weight, owned
//   RunState                  activation buffers for one chunk of up to `chunk` rows and
//                             the RoPE tables, shared by every sequence; allocated once
//                             in the constructor, so a forward allocates nothing
//   Slot                      one sequence's KV cache and position
// The buffers that grow with the context (KV caches, RoPE tables, attention scores) are
// only reserved: pages are committed, and RoPE rows computed, as positions are reached.
//
// A chunk's rows may belong to several sequences (Batch): each is a segment of rows at
// its slot's own positions. Norms, matmuls and activations run over all rows at once
// (one pass over the weights per chunk); RoPE, the KV append and attention read each
// row's own slot. A prompt longer than a chunk is run in chunks (GEMM per chunk); a
// decode step is a chunk of one row per sequence.
//
//   rows:  | seq 3: 1 decode row | seq 0: 1 decode row | seq 5: prefill rows p..p+k |
//   slots: [0: kv, pos] [1: kv, pos] ... [sequences-1: kv, pos]
//
// Thread safety: every public call locks the engine's mutex while it computes (a long
// Forward / Prefill per chunk, so other callers interleave between chunks). Slots are
// not owned here: two callers must not use one slot at once (ternlm.Model hands out
// slots, python/ternlm/sequences.py).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "formats/quantized_matrix.h"
#include "hwy/aligned_allocator.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/sampler.h"
#include "model/weights.h"
#include "runtime/thread_pool.h"

namespace ternlm {

struct RunState {
  using Buffer = hwy::AlignedFreeUniquePtr<float[]>;
  size_t chunk = 0;       // rows every buffer holds
  Buffer x;               // [chunk, hidden]           residual stream
  Buffer xb;              // [chunk, hidden]           normed input of a block
  Buffer qkv;             // [chunk, q_dim + 2*kv_dim] fused q|k|v rows
  Buffer att;             // [chunk, q_dim]            attention output
  Buffer gate_up;         // [chunk, 2*intermediate]   gate|up rows, then act(gate)*up in gate
  Buffer act;             // [chunk, intermediate]     act(gate)*up, contiguous for down
  Buffer proj;            // [chunk, max(hidden, max piece rows)] o/down output; unfused piece output
  Buffer lin_in;          // [chunk, max linear cols] a linear's own normalized input (linear_norm only)
  Buffer scores;          // [threads, scores_per_thread] attention scores per thread
  size_t scores_per_thread = 0;  // kAttendTokens * group * context (rounded up to kKeyBlock)
  Buffer row_stats;       // [threads, 4 * kAttendTokens * group] max / sum per row: running, part's
  Buffer part_out;        // [threads, kAttendTokens * group * head_dim] one part's attention
  size_t part_len = 0;    // positions per attention part (transformer_attention.cc)
  Buffer parts;           // [max_parts, kSplitTokens, q_dim] parts of a split segment (threads > 1)
  Buffer part_stats;      // [max_parts, 2, kSplitTokens, heads] and their max / sum per row
  size_t max_parts = 0;
  Buffer logits;          // [max(sequences, kMaxDraft + 1), vocab] logits of the sampled rows
  Buffer rope_cos, rope_sin;  // [context, head_dim/2] per position, filled as positions are
  size_t rope_ready = 0;      // first reached: [0, rope_ready) hold their values
  std::vector<float> inv_freq;  // [head_dim/2] RoPE inverse frequencies
  size_t nbytes = 0;      // all of the above, and every slot's KV cache
};

// One sequence: its KV cache and how many positions it holds.
struct Slot {
  KvCache kv;
  size_t pos = 0;
};

// One sequence's share of a Batch: n tokens appended to slot `slot` at its position.
struct BatchEntry {
  size_t slot = 0;
  const int32_t* tokens = nullptr;
  size_t n = 0;
  Sampler* sampler = nullptr;  // null: nothing sampled (a prefill chunk before the last)
  bool decode = false;         // tokens[0] is the last sampled token: it joins the sampler's
                               // history first (as Step); else the history is left as set
  size_t draft = 0;            // > 0: verify (speculative decoding, decode entries only):
                               // tokens = [last sampled, d1 .. d_draft]; every row's logits
                               // are computed, d1.. are accepted while Sampler::SampleDraft
                               // keeps them, the slot keeps the rows of the last sampled token
                               // and the accepted drafts only, and `next` is drawn after them
  int32_t next = -1;           // out: the token sampled from the last row's logits
  size_t accepted = 0;         // out: drafts accepted (tokens[1 .. accepted])
  std::string error;           // out: why sampling failed (non-finite logits), else empty
};

class Transformer {
 public:
  static constexpr size_t kMaxChunk = 64;  // prefill tokens per GEMM
  static constexpr size_t kAttendTokens = 8;  // query tokens per attention task

  static constexpr size_t kMaxSequences = kMaxChunk;  // a decode step is one chunk
  static constexpr size_t kDefaultSequences = 8;
  static constexpr size_t kMaxDraft = 16;  // drafted tokens one Batch entry may verify
  // Query tokens of a segment whose attention parts may be spread over the threads (a
  // decode row, a verify entry).
  static constexpr size_t kSplitTokens = (kMaxDraft + kAttendTokens) / kAttendTokens * kAttendTokens;

  // Takes the weights; context = KV-cache length in tokens per sequence; sequences = KV
  // slots (1..kMaxSequences; 0: the most up to kDefaultSequences whose caches fit, at least
  // 1); pool must outlive this. Throws std::invalid_argument, before allocating anything,
  // for a context (times the sequences) whose buffers with the weights would not fit in
  // this machine's physical memory (the message names the bytes), and OutOfMemory when
  // an allocation fails.
  Transformer(const ModelConfig& config, Weights weights, size_t context, ThreadPool& pool,
              KvDtype kv_dtype = KvDtype::kF32, size_t sequences = 1);

  const ModelConfig& config() const { return config_; }
  const Weights& weights() const { return w_; }
  size_t sequences() const { return slots_.size(); }
  size_t chunk() const { return s_.chunk; }  // rows of one forward chunk (and of a Batch)
  size_t position(size_t slot = 0) const { return slots_.at(slot).pos; }
  size_t context() const { return context_; }
  KvDtype kv_dtype() const { return slots_[0].kv.dtype(); }
  size_t memory_bytes() const { return w_.nbytes() + s_.nbytes; }

  // The calls below act on one slot (default 0) and throw std::out_of_range for a slot
  // >= sequences().
  // Appends tokens [n] at position(); writes logits of the last token [vocab] or,
  // with all_logits, of every token [n, vocab]. Throws std::invalid_argument for
  // n == 0, a token outside [0, vocab) or position() + n > context().
  void Forward(const int32_t* tokens, size_t n, bool all_logits, float* logits, size_t slot = 0);

  // Generation, logits kept in the RunState. Prefill appends the prompt tokens [n] at
  // position() (from 0 after Reset), sets the sampler's penalty history to them and
  // returns the first sampled token. Step appends one token (the last sampled one),
  // adds it to the history and returns the next: the history is always the tokens
  // appended since Prefill, as transformers' input_ids. Both throw
  // std::invalid_argument, before anything changes, for what Forward rejects and
  // (Step) for a sampler whose history is over another vocabulary size; and
  // NonFiniteLogits (model/sampler.h) "<call>: logit <id> is nan at position <pos>" when
  // the logits they computed hold NaN or Inf (NaN weights, or an overflow in the forward);
  // the tokens are appended then.
  int32_t Prefill(const int32_t* tokens, size_t n, Sampler& sampler, size_t slot = 0);
  int32_t Step(int32_t token, Sampler& sampler, size_t slot = 0);

  void Reset(size_t slot = 0) { Truncate(0, slot); }
  // Keep the first `pos` cached positions (a shared prompt prefix); pos <= position().
  void Truncate(size_t pos, size_t slot = 0);

  // One forward chunk over several sequences (continuous batching): entry i appends its
  // tokens to its slot; entries with a sampler get the next token sampled from their last
  // row (entry.next), or entry.error set when those logits are not finite (the others
  // still get theirs). Throws std::invalid_argument, before anything changes, for no
  // entries, a slot out of range or given twice, an entry without tokens, more rows in
  // all than chunk(), what CheckTokens rejects per entry, or a sampler whose history is
  // over another vocabulary. Every entry's row is computed as alone (bit for bit for the
  // integer formats; the float kernels may sum a GEMM row in another order than a GEMV).
  // A verify entry (draft > 0) must be a decode entry of draft + 1 <= kMaxDraft + 1 rows.
  void Batch(BatchEntry* entries, size_t k);

  // Called on the calling thread between two chunks of a Forward or Prefill (not before
  // the first, so never for a prompt of one chunk or a Step): the Python binding checks
  // for Ctrl-C there. If it throws, the call stops, position() is back where the call
  // began (nothing was appended) and the exception propagates.
  void SetBetweenChunks(std::function<void()> fn) { between_chunks_ = std::move(fn); }

 private:
  // Rows [row, row + n) of a chunk: tokens of one slot from position pos. Set by Attention:
  // whether its parts are spread over the threads (split), its parts [first_part,
  // first_part + parts) and, unsplit, its first task of the shared dispatch.
  struct Segment {
    size_t slot, pos, row, n;
    bool split = false;
    size_t first_part = 0, parts = 0, first_task = 0;
  };
  // The one check of token ids and context below the Python API; `what` names the call.
  void CheckTokens(const char* what, const int32_t* tokens, size_t n, size_t slot) const;
  void ForwardChunks(const int32_t* tokens, size_t n, bool all_logits, float* logits, size_t slot);
  // Runs the chunk's rows [rows] (tokens in chunk order) through every layer, each segment
  // at its slot's positions, and advances the slots. Caller holds mu_.
  void ForwardRows(const int32_t* tokens, size_t rows, Segment* segs, size_t nseg);
  void ForwardOne(const int32_t* tokens, size_t n, size_t slot);  // one segment; holds mu_
  void FillRope(size_t end);  // RoPE table rows [rope_ready, end)
  int32_t SampleAt(const char* what, Sampler& sampler, size_t pos, const float* logits, int32_t draft = -1);
  void SampleEntry(BatchEntry& e, size_t pos0, const float* logits);  // one Batch entry's draw(s)
  void RopeAndCache(size_t layer, size_t n);  // the chunk's q and k rotated, k and v cached
  void Attention(size_t layer, Segment* segs, size_t nseg);  // transformer_attention.cc
  bool PartArgs(size_t layer, const Segment& g, size_t t0, size_t rows_tokens, size_t kvh, size_t part,
                size_t thread, AttendArgs& a) const;
  void AttendTask(size_t layer, const Segment& seg, size_t task, size_t thread);
  void AttendPartTask(size_t layer, const Segment& seg, size_t task, size_t thread);
  void CombineParts(const Segment& seg);
  // in_norms: nullptr, or (linear_norm) the input norm weight of each piece of p.
  void Project(const FusedProjection& p, const float* in, size_t n, float* out,
               const std::vector<float>* in_norms);
  // in [n, cols], RMS-normalized with weight `norm` into lin_in when norm is not empty.
  const float* LinearInput(const std::vector<float>& norm, const float* in, size_t cols, size_t n);
  void AddRowBias(const std::vector<float>& bias, size_t n, float* rows);
  // in [n, cols] rotated in place (in·H) when config().rotate_inputs has `site` (RotateSite).
  void RotateInput(unsigned site, float* in, size_t cols, size_t n);
  void Logits(size_t first_row, size_t n, float* out);  // final norm + head over x rows
  void LogitsOfRows(const size_t* rows, size_t k, float* out);  // same over chosen rows
  template <class Fn>
  void ForEachToken(size_t n, size_t floats, const Fn& fn);

  ModelConfig config_;
  Weights w_;
  RunState s_;
  ThreadPool& pool_;
  size_t context_ = 0;
  std::vector<Slot> slots_;
  // Batch scratch, sized once in the constructor (a step allocates nothing).
  std::vector<int32_t> row_tokens_;  // [chunk] tokens in row order
  std::vector<size_t> row_slot_;     // [chunk] the slot of each row
  std::vector<size_t> row_pos_;      // [chunk] the position of each row
  std::vector<Segment> segs_;        // [chunk]
  std::vector<size_t> sample_rows_;  // [logit_rows_] rows whose logits a Batch computes
  std::vector<size_t> first_pos_;    // [sequences] each entry's slot position before a Batch
  size_t logit_rows_ = 0;            // rows of s_.logits: max(sequences, kMaxDraft + 1)
  std::mutex mu_;
  std::function<void()> between_chunks_;
};

// Per-token row work (norms, RoPE, activations) of about `floats` values per token: over
// the pool for a prefill chunk, inline when the whole is a few microseconds (a decode
// row, a verify step's few rows), where a pool dispatch would cost more than the work.
template <class Fn>
inline void Transformer::ForEachToken(size_t n, size_t floats, const Fn& fn) {
  constexpr size_t kInlineFloats = 8192;
  if (n == 1 || n * floats <= kInlineFloats) {
    for (size_t t = 0; t < n; ++t) fn(t);
    return;
  }
  pool_.Run(n, [&](size_t t, size_t /*thread*/) { fn(t); });
}

}  // namespace ternlm
