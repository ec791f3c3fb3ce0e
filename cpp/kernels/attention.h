// Attention over one KV head's cache, in f32 with Highway SIMD (attention.cc, dispatched
// at run time to the best target of this CPU), and the key layout of that cache
// (model/kv_cache.h stores keys with KeyOffset).
#pragma once
#include <cstddef>

namespace ternlm {

// Keys are stored in blocks of kKeyBlock positions, each block [head_dim][kKeyBlock]
// (dimension-major): the scores of a block's positions for one query are kKeyBlock-wide
// multiply-adds with no horizontal sums. Values are rows [position][head_dim].
constexpr size_t kKeyBlock = 16;
inline size_t KeyOffset(size_t pos, size_t d, size_t head_dim) {
  return ((pos / kKeyBlock) * head_dim + d) * kKeyBlock + pos % kKeyBlock;
}

// The attention of a query is computed in parts: its visible positions cut at the multiples
// of AttentionPartLength(context), one AttendPartial per part, the parts combined in
// order (model/transformer_attention.cc). The length depends on the context alone: a
// power-of-two number of key blocks, at least 1024 positions (a part costs a fold per row: at
// 256 positions a 1-thread decode at 3000 tokens ran 11% slower), and at most 64 parts per
// context, so a split decode step has enough parts for the threads and a long context's
// parts buffers stay small.
inline size_t AttentionPartLength(size_t context) {
  size_t len = 1024;
  while (len * 64 < context) len *= 2;
  return len;
}

// Attention of `tokens` consecutive query tokens x `group` query heads ("rows", token-major;
// GQA: the query heads that share this KV head) over the cached positions [begin, end) of
// one KV head; token i sees positions [0, first_len + i) (causal), or with window > 0 only
// the last `window` of them, [first_len + i - window, first_len + i) (a sliding window:
// transformers' kv_idx > q_idx - sliding_window). begin is a multiple of kKeyBlock. For
// each row r, with s_t = scale * q_r . K[t] over its visible t in [begin, end):
//   row_max[r] = max_t s_t,  row_sum[r] = sum_t e^(s_t - row_max[r]),
//   out_r      = sum_t e^(s_t - row_max[r]) V[t]      (not yet divided by row_sum)
// and row_max = -inf, row_sum = 0, out_r = 0 where no position is visible. One call over
// [0, end) then out_r / row_sum[r] is softmax attention. Calls over disjoint ranges j
// combine into the softmax over their union: with M = max_j row_max_j,
//   out_r = sum_j e^(row_max_j - M) out_j / sum_j e^(row_max_j - M) row_sum_j
// (parts with row_sum_j = 0 skipped); Transformer::Attention (model/transformer_attention.cc)
// folds its parts into this one at a time, in position order. A row's results depend only
// on its own query, its visible positions in [begin, end) and the cache, not on the other
// rows of the call nor on where begin lies left of its window. Each key block and value
// row is read once for all rows.
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
  size_t window = 0;       // sliding window in positions; 0: none
};
inline size_t AttendScoresStride(size_t begin, size_t end) {
  return (end - begin + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
}
void AttendPartial(const AttendArgs& args);

}  // namespace ternlm
