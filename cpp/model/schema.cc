#include "model/schema.h"

#include <stdexcept>

namespace ternlm {
namespace {

bool BitNetOnly(const ModelConfig& c) { return c.arch == Arch::kBitNet; }
bool Untied(const ModelConfig& c) { return !c.tie_word_embeddings; }

using R = TensorRole;
using D = Dim;
using F = Fusion;

// Every tensor, once, in load order; per-layer rows are repeated for each layer where
// they stand. Source names: transformers' LlamaForCausalLM / BitNetForCausalLM state
// dict; llama.cpp's LLM_ARCH_LLAMA / LLM_ARCH_BITNET tensor names.
constexpr TensorDecl kTensors[] = {
// id                     name             layer  role          rows          cols           fusion        piece
//   Hugging Face key                                     GGUF name                     present
{TensorId::kEmbed,       "embed",          false, R::kEmbedding, D::kVocab,    D::kHidden,    F::kNone,   0,
   "model.embed_tokens.weight",                        "token_embd.weight",           nullptr},
{TensorId::kAttnNorm,    "attn_norm",      true,  R::kNorm,     D::kHidden,    D::kNone,      F::kNone,   0,
   "model.layers.{i}.input_layernorm.weight",          "blk.{i}.attn_norm.weight",    nullptr},
{TensorId::kQ,           "q",              true,  R::kMatrix,   D::kQDim,      D::kHidden,    F::kQkv,    0,
   "model.layers.{i}.self_attn.q_proj.weight",         "blk.{i}.attn_q.weight",       nullptr},
{TensorId::kK,           "k",              true,  R::kMatrix,   D::kKvDim,     D::kHidden,    F::kQkv,    1,
   "model.layers.{i}.self_attn.k_proj.weight",         "blk.{i}.attn_k.weight",       nullptr},
{TensorId::kV,           "v",              true,  R::kMatrix,   D::kKvDim,     D::kHidden,    F::kQkv,    2,
   "model.layers.{i}.self_attn.v_proj.weight",         "blk.{i}.attn_v.weight",       nullptr},
{TensorId::kAttnSubNorm, "attn_sub_norm",  true,  R::kNorm,     D::kQDim,      D::kNone,      F::kNone,   0,
   "model.layers.{i}.self_attn.attn_sub_norm.weight",  "blk.{i}.attn_sub_norm.weight", BitNetOnly},
{TensorId::kO,           "o",              true,  R::kMatrix,   D::kHidden,    D::kQDim,      F::kNone,   0,
   "model.layers.{i}.self_attn.o_proj.weight",         "blk.{i}.attn_output.weight",  nullptr},
{TensorId::kFfnNorm,     "ffn_norm",       true,  R::kNorm,     D::kHidden,    D::kNone,      F::kNone,   0,
   "model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight",     nullptr},
{TensorId::kGate,        "gate",           true,  R::kMatrix,   D::kIntermediate, D::kHidden, F::kGateUp, 0,
   "model.layers.{i}.mlp.gate_proj.weight",            "blk.{i}.ffn_gate.weight",     nullptr},
{TensorId::kUp,          "up",             true,  R::kMatrix,   D::kIntermediate, D::kHidden, F::kGateUp, 1,
   "model.layers.{i}.mlp.up_proj.weight",              "blk.{i}.ffn_up.weight",       nullptr},
{TensorId::kFfnSubNorm,  "ffn_sub_norm",   true,  R::kNorm,     D::kIntermediate, D::kNone,   F::kNone,   0,
   "model.layers.{i}.mlp.ffn_sub_norm.weight",         "blk.{i}.ffn_sub_norm.weight", BitNetOnly},
{TensorId::kDown,        "down",           true,  R::kMatrix,   D::kHidden,    D::kIntermediate, F::kNone, 0,
   "model.layers.{i}.mlp.down_proj.weight",            "blk.{i}.ffn_down.weight",     nullptr},
{TensorId::kNorm,        "norm",           false, R::kNorm,     D::kHidden,    D::kNone,      F::kNone,   0,
   "model.norm.weight",                                "output_norm.weight",          nullptr},
{TensorId::kLmHead,      "lm_head",        false, R::kHead,     D::kVocab,     D::kHidden,    F::kNone,   0,
   "lm_head.weight",                                   "output.weight",               Untied},
};

bool Present(const TensorDecl& d, const ModelConfig& c) { return !d.present || d.present(c); }

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
  s.name = d.per_layer ? "layers." + std::to_string(layer) + "." + d.name : d.name;
  s.rows = Size(d.rows, c);
  s.cols = Size(d.cols, c);
  s.hf_name = ForLayer(d.hf_name, layer);
  s.gguf_name = ForLayer(d.gguf_name, layer);
  return s;
}

}  // namespace

const char* RoleName(TensorRole role) {
  switch (role) {
    case TensorRole::kEmbedding: return "embedding";
    case TensorRole::kHead: return "head";
    case TensorRole::kNorm: return "norm";
    case TensorRole::kMatrix: return "matrix";
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
    if (!d.per_layer) {
      if (Present(d, c)) out.push_back(Resolve(d, c, -1));
      continue;
    }
    if (i > 0 && kTensors[i - 1].per_layer) continue;  // the run was emitted at its first row
    size_t end = i;
    while (end < n && kTensors[end].per_layer) ++end;
    for (size_t layer = 0; layer < c.num_layers; ++layer)
      for (size_t j = i; j < end; ++j)
        if (Present(kTensors[j], c)) out.push_back(Resolve(kTensors[j], c, int(layer)));
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
    if (d.fusion == fusion && d.piece < piece && Present(d, c)) rows += Size(d.rows, c);
  return rows;
}

}  // namespace ternlm
