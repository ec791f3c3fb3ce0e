// Transformer::Attention: causal attention of a chunk's new queries over each segment's
// own KV-cache slot (model/transformer.h draws the chunk layout).
//
// Query head h reads KV head h / group (group = heads / kv_heads). One task per (segment,
// block of kAttendTokens query tokens, KV head) scores all their query heads together, so
// each cached key and value is read once per token block. When that gives few tasks per
// thread (a single sequence decoding), a segment's cached positions are also split into
// parts, one task each, whose partial softmax sums are combined afterwards
// (AttendPartial's contract).
//
// With a sliding window (Mistral; Qwen2 / Qwen3 on the layers layer_types marks) a query
// of such a layer sees only its last sliding_window positions:
// a segment's attention starts at its first query's window edge (FirstVisible), and
// AttendPartial masks the positions of that key block left of each row's own edge.
//
// The split of a segment depends only on that segment (its length, the thread count and
// the KV heads), never on the rest of the batch: a sequence's attention is the same,
// bit for bit, whether it runs alone or beside others. Unsplit segments all run in one
// pool dispatch; a split segment runs alone, with the parts buffers to itself.
#include <algorithm>
#include <cmath>

#include "kernels/attention.h"
#include "kernels/vector_ops.h"
#include "model/transformer.h"

namespace ternlm {

namespace {

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

// The first cached position the query at `pos` sees, rounded down to a key block (0
// without a window).
size_t FirstVisible(size_t pos, size_t window) {
  return window && pos + 1 > window ? (pos + 1 - window) / kKeyBlock * kKeyBlock : 0;
}

}  // namespace

void Transformer::Attention(size_t layer, Segment* segs, size_t nseg) {
  const HeadShape shape = HeadShapeOf(config_);
  const size_t threads = pool_.num_threads();
  constexpr size_t kMinPartPositions = 8 * kKeyBlock;
  size_t unsplit_tasks = 0;
  for (size_t i = 0; i < nseg; ++i) {
    Segment& g = segs[i];
    const size_t token_blocks = (g.n + kAttendTokens - 1) / kAttendTokens;
    const size_t span = g.pos + g.n - FirstVisible(g.pos, config_.WindowOf(layer));  // positions seen
    g.parts = 1;
    if (token_blocks == 1 && s_.max_parts > 1 && shape.kv_heads < 4 * threads) {
      const size_t want = std::min((4 * threads + shape.kv_heads - 1) / shape.kv_heads, s_.max_parts);
      g.parts = std::max<size_t>(1, std::min(want, span / kMinPartPositions));
    }
    g.part_len = AttendScoresStride(0, (span + g.parts - 1) / g.parts);
    g.parts = (span + g.part_len - 1) / g.part_len;
    g.first_task = unsplit_tasks;
    if (g.parts == 1) unsplit_tasks += token_blocks * shape.kv_heads;
  }
  if (unsplit_tasks > 0) {
    pool_.Run(unsplit_tasks, [this, segs, nseg, layer](size_t task, size_t thread) {
      size_t i = 0;  // the last unsplit segment starting at or before `task` (few: a scan)
      for (size_t j = 0; j < nseg; ++j)
        if (segs[j].parts == 1 && segs[j].first_task <= task) i = j;
      AttendTask(layer, segs[i], task - segs[i].first_task, thread);
    });
  }
  for (size_t i = 0; i < nseg; ++i) {
    const Segment& g = segs[i];
    if (g.parts == 1) continue;
    pool_.Run(g.parts * shape.kv_heads, [this, &g, layer](size_t task, size_t thread) {
      AttendTask(layer, g, task, thread);
    });
    CombineParts(g);
  }
}

// Task `task` of segment g: (token block, KV head, part), the part fastest.
void Transformer::AttendTask(size_t layer, const Segment& g, size_t task, size_t thread) {
  const HeadShape shape = HeadShapeOf(config_);
  const size_t part = task % g.parts, kvh = task / g.parts % shape.kv_heads;
  const size_t tb = task / g.parts / shape.kv_heads;
  const size_t t0 = tb * kAttendTokens, rows_tokens = std::min(kAttendTokens, g.n - t0);
  const size_t h0 = kvh * shape.group, rows = rows_tokens * shape.group;
  const size_t row0 = g.row + t0;  // first chunk row of this task
  const KvCache& kv = slots_[g.slot].kv;
  float* stats = s_.row_stats.get() + thread * 2 * kAttendTokens * shape.group;
  AttendArgs a;
  a.q = s_.qkv.get() + row0 * shape.qkv_stride + h0 * shape.dim;
  a.q_stride = shape.qkv_stride;
  a.tokens = rows_tokens;
  a.group = shape.group;
  a.first_len = g.pos + t0 + 1;
  a.keys = kv.Keys(layer, kvh);
  a.values = kv.Values(layer, kvh);
  a.f16 = kv.f16();
  const size_t window = config_.WindowOf(layer);
  a.begin = g.parts == 1 ? FirstVisible(g.pos + t0, window) : FirstVisible(g.pos, window) + part * g.part_len;
  a.window = window;
  a.end = std::min(a.first_len + rows_tokens - 1, a.begin + g.part_len);
  a.head_dim = shape.dim;
  a.scale = shape.scale;
  a.scores = s_.scores.get() + thread * s_.scores_per_thread;
  a.out_stride = shape.q_dim;
  a.row_max = stats;
  a.row_sum = stats + rows;
  if (g.parts == 1) {
    a.out = s_.att.get() + row0 * shape.q_dim + h0 * shape.dim;
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
}

// out = sum_j e^(m_j - M) o_j / sum_j e^(m_j - M) s_j over the parts j of each row of g
// (a split segment has one token block: its rows are the first g.n of each part).
void Transformer::CombineParts(const Segment& g) {
  const HeadShape shape = HeadShapeOf(config_);
  for (size_t t = 0; t < g.n; ++t)
    for (size_t h = 0; h < shape.heads; ++h) {
      const size_t at = t * shape.heads + h;
      auto part_max = [&](size_t j) { return s_.part_stats[j * 2 * kAttendTokens * shape.heads + at]; };
      auto part_sum = [&](size_t j) { return s_.part_stats[(j * 2 + 1) * kAttendTokens * shape.heads + at]; };
      float m = -INFINITY, sum = 0.0f;
      for (size_t j = 0; j < g.parts; ++j) m = std::max(m, part_max(j));
      float* out = s_.att.get() + (g.row + t) * shape.q_dim + h * shape.dim;
      std::fill(out, out + shape.dim, 0.0f);
      for (size_t j = 0; j < g.parts; ++j) {
        if (part_sum(j) == 0.0f) continue;  // no visible position in this part
        const float w = std::exp(part_max(j) - m);
        sum += w * part_sum(j);
        Axpy(w, s_.parts.get() + j * kAttendTokens * shape.q_dim + t * shape.q_dim + h * shape.dim, shape.dim, out);
      }
      const float inv = 1.0f / sum;
      for (size_t i = 0; i < shape.dim; ++i) out[i] *= inv;
    }
}

}  // namespace ternlm
