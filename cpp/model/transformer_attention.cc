// Transformer::Attention: causal attention of a chunk's new queries over each segment's
// own KV-cache slot (model/transformer.h draws the chunk layout).
//
// Query head h reads KV head h / group (group = heads / kv_heads). A query's attention
// has one canonical computation, which depends only on its position (and the model and
// context), never on its segment's length, the batch, the thread count or whether it is
// a prefill, decode or verify row: its visible positions are cut into parts at the
// multiples of P = s_.part_len (kernels/attention.h: AttentionPartLength), each part's
// partial softmax (max, sum, weighted values) is one AttendPartial, and the parts are
// folded in position order (FoldPart). So a token's logits are the same bit for bit in
// a decode step, a speculative verify step, a prefill chunk and at any thread count
// (tests/test_exact_rows.py), and greedy speculative text is plain greedy text.
//
//   positions   0        P        2P       3P   pos
//   parts       [ part 0 )[ part 1 )[ part 2 )[ 3 ]      fold 0, 1, 2, 3 in order
//
// The work is spread two ways, with the same arithmetic:
// - unsplit: one task per (segment, block of kAttendTokens query tokens, KV head) scores
//   all their query heads together (each cached key and value read once per token
//   block) and folds the parts one after another (the first written in place, the next
//   ones through the thread's part_out);
// - split: a segment of few tasks per thread (one sequence decoding or verifying) gets
//   one task per (token block, KV head, part); the parts land in s_.parts and
//   CombineParts folds them in the same order. A split segment runs alone, with the
//   parts buffers to itself; unsplit segments all run in one pool dispatch.
//
// With a sliding window (Mistral; Qwen2 / Qwen3 on the layers layer_types marks) a query
// of such a layer sees only its last sliding_window positions: a token block's parts
// start at its first query's window edge (FirstVisible), and AttendPartial masks the
// positions left of each row's own edge (those add exact zeros, so where a part begins
// left of a row's edge does not change the row's result).
#include <algorithm>
#include <cmath>

#include "kernels/attention.h"
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

// Folds one part's (max mj, sum sj, unnormalized out oj) of a row into the row's running
// (m, s, o), which start at (-inf, 0, 0): o becomes the softmax-weighted sum over both,
// scaled by e^(-max). Every path folds with this one function (not inlined: one machine
// code, one rounding), so the result depends only on the parts and their order.
[[gnu::noinline]] void FoldPart(float* o, float* m, float* s, const float* oj, float mj, float sj, size_t dim) {
  if (sj == 0.0f) return;  // no visible position in this part
  if (*s == 0.0f) {        // the first part seen: taken as it is
    *m = mj;
    *s = sj;
    std::copy(oj, oj + dim, o);
    return;
  }
  const float mx = std::max(*m, mj);
  const float a = std::exp(*m - mx), b = std::exp(mj - mx);
  *m = mx;
  *s = *s * a + sj * b;
  for (size_t i = 0; i < dim; ++i) o[i] = o[i] * a + oj[i] * b;
}

[[gnu::noinline]] void Normalize(float* o, float s, size_t dim) {
  const float inv = 1.0f / s;  // every row sees at least its own position
  for (size_t i = 0; i < dim; ++i) o[i] *= inv;
}

}  // namespace

void Transformer::Attention(size_t layer, Segment* segs, size_t nseg) {
  const HeadShape shape = HeadShapeOf(config_);
  const size_t threads = pool_.num_threads(), P = s_.part_len, window = config_.WindowOf(layer);
  size_t unsplit_tasks = 0;
  for (size_t i = 0; i < nseg; ++i) {
    Segment& g = segs[i];
    const size_t token_blocks = (g.n + kAttendTokens - 1) / kAttendTokens;
    g.first_part = FirstVisible(g.pos, window) / P;
    g.parts = (g.pos + g.n - 1) / P + 1 - g.first_part;
    g.split = s_.max_parts > 0 && g.parts > 1 && g.n <= kSplitTokens && token_blocks * shape.kv_heads < 4 * threads;
    g.first_task = unsplit_tasks;
    if (!g.split) unsplit_tasks += token_blocks * shape.kv_heads;
  }
  if (unsplit_tasks > 0) {
    pool_.Run(unsplit_tasks, [this, segs, nseg, layer](size_t task, size_t thread) {
      size_t i = 0;  // the last unsplit segment starting at or before `task` (few: a scan)
      for (size_t j = 0; j < nseg; ++j)
        if (!segs[j].split && segs[j].first_task <= task) i = j;
      AttendTask(layer, segs[i], task - segs[i].first_task, thread);
    });
  }
  for (size_t i = 0; i < nseg; ++i) {
    const Segment& g = segs[i];
    if (!g.split) continue;
    pool_.Run(g.parts * shape.kv_heads * ((g.n + kAttendTokens - 1) / kAttendTokens),
              [this, &g, layer](size_t task, size_t thread) { AttendPartTask(layer, g, task, thread); });
    CombineParts(g);
  }
}

// AttendPartial's arguments for token block tb (its first token t0, rows_tokens tokens)
// of segment g and KV head kvh, over part j; false where no row of the block sees part j.
bool Transformer::PartArgs(size_t layer, const Segment& g, size_t t0, size_t rows_tokens, size_t kvh, size_t j,
                           size_t thread, AttendArgs& a) const {
  const HeadShape shape = HeadShapeOf(config_);
  const size_t P = s_.part_len, window = config_.WindowOf(layer);
  const KvCache& kv = slots_[g.slot].kv;
  a.q = s_.qkv.get() + (g.row + t0) * shape.qkv_stride + kvh * shape.group * shape.dim;
  a.q_stride = shape.qkv_stride;
  a.tokens = rows_tokens;
  a.group = shape.group;
  a.first_len = g.pos + t0 + 1;
  a.keys = kv.Keys(layer, kvh);
  a.values = kv.Values(layer, kvh);
  a.f16 = kv.f16();
  a.begin = std::max(j * P, FirstVisible(g.pos + t0, window));
  a.end = std::min(a.first_len + rows_tokens - 1, (j + 1) * P);
  a.window = window;
  a.head_dim = shape.dim;
  a.scale = shape.scale;
  a.scores = s_.scores.get() + thread * s_.scores_per_thread;
  return a.begin < a.end;
}

