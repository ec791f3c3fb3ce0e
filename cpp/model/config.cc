#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/hadamard.h"

namespace ternlm {
namespace {

[[noreturn]] void Bad(const std::string& what) { throw std::invalid_argument("model config: " + what); }

size_t Count(const ConfigValues& v, const char* key) {
  if (!v.Has(key)) Bad(std::string("lacks '") + key + "'");
  const int64_t n = v.Int(key);
  if (n < 0) Bad(std::string(key) + " must be > 0, got " + std::to_string(n));
  return size_t(n);
}

double Required(const ConfigValues& v, const char* key, const char* where) {
  if (!v.Has(key)) Bad(std::string(where) + " lacks '" + key + "'");
  return v.Number(key);
}

Llama3RopeScaling ParseRopeScaling(const ConfigValues& s) {
  const std::string type = s.Has("rope_type") ? s.Text("rope_type") : "";
  if (type != "llama3") Bad("rope_scaling type '" + type + "' is not supported (llama3 only)");
  Llama3RopeScaling r;
  r.enabled = true;
  r.factor = Required(s, "factor", "rope_scaling");
  r.low_freq_factor = Required(s, "low_freq_factor", "rope_scaling");
  r.high_freq_factor = Required(s, "high_freq_factor", "rope_scaling");
  r.original_max_position_embeddings = Required(s, "original_max_position_embeddings", "rope_scaling");
  return r;
}

// "qkv,o,gate_up,down" (any subset, any order) -> RotateSite bits.
unsigned ParseRotateSites(const std::string& text) {
  static const struct { const char* name; unsigned bit; } kSites[] = {
      {"qkv", kRotateQkv}, {"o", kRotateO}, {"gate_up", kRotateGateUp}, {"down", kRotateDown}};
  unsigned bits = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string name = text.substr(start, end - start);
    unsigned bit = 0;
    for (const auto& site : kSites)
      if (name == site.name) bit = site.bit;
    if (!bit) Bad("rotate_inputs: '" + name + "' is not one of qkv, o, gate_up, down");
    bits |= bit;
    start = end + 1;
  }
  return bits;
}

}  // namespace

const char* ArchName(Arch arch) { return arch == Arch::kBitNet ? "bitnet" : "llama"; }

ModelConfig ParseModelConfig(const ConfigValues& v) {
  ModelConfig c;
  if (!v.Has("arch")) Bad("lacks 'arch'");
  const std::string arch = v.Text("arch");
  if (arch == ArchName(Arch::kLlama)) c.arch = Arch::kLlama;
  else if (arch == ArchName(Arch::kBitNet)) c.arch = Arch::kBitNet;
  else Bad("arch '" + arch + "' is not 'llama' or 'bitnet'");
  c.vocab_size = Count(v, "vocab_size");
  c.hidden_size = Count(v, "hidden_size");
  c.intermediate_size = Count(v, "intermediate_size");
  c.num_layers = Count(v, "num_layers");
  c.num_heads = Count(v, "num_heads");
  c.num_kv_heads = Count(v, "num_kv_heads");
  c.head_dim = Count(v, "head_dim");
  if (v.Has("rms_norm_eps")) c.rms_norm_eps = float(v.Number("rms_norm_eps"));
  if (v.Has("rope_theta")) c.rope_theta = v.Number("rope_theta");
  if (v.Has("rope_scaling")) c.rope_scaling = ParseRopeScaling(*v.Group("rope_scaling"));
  // Absent: each architecture's own activation.
  const std::string act = v.Has("hidden_act") ? v.Text("hidden_act") : c.arch == Arch::kLlama ? "silu" : "relu2";
  if (act == "silu") c.hidden_act = HiddenAct::kSilu;
  else if (act == "relu2") c.hidden_act = HiddenAct::kRelu2;
  else Bad("hidden_act '" + act + "' is not 'silu' or 'relu2'");
  if (v.Has("tie_word_embeddings")) c.tie_word_embeddings = v.Bool("tie_word_embeddings");
  if (v.Has("attention_bias")) c.attention_bias = v.Bool("attention_bias");
  if (v.Has("qk_norm")) c.qk_norm = v.Bool("qk_norm");
  if (v.Has("sliding_window")) {
    const int64_t w = v.Int("sliding_window");
    if (w < 0) Bad("sliding_window must be >= 0, got " + std::to_string(w));
    c.sliding_window = size_t(w);
  }
  if (v.Has("linear_norm")) c.linear_norm = v.Bool("linear_norm");
  if (v.Has("linear_norm_eps")) c.linear_norm_eps = float(v.Number("linear_norm_eps"));
  if (v.Has("o_bias")) c.o_bias = v.Bool("o_bias");
  if (v.Has("mlp_bias")) c.mlp_bias = v.Bool("mlp_bias");
  const std::vector<int64_t> full = v.Has("full_attention_layers") ? v.Ints("full_attention_layers")
                                                                   : std::vector<int64_t>();
  if (!full.empty()) {
    c.full_attention.assign(c.num_layers, false);
    for (const int64_t l : full) {
      if (l < 0 || size_t(l) >= c.num_layers)
        Bad("full_attention_layers holds layer " + std::to_string(l) + ", outside [0, " +
            std::to_string(c.num_layers) + ")");
      c.full_attention[size_t(l)] = true;
    }
  }
  if (v.Has("plain_linears")) {
    c.plain_linears = v.Texts("plain_linears");
    std::sort(c.plain_linears.begin(), c.plain_linears.end());
  }
  if (v.Has("rotate_inputs")) c.rotate_inputs = ParseRotateSites(v.Text("rotate_inputs"));
  const int64_t bits = v.Has("activation_bits") ? v.Int("activation_bits") : 8;
  const std::string clip = v.Has("activation_clip") ? v.Text("activation_clip") : "absmax";
  if (clip != "absmax" && clip != "gaussian") Bad("activation_clip '" + clip + "' is not 'absmax' or 'gaussian'");
  if (bits == 4)
    c.activation_quant = clip == "gaussian" ? ActivationQuant::kInt4Gaussian : ActivationQuant::kInt4Absmax;
  else if (bits != 8 || clip != "absmax")
    Bad("activation_bits " + std::to_string(bits) + " with activation_clip '" + clip +
        "': supported are 8 (absmax, the formats' own) and 4 (absmax or gaussian)");
  c.Validate();
  return c;
}

