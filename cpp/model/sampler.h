// Sampler: picks the next token from logits, in transformers' order of logits
// processors: repetition penalty, then (temperature 0: argmax) temperature, top-k,
// top-p, min-p, and a draw from the softmax of what is left. Reproducible for a
// seed: std::mt19937_64 and a uniform double built from its 53 high bits.
//
// A Sampler holds the sampling parameters and the repetition-penalty history of one
// generation. transformers' RepetitionPenaltyLogitsProcessor penalises each distinct id
// of prompt + output once, so the history is kept as marks, updated as tokens come:
//   seen_      [vocab]   1 for an id already in the history
//   distinct_  [<= vocab] the marked ids, in first-seen order (capacity reserved once)
// Append is O(1) and a penalised Sample touches only the distinct ids.
//
// Checks: SamplingParams::Validate (ranges) runs when parameters are set, never per
// token; SetHistory checks its ids. Sample and Append trust their callers for the rest
// (Transformer::Prefill / Step check the token and the vocabulary size).
//
// Logits must be finite: Sample throws NonFiniteLogits for NaN or +-Inf (one pass over the
// exponent bits, far cheaper than the head matmul that wrote them). With finite logits
// every step below stays finite at any temperature, so the best id always survives the
// filters and the draw never runs off its candidates: the repetition penalty saturates at
// +-FLT_MAX, and the temperature divides (logit - max) in double, where even the smallest
// positive float temperature gives a finite quotient (a tiny temperature is argmax, ties
// shared).
#pragma once
#include <cstddef>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <vector>

namespace ternlm {

// Logits holding NaN or Inf: a std::domain_error (Python: ValueError).
class NonFiniteLogits : public std::domain_error {
 public:
  using std::domain_error::domain_error;
};

struct SamplingParams {
  float temperature = 0.0f;         // >= 0; 0 = greedy
  int64_t top_k = 0;                // >= 0; 0 = off
  float top_p = 1.0f;               // (0, 1]; 1 = off
  float min_p = 0.0f;               // [0, 1]; 0 = off
  float repetition_penalty = 1.0f;  // > 0; 1 = off

  // Throws std::invalid_argument naming the parameter and its allowed range.
  void Validate() const;
};

class Sampler {
 public:
  // Throws std::invalid_argument for parameters out of range (SamplingParams::Validate).
  explicit Sampler(uint64_t seed, const SamplingParams& params = {});

  const SamplingParams& params() const { return params_; }
  void SetParams(const SamplingParams& params);  // validates, as the constructor

  // Replaces the penalty history with ids [n] over a vocabulary of `vocab` tokens.
  // Throws std::invalid_argument for an id outside [0, vocab).
  void SetHistory(const int32_t* ids, size_t n, size_t vocab);
  // Adds one id to the history; requires 0 <= id < vocab().
  void Append(int32_t id) {
    if (seen_[size_t(id)]) return;
    seen_[size_t(id)] = 1;
    distinct_.push_back(id);  // never reallocates: capacity vocab() (SetHistory)
  }
  size_t vocab() const { return seen_.size(); }  // of the history; 0 before SetHistory

  // Next token id from logits [vocab()] (not modified), with params() and the history.
  // Throws std::invalid_argument before any SetHistory (vocab() == 0), NonFiniteLogits
  // ("logit <id> is nan") when a logit is NaN or Inf.
  int32_t Sample(const float* logits);
  // Verifies a drafted token (speculative decoding): returns `draft` when it is accepted,
  // else another token drawn from the same distribution with the draft removed, so that the
  // result is distributed as Sample's (greedy: the argmax either way). Throws as Sample.
  int32_t SampleDraft(const float* logits, int32_t draft);

 private:
  // The penalised, filtered distribution of logits: returns n and leaves the candidates in
  // order_[0, n) with unnormalised probabilities probs_[id]; 0 for greedy (temperature 0),
  // with the argmax in *best (set in every case).
  size_t Candidates(const float* logits, int32_t* best);
  double Uniform();  // [0, 1)

  std::mt19937_64 rng_;
  SamplingParams params_;
  std::vector<uint8_t> seen_;      // [vocab] history marks
  std::vector<int32_t> distinct_;  // ids marked in seen_
  std::vector<float> work_;        // [vocab] penalised logits
  std::vector<int32_t> order_;     // candidate ids, best first
  std::vector<double> probs_;      // [vocab] exp(logit - max logit)
};

}  // namespace ternlm
