#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/vector_ops.h"

namespace ternlm {

void SamplingParams::Validate() const {
  if (!(std::isfinite(temperature) && temperature >= 0))
    throw std::invalid_argument("temperature must be a finite number >= 0 (0 = greedy), got " +
                                std::to_string(temperature));
  if (!(top_p > 0 && top_p <= 1))
    throw std::invalid_argument("top_p must be in (0, 1], got " + std::to_string(top_p));
  if (!(min_p >= 0 && min_p <= 1))
    throw std::invalid_argument("min_p must be in [0, 1], got " + std::to_string(min_p));
  if (!(std::isfinite(repetition_penalty) && repetition_penalty > 0))
    throw std::invalid_argument("repetition_penalty must be a finite number > 0 (1 = off), got " +
                                std::to_string(repetition_penalty));
}

double Sampler::Uniform() { return double(rng_() >> 11) * (1.0 / 9007199254740992.0); }

int32_t Sampler::Sample(const float* logits, size_t vocab, const SamplingParams& p,
                        const int32_t* recent, size_t num_recent) {
  p.Validate();
  if (vocab == 0) throw std::invalid_argument("sample: empty logits");
  for (size_t i = 0; i < num_recent; ++i)
    if (recent[i] < 0 || size_t(recent[i]) >= vocab)
      throw std::invalid_argument("sample: recent token id " + std::to_string(recent[i]) +
                                  " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  work_.assign(logits, logits + vocab);
  float* w = work_.data();

  // Repetition penalty over the distinct recent ids.
  if (p.repetition_penalty != 1.0f && num_recent > 0) {
    seen_.assign(vocab, 0);
    for (size_t i = 0; i < num_recent; ++i) {
      const int32_t id = recent[i];
      if (seen_[id]) continue;
      seen_[id] = 1;
      w[id] = w[id] < 0 ? w[id] * p.repetition_penalty : w[id] / p.repetition_penalty;
    }
  }
  if (p.temperature == 0.0f) return int32_t(Argmax(w, vocab));

  for (size_t i = 0; i < vocab; ++i) w[i] /= p.temperature;

  // Candidates best first. top-k keeps every id tied with the k-th value (transformers
  // removes only scores < the k-th largest).
  order_.resize(vocab);
  for (size_t i = 0; i < vocab; ++i) order_[i] = int32_t(i);
  auto better = [w](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); };
  size_t n = vocab;
  if (p.top_k > 0 && p.top_k < vocab) {
    std::nth_element(order_.begin(), order_.begin() + (p.top_k - 1), order_.end(), better);
    const float kth = w[order_[p.top_k - 1]];
    n = size_t(std::partition(order_.begin(), order_.end(), [w, kth](int32_t id) { return w[id] >= kth; }) -
               order_.begin());
  }
  std::sort(order_.begin(), order_.begin() + n, better);

  // Softmax over the candidates, in double.
  probs_.resize(n);
  const double mx = w[order_[0]];
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += (probs_[i] = std::exp(double(w[order_[i]]) - mx));
  for (size_t i = 0; i < n; ++i) probs_[i] /= sum;

  // top-p: transformers sorts ascending and removes ids whose cumulative probability
  // (their own and all smaller) is <= 1 - top_p; the best id always stays.
  if (p.top_p < 1.0f) {
    double tail = 1.0;  // probability of candidates i.. (i and all smaller)
    size_t keep = 1;
    for (size_t i = 0; i < n; ++i) {
      if (i > 0 && tail <= 1.0 - double(p.top_p)) break;
      keep = i + 1;
      tail -= probs_[i];
    }
    n = keep;
  }
  // min-p: remove ids with probability < min_p * best probability.
  if (p.min_p > 0.0f) {
    const double floor = double(p.min_p) * probs_[0];
    size_t keep = 1;
    while (keep < n && probs_[keep] >= floor) ++keep;
    n = keep;
  }

  double total = 0;
  for (size_t i = 0; i < n; ++i) total += probs_[i];
  const double u = Uniform() * total;
  double acc = 0;
  for (size_t i = 0; i < n; ++i) {
    acc += probs_[i];
    if (u < acc) return order_[i];
  }
  return order_[n - 1];
}

}  // namespace ternlm
