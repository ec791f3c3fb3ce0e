// Transformer::Batch: one forward chunk over several sequences' rows (continuous batching,
// model/transformer.h draws the layout), then each entry's draw; a verify entry
// (speculative decoding) judges its drafts row by row and drops the rejected ones' rows.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "model/transformer.h"

namespace ternlm {

void Transformer::Batch(BatchEntry* e, size_t k) {
  std::lock_guard<std::mutex> lock(mu_);
  if (k == 0) throw std::invalid_argument("batch: no entries given");
  if (k > slots_.size())
    throw std::invalid_argument("batch: " + std::to_string(k) + " entries for " + std::to_string(slots_.size()) +
                                " sequences");
  size_t rows = 0;
  for (size_t i = 0; i < k; ++i) {
    if (e[i].slot >= slots_.size())
      throw std::invalid_argument("batch: slot " + std::to_string(e[i].slot) + " is out of range [0, " +
                                  std::to_string(slots_.size()) + ")");
    for (size_t j = 0; j < i; ++j)
      if (e[j].slot == e[i].slot)
        throw std::invalid_argument("batch: slot " + std::to_string(e[i].slot) + " is given twice");
    CheckTokens("batch", e[i].tokens, e[i].n, e[i].slot);
    if (e[i].decode && (e[i].n != 1 + e[i].draft || !e[i].sampler))
      throw std::invalid_argument("batch: a decode entry appends one token (and its drafts) and samples the next");
    if (e[i].draft > kMaxDraft || (e[i].draft > 0 && !e[i].decode))
      throw std::invalid_argument("batch: a verify entry is a decode entry with 1 to " + std::to_string(kMaxDraft) +
                                  " drafted tokens, got " + std::to_string(e[i].draft));
    if (e[i].sampler && e[i].sampler->vocab() != config_.vocab_size)
      throw std::invalid_argument("batch: the sampler's history is over a vocabulary of " +
                                  std::to_string(e[i].sampler->vocab()) + " tokens, this model's has " +
                                  std::to_string(config_.vocab_size) + " (set its history first)");
    rows += e[i].n;
  }
  if (rows > s_.chunk)
    throw std::invalid_argument("batch: " + std::to_string(rows) + " rows in all, more than a chunk of " +
                                std::to_string(s_.chunk));
  size_t row = 0;
  for (size_t i = 0; i < k; ++i) {
    first_pos_[i] = slots_[e[i].slot].pos;
    segs_[i] = Segment{e[i].slot, first_pos_[i], row, e[i].n};
    std::copy(e[i].tokens, e[i].tokens + e[i].n, row_tokens_.begin() + ptrdiff_t(row));
    row += e[i].n;
    e[i].next = -1;
    e[i].accepted = 0;
    e[i].error.clear();
  }
  ForwardRows(row_tokens_.data(), rows, segs_.data(), k);
  // The sampled rows' logits: each entry's last row, a verify entry's every row, in groups
  // of at most logit_rows_ rows (one head pass per group: one group unless several
  // sequences verify at once).
  const size_t vocab = config_.vocab_size;
  size_t begin = 0;
  while (begin < k) {
    size_t end = begin, sampled = 0;
    for (; end < k; ++end) {
      if (!e[end].sampler) continue;
      const size_t want = e[end].draft + 1;
      if (sampled + want > logit_rows_) break;
      const size_t last = segs_[end].row + segs_[end].n;
      for (size_t r = last - want; r < last; ++r) sample_rows_[sampled++] = r;
    }
    if (sampled > 0) LogitsOfRows(sample_rows_.data(), sampled, s_.logits.get());
    size_t at = 0;
    for (size_t i = begin; i < end; ++i) {
      if (!e[i].sampler) continue;
      SampleEntry(e[i], first_pos_[i], s_.logits.get() + at * vocab);
      at += e[i].draft + 1;
    }
    begin = end;
  }
}

// Draws entry e's next token from its logits rows [draft + 1, vocab] (one row unless it
// verifies drafts); pos0: its slot's position before the Batch.
void Transformer::SampleEntry(BatchEntry& e, size_t pos0, const float* logits) {
  Sampler& sampler = *e.sampler;
  const size_t vocab = config_.vocab_size;
  if (e.decode) sampler.Append(e.tokens[0]);
  const char* what = e.decode ? "step" : "prefill";
  try {
    size_t a = 0;
    for (; a < e.draft; ++a) {  // row a's logits judge draft a + 1 (tokens[a + 1])
      const int32_t t = SampleAt(what, sampler, pos0 + a, logits + a * vocab, e.tokens[a + 1]);
      if (t != e.tokens[a + 1]) {
        e.next = t;
        break;
      }
      sampler.Append(t);
      e.accepted = a + 1;
    }
    if (a == e.draft) e.next = SampleAt(what, sampler, slots_[e.slot].pos - 1, logits + a * vocab);
  } catch (const NonFiniteLogits& err) {
    e.error = err.what();
  }
  // The rejected drafts' rows leave the cache (their K/V are overwritten by what comes next).
  if (e.draft > 0) slots_[e.slot].pos = pos0 + 1 + e.accepted;
}

}  // namespace ternlm
