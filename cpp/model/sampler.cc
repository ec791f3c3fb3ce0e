#include "model/sampler.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/vector_ops.h"

namespace ternlm {

void SamplingParams::Validate() const {
  if (!(std::isfinite(temperature) && temperature >= 0))
    throw std::invalid_argument("temperature must be a finite number >= 0 (0 = greedy), got " +
                                std::to_string(temperature));
  if (top_k < 0) throw std::invalid_argument("top_k must be >= 0 (0 = off), got " + std::to_string(top_k));
  if (!(top_p > 0 && top_p <= 1))
    throw std::invalid_argument("top_p must be in (0, 1], got " + std::to_string(top_p));
  if (!(min_p >= 0 && min_p <= 1))
    throw std::invalid_argument("min_p must be in [0, 1], got " + std::to_string(min_p));
  if (!(std::isfinite(repetition_penalty) && repetition_penalty > 0))
    throw std::invalid_argument("repetition_penalty must be a finite number > 0 (1 = off), got " +
                                std::to_string(repetition_penalty));
}

Sampler::Sampler(uint64_t seed, const SamplingParams& params) : rng_(seed) { SetParams(params); }

void Sampler::SetParams(const SamplingParams& params) {
  params.Validate();
  params_ = params;
}

void Sampler::SetHistory(const int32_t* ids, size_t n, size_t vocab) {
  for (size_t i = 0; i < n; ++i)
    if (ids[i] < 0 || size_t(ids[i]) >= vocab)
      throw std::invalid_argument("sample: history token id " + std::to_string(ids[i]) + " at index " +
                                  std::to_string(i) + " is outside the vocabulary [0, " +
                                  std::to_string(vocab) + ")");
  seen_.assign(vocab, 0);
  distinct_.clear();
  distinct_.reserve(vocab);  // Append never reallocates
  for (size_t i = 0; i < n; ++i) Append(ids[i]);
}

double Sampler::Uniform() { return double(rng_() >> 11) * (1.0 / 9007199254740992.0); }

namespace {

// Throws NonFiniteLogits naming the first NaN or Inf of x[n]. The scan adds 2^23 to each
// value's magnitude bits: bit 31 is set exactly when the exponent is all ones (Inf, NaN);
// OR-ing them is branch-free and vectorizes.
void CheckFinite(const float* x, size_t n) {
  uint32_t any = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    any |= (u & 0x7FFFFFFFu) + 0x00800000u;
  }
  if (!(any & 0x80000000u)) return;
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i]))
      throw NonFiniteLogits("logit " + std::to_string(i) + " is " + (std::isnan(x[i]) ? "nan" : x[i] > 0 ? "inf" : "-inf"));
}

}  // namespace

