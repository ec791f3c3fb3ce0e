// Sampler: picks the next token from logits, in transformers' order of logits
// processors: repetition penalty, then (temperature 0: argmax) temperature, top-k,
// top-p, min-p, and a draw from the softmax of what is left. Reproducible for a
// seed: std::mt19937_64 and a uniform double built from its 53 high bits.
#pragma once
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace ternlm {

struct SamplingParams {
  float temperature = 0.0f;         // 0 = greedy
  size_t top_k = 0;                 // 0 = off
  float top_p = 1.0f;               // (0, 1]; 1 = off
  float min_p = 0.0f;               // [0, 1]; 0 = off
  float repetition_penalty = 1.0f;  // > 0; 1 = off

  // Throws std::invalid_argument naming the parameter and its allowed range.
  void Validate() const;
};

class Sampler {
 public:
  explicit Sampler(uint64_t seed) : rng_(seed) {}

  // logits [vocab] (not modified); recent: token ids the repetition penalty applies
  // to (each distinct id once: a positive logit is divided by the penalty, a negative
  // one multiplied, as transformers' RepetitionPenaltyLogitsProcessor).
  // Throws std::invalid_argument for a recent id outside [0, vocab).
  int32_t Sample(const float* logits, size_t vocab, const SamplingParams& p,
                 const int32_t* recent, size_t num_recent);

 private:
  double Uniform();  // [0, 1)

  std::mt19937_64 rng_;
  std::vector<float> work_;        // [vocab] penalised, tempered logits
  std::vector<uint8_t> seen_;      // [vocab] distinct-recent marks
  std::vector<int32_t> order_;     // candidate ids, best first
  std::vector<double> probs_;      // [vocab] exp(logit - max logit)
};

}  // namespace ternlm
