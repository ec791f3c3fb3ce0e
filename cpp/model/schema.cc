#include "model/schema.h"

#include <stdexcept>

namespace ternlm {
namespace {

// Which configs have a tensor.
bool Always(const ModelConfig&) { return true; }
bool BitNetOnly(const ModelConfig& c) { return c.arch == Arch::kBitNet; }
bool Untied(const ModelConfig& c) { return !c.tie_word_embeddings; }
bool QkvBias(const ModelConfig& c) { return c.attention_bias; }
bool QkNorm(const ModelConfig& c) { return c.qk_norm; }
bool LinearNorm(const ModelConfig& c) { return c.linear_norm; }
bool OBias(const ModelConfig& c) { return c.o_bias; }
bool MlpBias(const ModelConfig& c) { return c.mlp_bias; }

using Id = TensorId;
using S = TensorScope;
using R = TensorRole;
using D = Dim;
using F = Fusion;

// Every tensor, once, in load order; per-layer rows are repeated for each layer where
// they stand. Source names: transformers' LlamaForCausalLM / BitNetForCausalLM /
// Qwen2ForCausalLM / Qwen3ForCausalLM / MistralForCausalLM state dict (the BitNet
// quantizer's BitLinear keeps its input norm as <linear>.rms_norm.weight); llama.cpp's
// LLM_ARCH_LLAMA / LLM_ARCH_BITNET / LLM_ARCH_QWEN2 / LLM_ARCH_QWEN3 tensor names (the
// linear input norms have no GGUF counterpart).
constexpr TensorDecl kTensors[] = {
// id              name             scope      role           rows              cols              fusion       piece
//   Hugging Face key                                  GGUF name                       present
{Id::kEmbed,       "embed",         S::kModel, R::kEmbedding, D::kVocab,        D::kHidden,       F::kNone,    0,
   "model.embed_tokens.weight",                        "token_embd.weight",            Always},
{Id::kAttnNorm,    "attn_norm",     S::kLayer, R::kNorm,      D::kHidden,       D::kNone,         F::kNone,    0,
   "model.layers.{i}.input_layernorm.weight",          "blk.{i}.attn_norm.weight",     Always},
{Id::kQ,           "q",             S::kLayer, R::kMatrix,    D::kQDim,         D::kHidden,       F::kQkv,     0,
   "model.layers.{i}.self_attn.q_proj.weight",         "blk.{i}.attn_q.weight",        Always},
{Id::kK,           "k",             S::kLayer, R::kMatrix,    D::kKvDim,        D::kHidden,       F::kQkv,     1,
   "model.layers.{i}.self_attn.k_proj.weight",         "blk.{i}.attn_k.weight",        Always},
{Id::kV,           "v",             S::kLayer, R::kMatrix,    D::kKvDim,        D::kHidden,       F::kQkv,     2,
   "model.layers.{i}.self_attn.v_proj.weight",         "blk.{i}.attn_v.weight",        Always},
{Id::kQBias,       "q_bias",        S::kLayer, R::kBias,      D::kQDim,         D::kNone,         F::kNone,    0,
   "model.layers.{i}.self_attn.q_proj.bias",           "blk.{i}.attn_q.bias",          QkvBias},
{Id::kKBias,       "k_bias",        S::kLayer, R::kBias,      D::kKvDim,        D::kNone,         F::kNone,    0,
   "model.layers.{i}.self_attn.k_proj.bias",           "blk.{i}.attn_k.bias",          QkvBias},
{Id::kVBias,       "v_bias",        S::kLayer, R::kBias,      D::kKvDim,        D::kNone,         F::kNone,    0,
   "model.layers.{i}.self_attn.v_proj.bias",           "blk.{i}.attn_v.bias",          QkvBias},
{Id::kQNorm,       "q_norm",        S::kLayer, R::kNorm,      D::kHeadDim,      D::kNone,         F::kNone,    0,
   "model.layers.{i}.self_attn.q_norm.weight",         "blk.{i}.attn_q_norm.weight",   QkNorm},
{Id::kKNorm,       "k_norm",        S::kLayer, R::kNorm,      D::kHeadDim,      D::kNone,         F::kNone,    0,
   "model.layers.{i}.self_attn.k_norm.weight",         "blk.{i}.attn_k_norm.weight",   QkNorm},
{Id::kQInNorm,     "q_in_norm",     S::kLayer, R::kNorm,      D::kHidden,       D::kNone,         F::kNone,    0,
   "model.layers.{i}.self_attn.q_proj.rms_norm.weight", "",                            LinearNorm},
{Id::kKInNorm,     "k_in_norm",     S::kLayer, R::kNorm,      D::kHidden,       D::kNone,         F::kNone,    0,
   "model.layers.{i}.self_attn.k_proj.rms_norm.weight", "",                            LinearNorm},
{Id::kVInNorm,     "v_in_norm",     S::kLayer, R::kNorm,      D::kHidden,       D::kNone,         F::kNone,    0,
   "model.layers.{i}.self_attn.v_proj.rms_norm.weight", "",                            LinearNorm},
{Id::kAttnSubNorm, "attn_sub_norm", S::kLayer, R::kNorm,      D::kQDim,         D::kNone,         F::kNone,    0,
   "model.layers.{i}.self_attn.attn_sub_norm.weight",  "blk.{i}.attn_sub_norm.weight", BitNetOnly},
{Id::kO,           "o",             S::kLayer, R::kMatrix,    D::kHidden,       D::kQDim,         F::kNone,    0,
   "model.layers.{i}.self_attn.o_proj.weight",         "blk.{i}.attn_output.weight",   Always},
{Id::kOBias,       "o_bias",        S::kLayer, R::kBias,      D::kHidden,       D::kNone,         F::kNone,    0,
   "model.layers.{i}.self_attn.o_proj.bias",           "blk.{i}.attn_output.bias",     OBias},
{Id::kOInNorm,     "o_in_norm",     S::kLayer, R::kNorm,      D::kQDim,         D::kNone,         F::kNone,    0,
   "model.layers.{i}.self_attn.o_proj.rms_norm.weight", "",                            LinearNorm},
{Id::kFfnNorm,     "ffn_norm",      S::kLayer, R::kNorm,      D::kHidden,       D::kNone,         F::kNone,    0,
   "model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight",      Always},
{Id::kGate,        "gate",          S::kLayer, R::kMatrix,    D::kIntermediate, D::kHidden,       F::kGateUp,  0,
   "model.layers.{i}.mlp.gate_proj.weight",            "blk.{i}.ffn_gate.weight",      Always},
{Id::kUp,          "up",            S::kLayer, R::kMatrix,    D::kIntermediate, D::kHidden,       F::kGateUp,  1,
   "model.layers.{i}.mlp.up_proj.weight",              "blk.{i}.ffn_up.weight",        Always},
{Id::kGateBias,    "gate_bias",     S::kLayer, R::kBias,      D::kIntermediate, D::kNone,         F::kNone,    0,
   "model.layers.{i}.mlp.gate_proj.bias",              "blk.{i}.ffn_gate.bias",        MlpBias},
{Id::kUpBias,      "up_bias",       S::kLayer, R::kBias,      D::kIntermediate, D::kNone,         F::kNone,    0,
   "model.layers.{i}.mlp.up_proj.bias",                "blk.{i}.ffn_up.bias",          MlpBias},
{Id::kGateInNorm,  "gate_in_norm",  S::kLayer, R::kNorm,      D::kHidden,       D::kNone,         F::kNone,    0,
   "model.layers.{i}.mlp.gate_proj.rms_norm.weight",   "",                             LinearNorm},
{Id::kUpInNorm,    "up_in_norm",    S::kLayer, R::kNorm,      D::kHidden,       D::kNone,         F::kNone,    0,
   "model.layers.{i}.mlp.up_proj.rms_norm.weight",     "",                             LinearNorm},
{Id::kFfnSubNorm,  "ffn_sub_norm",  S::kLayer, R::kNorm,      D::kIntermediate, D::kNone,         F::kNone,    0,
   "model.layers.{i}.mlp.ffn_sub_norm.weight",         "blk.{i}.ffn_sub_norm.weight",  BitNetOnly},
{Id::kDown,        "down",          S::kLayer, R::kMatrix,    D::kHidden,       D::kIntermediate, F::kNone,    0,
   "model.layers.{i}.mlp.down_proj.weight",            "blk.{i}.ffn_down.weight",      Always},
{Id::kDownBias,    "down_bias",     S::kLayer, R::kBias,      D::kHidden,       D::kNone,         F::kNone,    0,
   "model.layers.{i}.mlp.down_proj.bias",              "blk.{i}.ffn_down.bias",        MlpBias},
{Id::kDownInNorm,  "down_in_norm",  S::kLayer, R::kNorm,      D::kIntermediate, D::kNone,         F::kNone,    0,
   "model.layers.{i}.mlp.down_proj.rms_norm.weight",   "",                             LinearNorm},
{Id::kNorm,        "norm",          S::kModel, R::kNorm,      D::kHidden,       D::kNone,         F::kNone,    0,
   "model.norm.weight",                                "output_norm.weight",           Always},
{Id::kLmHead,      "lm_head",       S::kModel, R::kHead,      D::kVocab,        D::kHidden,       F::kNone,    0,
   "lm_head.weight",                                   "output.weight",                Untied},
};

// name with "{i}" replaced by the layer number.
std::string ForLayer(const char* name, int layer) {
  std::string s = name;
  const size_t at = s.find("{i}");
  if (at != std::string::npos) s.replace(at, 3, std::to_string(layer));
  return s;
}

TensorSpec Resolve(const TensorDecl& d, const ModelConfig& c, int layer) {
  TensorSpec s;
  s.decl = &d;
  s.layer = layer;
  s.name = d.scope == TensorScope::kLayer ? "layers." + std::to_string(layer) + "." + d.name : d.name;
  s.rows = Size(d.rows, c);
  s.cols = Size(d.cols, c);
  s.hf_name = ForLayer(d.hf_name, layer);
  s.gguf_name = ForLayer(d.gguf_name, layer);
  return s;
}

// An input norm ("o_in_norm") of a linear that c.plain_linears leaves without one.
bool PlainInput(const TensorDecl& d, const ModelConfig& c, size_t layer) {
  static const std::string kSuffix = "_in_norm";
  const std::string name = d.name;
  if (c.plain_linears.empty() || name.size() <= kSuffix.size() ||
      name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0)
    return false;
  return c.IsPlainLinear("layers." + std::to_string(layer) + "." + name.substr(0, name.size() - kSuffix.size()));
}

}  // namespace

const char* RoleName(TensorRole role) {
  switch (role) {
    case TensorRole::kEmbedding: return "embedding";
    case TensorRole::kHead: return "head";
    case TensorRole::kNorm: return "norm";
    case TensorRole::kMatrix: return "matrix";
    case TensorRole::kBias: return "bias";
  }
  return "?";
}

const char* FusionName(Fusion f) {
  switch (f) {
    case Fusion::kNone: return "";
    case Fusion::kQkv: return "qkv";
    case Fusion::kGateUp: return "gate_up";
  }
  return "?";
}

size_t Size(Dim d, const ModelConfig& c) {
  switch (d) {
    case Dim::kNone: return 0;
    case Dim::kVocab: return c.vocab_size;
    case Dim::kHidden: return c.hidden_size;
    case Dim::kQDim: return c.q_dim();
    case Dim::kKvDim: return c.kv_dim();
    case Dim::kIntermediate: return c.intermediate_size;
    case Dim::kHeadDim: return c.head_dim;
  }
  throw std::logic_error("Size: unknown Dim");
}

std::vector<TensorSpec> TensorSpecs(const ModelConfig& c) {
  std::vector<TensorSpec> out;
  const size_t n = sizeof(kTensors) / sizeof(kTensors[0]);
  for (size_t i = 0; i < n; ++i) {
    const TensorDecl& d = kTensors[i];
    if (d.scope == TensorScope::kModel) {
      if (d.present(c)) out.push_back(Resolve(d, c, -1));
      continue;
    }
    if (i > 0 && kTensors[i - 1].scope == TensorScope::kLayer) continue;  // emitted with its run
    size_t end = i;  // the run of per-layer rows [i, end)
    while (end < n && kTensors[end].scope == TensorScope::kLayer) ++end;
    for (size_t layer = 0; layer < c.num_layers; ++layer)
      for (size_t j = i; j < end; ++j)
        if (kTensors[j].present(c) && !PlainInput(kTensors[j], c, layer))
          out.push_back(Resolve(kTensors[j], c, int(layer)));
  }
  return out;
}

const TensorSpec* FindSpec(const std::vector<TensorSpec>& specs, const std::string& name) {
  for (const TensorSpec& s : specs)
    if (s.name == name) return &s;
  return nullptr;
}

size_t RowsBeforePiece(const ModelConfig& c, Fusion fusion, size_t piece) {
  size_t rows = 0;
  for (const TensorDecl& d : kTensors)
    if (d.fusion == fusion && d.piece < piece && d.present(c)) rows += Size(d.rows, c);
  return rows;
}

}  // namespace ternlm