size_t Sampler::Candidates(const float* logits, int32_t* best_id) {
  const size_t vocab = seen_.size();
  if (vocab == 0)
    throw std::invalid_argument("sample: the sampler has no vocabulary yet (set its history first)");
  CheckFinite(logits, vocab);
  const SamplingParams& p = params_;
  const bool penalise = p.repetition_penalty != 1.0f && !distinct_.empty();
  if (!penalise && p.temperature == 0.0f) {  // greedy: no copy
    *best_id = int32_t(Argmax(logits, vocab));
    return 0;
  }
  work_.assign(logits, logits + vocab);
  float* w = work_.data();

  // Repetition penalty, once per distinct id of the history; saturated, so a penalty
  // that overflows a huge logit keeps it the largest (smallest) float, not Inf.
  if (penalise)
    for (const int32_t id : distinct_) {
      const float v = w[id] < 0 ? w[id] * p.repetition_penalty : w[id] / p.repetition_penalty;
      w[id] = std::clamp(v, -FLT_MAX, FLT_MAX);
    }
  const size_t best = Argmax(w, vocab);
  *best_id = int32_t(best);
  if (p.temperature == 0.0f) return 0;
  const float mx = w[best];

  // Unnormalised probabilities e[id] = exp((w[id] - max) / temperature), in double; the
  // best id has 1. (w - max) / temperature is finite for finite floats (at most
  // 2 * FLT_MAX / 1.4e-45 ~ 5e83), so a tiny temperature gives 1 for the best ids and 0
  // for the rest instead of Inf - Inf = NaN.
  probs_.resize(vocab);
  double* e = probs_.data();
  const double temperature = double(p.temperature);
  for (size_t i = 0; i < vocab; ++i) e[i] = std::exp((double(w[i]) - double(mx)) / temperature);

  // Candidates, filtered without sorting the whole vocabulary (sorting 128k ids per
  // token would cost more than a small model's forward).
  order_.resize(vocab);
  for (size_t i = 0; i < vocab; ++i) order_[i] = int32_t(i);
  auto better = [e](int32_t a, int32_t b) { return e[a] > e[b] || (e[a] == e[b] && a < b); };
  size_t n = vocab;
  // top-k keeps every id tied with the k-th value (transformers removes only scores
  // below the k-th largest).
  const size_t top_k = size_t(p.top_k);
  if (top_k > 0 && top_k < vocab) {
    std::nth_element(order_.begin(), order_.begin() + (top_k - 1), order_.end(), better);
    const double kth = e[order_[top_k - 1]];
    n = size_t(std::partition(order_.begin(), order_.end(), [e, kth](int32_t id) { return e[id] >= kth; }) -
               order_.begin());
  }
  double mass = 0;  // of the top-k survivors: what top-p normalises by
  for (size_t i = 0; i < n; ++i) mass += e[order_[i]];
  // min-p: remove ids with probability < min_p * best probability (best = 1 here).
  // Both min-p and top-p keep a best-first prefix, so applying min-p first gives the
  // same survivors as transformers' order (top-p, then min-p).
  if (p.min_p > 0.0f) {
    const double floor = double(p.min_p);
    n = size_t(std::partition(order_.begin(), order_.begin() + n, [e, floor](int32_t id) { return e[id] >= floor; }) -
               order_.begin());
  }
  // top-p: transformers sorts ascending and removes ids whose cumulative probability
  // (their own and all smaller ones) is <= 1 - top_p; the best id always stays. Sort
  // only a best-first prefix large enough to hold the cut.
  if (p.top_p < 1.0f) {
    const double limit = (1.0 - double(p.top_p)) * mass;
    size_t k = std::min<size_t>(n, 64);
    for (;;) {
      if (k < n) std::nth_element(order_.begin(), order_.begin() + (k - 1), order_.begin() + n, better);
      std::sort(order_.begin(), order_.begin() + k, better);
      double tail = mass;  // mass of ids i.. in best-first order
      size_t keep = 0;
      for (size_t i = 0; i < k; ++i) {
        if (i > 0 && tail <= limit) break;
        keep = i + 1;
        tail -= e[order_[i]];
      }
      if (keep < k || k == n || tail <= limit) {
        n = keep;
        break;
      }
      k = std::min(n, 8 * k);
    }
  }

  return n;
}

int32_t Sampler::Sample(const float* logits) {
  int32_t best = 0;
  const size_t n = Candidates(logits, &best);
  if (n == 0) return best;
  // n >= 1: every filter keeps the best id (e = 1 >= the k-th value, >= min_p, and top-p
  // keeps at least one), and u < total = the last acc.
  const double* e = probs_.data();
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += e[order_[i]];
  const double u = Uniform() * total;
  double acc = 0;
  for (size_t i = 0; i < n; ++i) {
    acc += e[order_[i]];
    if (u < acc) return order_[i];
  }
  return order_[n - 1];
}

// Speculative sampling with a deterministic draft (its q is one-hot on `draft`): accept
// with probability min(1, p(draft) / q(draft)) = p(draft); on rejection draw from
// max(0, p - q) normalised, which is p with the draft removed. Either way the token has
// distribution p, so the output matches plain sampling in distribution (not draw for draw:
// this takes one or two uniforms where Sample takes one).
int32_t Sampler::SampleDraft(const float* logits, int32_t draft) {
  int32_t best = 0;
  const size_t n = Candidates(logits, &best);
  if (n == 0) return best;  // greedy: p is one-hot on the argmax
  const double* e = probs_.data();
  double total = 0, pd = 0;
  for (size_t i = 0; i < n; ++i) {
    total += e[order_[i]];
    if (order_[i] == draft) pd = e[draft];
  }
  if (pd > 0 && Uniform() * total < pd) return draft;
  // total - pd > 0 here: if the draft held all the mass it was accepted (u < 1).
  const double u = Uniform() * (total - pd);
  double acc = 0;
  int32_t last = best;
  for (size_t i = 0; i < n; ++i) {
    if (order_[i] == draft) continue;
    last = order_[i];
    acc += e[last];
    if (u < acc) return last;
  }
  return last;
}

}  // namespace ternlm