void ModelConfig::Validate() const {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("model config: " + what);
  };
  need(vocab_size > 0, "vocab_size must be > 0");
  need(hidden_size > 0, "hidden_size must be > 0");
  need(intermediate_size > 0, "intermediate_size must be > 0");
  need(num_layers > 0, "num_layers must be > 0");
  need(num_heads > 0 && num_kv_heads > 0, "num_heads and num_kv_heads must be > 0");
  need(num_heads % num_kv_heads == 0,
       "num_heads " + std::to_string(num_heads) + " is not a multiple of num_kv_heads " +
           std::to_string(num_kv_heads));
  need(head_dim > 0 && head_dim % 2 == 0,
       "head_dim must be even and > 0 (rotate-half RoPE), got " + std::to_string(head_dim));
  need(rms_norm_eps > 0 && std::isfinite(rms_norm_eps), "rms_norm_eps must be > 0");
  need(rope_theta > 0 && std::isfinite(rope_theta), "rope_theta must be > 0");
  need(!linear_norm || (linear_norm_eps > 0 && std::isfinite(linear_norm_eps)), "linear_norm_eps must be > 0");
  const struct { unsigned bit; const char* name; size_t width; } sites[] = {
      {kRotateQkv, "qkv", hidden_size}, {kRotateO, "o", q_dim()},
      {kRotateGateUp, "gate_up", hidden_size}, {kRotateDown, "down", intermediate_size}};
  for (const auto& site : sites)
    need(!(rotate_inputs & site.bit) || HadamardBlock(site.width) != 0,
         std::string("rotate_inputs: the input of ") + site.name + " has " + std::to_string(site.width) +
             " values, not a multiple of " + std::to_string(kMinHadamardBlock) +
             " (the Hadamard rotation needs n = m * 2^k with 2^k >= 16: kernels/hadamard.h)");
  need(!(rotate_inputs && linear_norm), "rotate_inputs cannot be combined with linear_norm");
  if (rope_scaling.enabled) {
    need(rope_scaling.factor > 0, "rope_scaling.factor must be > 0");
    need(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor,
         "rope_scaling.high_freq_factor must be > low_freq_factor");
    need(rope_scaling.low_freq_factor > 0, "rope_scaling.low_freq_factor must be > 0");
    need(rope_scaling.original_max_position_embeddings > 0,
         "rope_scaling.original_max_position_embeddings must be > 0");
  }
}

bool ModelConfig::IsPlainLinear(const std::string& name) const {
  return std::binary_search(plain_linears.begin(), plain_linears.end(), name);
}

void RopeInverseFrequencies(const ModelConfig& c, float* inv_freq) {
  const size_t half = c.head_dim / 2;
  const Llama3RopeScaling& s = c.rope_scaling;
  for (size_t i = 0; i < half; ++i) {
    // transformers: 1 / theta ** (arange(0, d, 2).float() / d), in f32.
    const float exponent = float(2 * i) / float(c.head_dim);
    double inv = 1.0 / std::pow(c.rope_theta, double(exponent));
    if (s.enabled) {
      const double pi = 3.14159265358979323846;
      const double low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
      const double high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
      const double wavelen = 2 * pi / inv;
      if (wavelen > low_wavelen) {
        inv = inv / s.factor;                 // low frequencies: scaled
      } else if (wavelen >= high_wavelen) {   // medium: interpolate
        const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        inv = (1 - smooth) * inv / s.factor + smooth * inv;
      }                                       // high frequencies: unchanged
    }
    inv_freq[i] = float(inv);
  }
}

}  // namespace ternlm
