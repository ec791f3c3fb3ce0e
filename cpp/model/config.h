// ModelConfig: the C++ mirror of python/ternlm/config.py's ModelConfig (built from
// its to_dict() in bind_model.cc). Shapes of every canonical tensor follow from it.
#pragma once
#include <cstddef>
#include <string>

namespace ternlm {

enum class Arch { kLlama, kBitNet };
enum class HiddenAct { kSilu, kRelu2 };

// Llama 3 frequency-dependent RoPE scaling (transformers' _compute_llama3_parameters).
struct Llama3RopeScaling {
  bool enabled = false;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Arch arch = Arch::kLlama;
  size_t vocab_size = 0;
  size_t hidden_size = 0;
  size_t intermediate_size = 0;
  size_t num_layers = 0;
  size_t num_heads = 0;
  size_t num_kv_heads = 0;
  size_t head_dim = 0;
  float rms_norm_eps = 1e-5f;
  double rope_theta = 10000.0;
  Llama3RopeScaling rope_scaling;
  HiddenAct hidden_act = HiddenAct::kSilu;
  bool tie_word_embeddings = false;

  size_t q_dim() const { return num_heads * head_dim; }      // rows of q, cols of o
  size_t kv_dim() const { return num_kv_heads * head_dim; }  // rows of k and v
  bool is_bitnet() const { return arch == Arch::kBitNet; }

  // Throws std::invalid_argument naming the field when the numbers cannot describe a
  // model (zero sizes, heads not a multiple of kv heads, odd head_dim, ...).
  void Validate() const;
};

// RoPE inverse frequencies inv_freq[i] = theta^(-2i/head_dim), i < head_dim/2, with
// Llama 3 scaling applied when enabled; rounded to f32 as transformers stores them.
void RopeInverseFrequencies(const ModelConfig& c, float* inv_freq /* [head_dim/2] */);

}  // namespace ternlm
