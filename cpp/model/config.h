// ModelConfig: the C++ mirror of python/ternlm/config.py's ModelConfig, parsed here from
// its to_dict() (ParseModelConfig over a ConfigValues view of the dict). Shapes of every
// canonical tensor follow from it (model/schema.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/activations.h"

namespace ternlm {

enum class Arch { kLlama, kBitNet };
enum class HiddenAct { kSilu, kRelu2 };
// The input sites of a layer's linears that ModelConfig.rotate_inputs may name.
enum RotateSite : unsigned { kRotateQkv = 1, kRotateO = 2, kRotateGateUp = 4, kRotateDown = 8 };
const char* ArchName(Arch arch);  // "llama", "bitnet": the names of ModelConfig.arch

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
  // Architecture features beyond Llama's blocks (each adds tensors: model/schema.cc).
  bool attention_bias = false;  // q, k, v projections have biases (Qwen2)
  bool qk_norm = false;         // per-head RMSNorm of q and k before RoPE (Qwen3)
  size_t sliding_window = 0;    // each query sees its last `sliding_window` positions (Mistral); 0: all
  // With a window: full_attention[l] marks a layer that sees every position (Qwen2 / Qwen3
  // layer_types); empty or shorter than num_layers: the others slide.
  std::vector<bool> full_attention;
  bool o_bias = false;          // the o projection has a bias (attention_bias on Llama, Qwen3, BitNet)
  bool mlp_bias = false;        // gate, up and down have biases (Llama's mlp_bias)
  // transformers' BitNet quantizer with use_rms_norm: every layer linear RMS-normalizes its
  // own input first (BitLinear's rms_norm, a weight per linear, eps linear_norm_eps).
  bool linear_norm = false;
  float linear_norm_eps = 1e-6f;
  // With linear_norm: the layer linears ("layers.3.o", sorted) left float by the quantizer's
  // modules_to_not_convert, which take their input as it is (no input norm tensor).
  std::vector<std::string> plain_linears;
  // Models trained with rotated and quantized activations (QuEST; ternlm distill's 4-bit
  // modes). rotate_inputs: the RotateSite bits whose input every layer rotates online
  // (x <- x·H, kernels/hadamard.h; the weights are stored rotated), parsed from the names
  // "qkv", "o", "gate_up", "down" (comma-separated). activation_quant: how every layer
  // linear quantizes its input (kernels/activations.h); the head keeps its format's own.
  unsigned rotate_inputs = 0;
  ActivationQuant activation_quant = ActivationQuant::kFormat;

  size_t q_dim() const { return num_heads * head_dim; }      // rows of q, cols of o
  size_t kv_dim() const { return num_kv_heads * head_dim; }  // rows of k and v
  bool is_bitnet() const { return arch == Arch::kBitNet; }
  // The window layer `layer` attends over (0: every position).
  size_t WindowOf(size_t layer) const {
    return layer < full_attention.size() && full_attention[layer] ? 0 : sliding_window;
  }
  bool IsPlainLinear(const std::string& name) const;  // name in plain_linears

  // Throws std::invalid_argument naming the field when the numbers cannot describe a
  // model (zero sizes, heads not a multiple of kv heads, odd head_dim, ...).
  void Validate() const;
};

// A read-only view of key/value pairs (the binding implements it over a Python dict), so
// the config is parsed here and nowhere else. Absent keys and None values are "not Has".
class ConfigValues {
 public:
  virtual ~ConfigValues() = default;
  virtual bool Has(const std::string& key) const = 0;
  virtual int64_t Int(const std::string& key) const = 0;
  virtual double Number(const std::string& key) const = 0;
  virtual bool Bool(const std::string& key) const = 0;
  virtual std::string Text(const std::string& key) const = 0;
  virtual std::unique_ptr<ConfigValues> Group(const std::string& key) const = 0;  // nested object
  virtual std::vector<int64_t> Ints(const std::string& key) const = 0;       // a list of integers
  virtual std::vector<std::string> Texts(const std::string& key) const = 0;  // a list of strings
};

// The fields of python/ternlm/config.py's ModelConfig.to_dict() that the engine uses (the
// rest are ignored); then Validate(). Throws std::invalid_argument naming the field.
// A new field: its member above, one line in ParseModelConfig, and its check in Validate.
ModelConfig ParseModelConfig(const ConfigValues& v);

// RoPE inverse frequencies inv_freq[i] = theta^(-2i/head_dim), i < head_dim/2, with
// Llama 3 scaling applied when enabled; rounded to f32 as transformers stores them.
void RopeInverseFrequencies(const ModelConfig& c, float* inv_freq /* [head_dim/2] */);

}  // namespace ternlm