// Unsplit task of segment g: (token block, KV head), the KV head fastest. Folds the
// block's parts in order: the first one in place in att, each next one through part_out.
void Transformer::AttendTask(size_t layer, const Segment& g, size_t task, size_t thread) {
  const HeadShape shape = HeadShapeOf(config_);
  const size_t kvh = task % shape.kv_heads, tb = task / shape.kv_heads;
  const size_t t0 = tb * kAttendTokens, rows_tokens = std::min(kAttendTokens, g.n - t0);
  const size_t h0 = kvh * shape.group, rows = rows_tokens * shape.group, P = s_.part_len;
  float* stats = s_.row_stats.get() + thread * 4 * kAttendTokens * shape.group;
  float *run_max = stats, *run_sum = stats + rows, *part_max = stats + 2 * rows, *part_sum = stats + 3 * rows;
  float* part_out = s_.part_out.get() + thread * kAttendTokens * shape.group * shape.dim;
  float* att = s_.att.get() + (g.row + t0) * shape.q_dim + h0 * shape.dim;
  auto att_row = [&](size_t r) { return att + (r / shape.group) * shape.q_dim + (r % shape.group) * shape.dim; };
  const size_t last = (g.pos + t0 + rows_tokens - 1) / P;
  bool first = true;
  for (size_t j = FirstVisible(g.pos + t0, config_.WindowOf(layer)) / P; j <= last; ++j) {
    AttendArgs a;
    if (!PartArgs(layer, g, t0, rows_tokens, kvh, j, thread, a)) continue;
    if (first) {  // = folding it into (-inf, 0, 0): FoldPart takes a first part as it is
      a.out = att;
      a.out_stride = shape.q_dim;
      a.row_max = run_max;
      a.row_sum = run_sum;
      AttendPartial(a);
      first = false;
      continue;
    }
    a.out = part_out;
    a.out_stride = shape.group * shape.dim;
    a.row_max = part_max;
    a.row_sum = part_sum;
    AttendPartial(a);
    for (size_t r = 0; r < rows; ++r)
      FoldPart(att_row(r), &run_max[r], &run_sum[r], part_out + r * shape.dim, part_max[r], part_sum[r], shape.dim);
  }
  for (size_t r = 0; r < rows; ++r) Normalize(att_row(r), run_sum[r], shape.dim);
}

// Split task of segment g: (token block, KV head, part), the part fastest. Part k of the
// segment (j = first_part + k) goes to s_.parts[k] at the segment's token rows.
void Transformer::AttendPartTask(size_t layer, const Segment& g, size_t task, size_t thread) {
  const HeadShape shape = HeadShapeOf(config_);
  const size_t k = task % g.parts, kvh = task / g.parts % shape.kv_heads, tb = task / g.parts / shape.kv_heads;
  const size_t t0 = tb * kAttendTokens, rows_tokens = std::min(kAttendTokens, g.n - t0);
  const size_t h0 = kvh * shape.group, rows = rows_tokens * shape.group;
  float* part_max = s_.part_stats.get() + k * 2 * kSplitTokens * shape.heads;
  float* part_sum = part_max + kSplitTokens * shape.heads;
  AttendArgs a;
  if (!PartArgs(layer, g, t0, rows_tokens, kvh, g.first_part + k, thread, a)) {
    for (size_t r = 0; r < rows; ++r) part_sum[(t0 + r / shape.group) * shape.heads + h0 + r % shape.group] = 0.0f;
    return;
  }
  float* stats = s_.row_stats.get() + thread * 4 * kAttendTokens * shape.group;
  a.out = s_.parts.get() + (k * kSplitTokens + t0) * shape.q_dim + h0 * shape.dim;
  a.out_stride = shape.q_dim;
  a.row_max = stats;
  a.row_sum = stats + rows;
  AttendPartial(a);
  for (size_t r = 0; r < rows; ++r) {
    const size_t at = (t0 + r / shape.group) * shape.heads + h0 + r % shape.group;
    part_max[at] = a.row_max[r];
    part_sum[at] = a.row_sum[r];
  }
}

// Folds each row's parts of split segment g in order into att, as AttendTask does.
void Transformer::CombineParts(const Segment& g) {
  const HeadShape shape = HeadShapeOf(config_);
  for (size_t t = 0; t < g.n; ++t)
    for (size_t h = 0; h < shape.heads; ++h) {
      const size_t at = t * shape.heads + h;
      float m = -INFINITY, sum = 0.0f;
      float* out = s_.att.get() + (g.row + t) * shape.q_dim + h * shape.dim;
      for (size_t k = 0; k < g.parts; ++k) {
        const float* stats = s_.part_stats.get() + k * 2 * kSplitTokens * shape.heads;
        const float* part = s_.parts.get() + (k * kSplitTokens + t) * shape.q_dim + h * shape.dim;
        FoldPart(out, &m, &sum, part, stats[at], stats[kSplitTokens * shape.heads + at], shape.dim);
      }
      Normalize(out, sum, shape.dim);
    }
}

}  // namespace ternlm
