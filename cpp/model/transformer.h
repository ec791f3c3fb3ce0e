// Transformer: a Llama or BitNet b1.58 decoder, run in f32 around MatMul over any
// weight format (formats/quantized_matrix.h), with a KV cache.
//
// Three plain structs hold everything (as llama2.c's run.c):
//   ModelConfig   (config.h)  shapes and hyper-parameters
//   Weights       (weights.h) every matrix and norm weight, owned
//   RunState                  activation buffers for one chunk of up to kMaxChunk tokens,
//                             the KV cache and the RoPE tables; allocated once in the
//                             constructor, so Forward allocates nothing. The buffers that
//                             grow with the context (KV cache, RoPE tables, attention
//                             scores) are only reserved: pages are committed, and RoPE
//                             rows computed, as positions are first reached.
// A prompt longer than kMaxChunk tokens is run in chunks of kMaxChunk (GEMM per chunk);
// decode is a chunk of one token (GEMV).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
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
  Buffer scores;          // [threads, scores_per_thread] attention scores per thread
  size_t scores_per_thread = 0;  // kAttendTokens * group * context (rounded up to kKeyBlock)
  Buffer row_stats;       // [threads, 2 * kAttendTokens * group] AttendPartial max / sum per row
  Buffer parts;           // [max_parts, kAttendTokens, q_dim] attention of split positions,
  Buffer part_stats;      // [max_parts, 2, kAttendTokens, heads] and its max / sum per row
  size_t max_parts = 1;
  Buffer logits;          // [vocab]                   last-row logits for Prefill / Step
  Buffer rope_cos, rope_sin;  // [context, head_dim/2] per position, filled as positions are
  size_t rope_ready = 0;      // first reached: [0, rope_ready) hold their values
  std::vector<float> inv_freq;  // [head_dim/2] RoPE inverse frequencies
  KvCache kv;
  size_t nbytes = 0;      // all of the above
};

class Transformer {
 public:
  static constexpr size_t kMaxChunk = 64;  // prefill tokens per GEMM
  static constexpr size_t kAttendTokens = 8;  // query tokens per attention task

  // Takes the weights; context = KV-cache length in tokens; pool must outlive this.
  // Throws std::invalid_argument, before allocating anything, for a context whose
  // buffers with the weights would not fit in this machine's physical memory (the
  // message names the bytes), and OutOfMemory when an allocation fails.
  Transformer(const ModelConfig& config, Weights weights, size_t context, ThreadPool& pool,
              KvDtype kv_dtype = KvDtype::kF32);

  const ModelConfig& config() const { return config_; }
  const Weights& weights() const { return w_; }
  size_t position() const { return pos_; }
  size_t context() const { return s_.kv.context(); }
  KvDtype kv_dtype() const { return s_.kv.dtype(); }
  size_t memory_bytes() const { return w_.nbytes() + s_.nbytes; }

  // Appends tokens [n] at position(); writes logits of the last token [vocab] or,
  // with all_logits, of every token [n, vocab]. Throws std::invalid_argument for
  // n == 0, a token outside [0, vocab) or position() + n > context().
  void Forward(const int32_t* tokens, size_t n, bool all_logits, float* logits);

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
  int32_t Prefill(const int32_t* tokens, size_t n, Sampler& sampler);
  int32_t Step(int32_t token, Sampler& sampler);

  void Reset() { pos_ = 0; }
  // Keep the first `pos` cached positions (a shared prompt prefix); pos <= position().
  void Truncate(size_t pos);

  // Called on the calling thread between two chunks of a Forward or Prefill (not before
  // the first, so never for a prompt of one chunk or a Step): the Python binding checks
  // for Ctrl-C there. If it throws, the call stops, position() is back where the call
  // began (nothing was appended) and the exception propagates.
  void SetBetweenChunks(std::function<void()> fn) { between_chunks_ = std::move(fn); }

 private:
  // The one check of token ids and context below the Python API; `what` names the call.
  void CheckTokens(const char* what, const int32_t* tokens, size_t n) const;
  void ForwardChunks(const int32_t* tokens, size_t n, bool all_logits, float* logits);  // checked tokens
  void ForwardChunk(const int32_t* tokens, size_t n);  // updates x for n <= chunk tokens
  void FillRope(size_t end);  // RoPE table rows [rope_ready, end)
  int32_t SampleAt(const char* what, Sampler& sampler);  // from s_.logits, naming position
  void Attention(size_t layer, size_t n);
  void Project(const FusedProjection& p, const float* in, size_t n, float* out);
  void Logits(size_t first_row, size_t n, float* out);  // final norm + head over x rows
  template <class Fn>
  void ForEachToken(size_t n, const Fn& fn);

  ModelConfig config_;
  Weights w_;
  RunState s_;
  ThreadPool& pool_;
  size_t pos_ = 0;
  std::function<void()> between_chunks_;
};

}  // namespace ternlm
