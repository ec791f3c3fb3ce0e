// The tensor schema: every tensor a model has, declared once (schema.cc's kTensors, in
// the manner of llama.cpp's per-architecture tensor tables and gemma.cpp's TensorInfo).
// One declaration gives a tensor's
//   canonical name   what loaders hand to the engine ("embed", "layers.3.q", ...)
//   role             embedding / head / norm / matrix: what the engine does with it
//   shape            in config dimensions (hidden, q_dim, kv_dim, intermediate, vocab, head_dim)
//   fusion           the fused projection it is a piece of (q|k|v -> qkv, gate|up -> gate_up)
//                    and its piece index, in output-row order
//   source names     its tensor name in a Hugging Face checkpoint and in a GGUF file
//   presence         which configs have it (BitNet's sub-norms, an untied lm_head)
// Everything else reads the schema: the Python loaders (python/ternlm/schema.py, over
// _core.tensor_schema), the engine's weight assembly and matrix lookup (weights.h).
//
// One table serves every architecture: Llama-family models differ in which tensors they
// have, not in the names or shapes of those they share, so a row's presence predicate
// (on the config: arch, tie_word_embeddings, attention_bias, o_bias, mlp_bias, qk_norm,
// linear_norm) says which models have it; a linear's input norm is also left out for the
// linears in plain_linears (TensorSpecs). Adding a tensor (as the Qwen2 q/k/v biases, the Qwen3 per-head q/k
// norms, BitLinear's input norms were) is one row in kTensors plus its numerics: a TensorId, the
// member of Weights that holds it (weights.h, its slot in weights.cc) and the code that
// uses it in the forward pass. An architecture whose checkpoints name a shared tensor
// differently would get its own row for it, with its own predicate.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace ternlm {

// Every tensor kind the engine knows (one per row of kTensors).
enum class TensorId : uint8_t {
  kEmbed, kLmHead, kNorm,
  kAttnNorm, kQ, kK, kV, kAttnSubNorm, kO,
  kFfnNorm, kGate, kUp, kFfnSubNorm, kDown,
  kQBias, kKBias, kVBias,             // attention_bias (Qwen2)
  kQNorm, kKNorm,                     // qk_norm (Qwen3)
  kQInNorm, kKInNorm, kVInNorm, kOInNorm, kGateInNorm, kUpInNorm, kDownInNorm,  // linear_norm
  kOBias,                             // o_bias (attention_bias on Llama, Qwen3, BitNet)
  kGateBias, kUpBias, kDownBias,      // mlp_bias (Llama)
};

enum class TensorScope : uint8_t {
  kModel,  // one per model
  kLayer,  // one per layer, named "layers.{i}.<name>"
};

enum class TensorRole : uint8_t {
  kEmbedding,  // [vocab, hidden] matrix whose rows are looked up
  kHead,       // [vocab, hidden] output projection
  kNorm,       // float vector: RMSNorm weight
  kMatrix,     // layer projection [out, in]
  kBias,       // float vector: added to a projection's output
};
const char* RoleName(TensorRole role);  // "embedding", "head", "norm", "matrix", "bias"
// Stored as a QuantizedMatrix in some weight format; the other roles are float vectors.
inline bool HasFormat(TensorRole role) {
  return role == TensorRole::kEmbedding || role == TensorRole::kHead || role == TensorRole::kMatrix;
}

// A size in config terms; kNone is the missing second dimension of a vector.
enum class Dim : uint8_t { kNone, kVocab, kHidden, kQDim, kKvDim, kIntermediate, kHeadDim };
size_t Size(Dim d, const ModelConfig& c);

// Projections of the same input that the engine runs as one matmul.
enum class Fusion : uint8_t { kNone, kQkv, kGateUp };
const char* FusionName(Fusion f);  // "", "qkv", "gate_up"

// One row of the schema. Names of per-layer tensors hold "{i}" where the layer number goes.
struct TensorDecl {
  TensorId id;
  const char* name;       // canonical; per-layer tensors: the part after "layers.{i}."
  TensorScope scope;
  TensorRole role;
  Dim rows, cols;         // [rows, cols]; a vector has cols == Dim::kNone
  Fusion fusion;
  uint8_t piece;          // index in its fusion group (output-row order)
  const char* hf_name;    // Hugging Face safetensors key
  const char* gguf_name;  // GGUF tensor name (llama.cpp's naming)
  bool (*present)(const ModelConfig&);  // whether a config has this tensor
};

// A declaration resolved for one config and layer.
struct TensorSpec {
  const TensorDecl* decl = nullptr;
  std::string name;       // "layers.3.q"
  int layer = -1;         // -1 for model-wide tensors
  size_t rows = 0, cols = 0;  // cols == 0: a vector [rows]
  std::string hf_name, gguf_name;

  TensorId id() const { return decl->id; }
  TensorRole role() const { return decl->role; }
  Fusion fusion() const { return decl->fusion; }
  size_t piece() const { return decl->piece; }
  bool is_vector() const { return cols == 0; }
};

// The tensors of a model with config c, in load order: the rows of kTensors top to
// bottom, the per-layer rows repeated for each layer where they stand. c must be valid.
std::vector<TensorSpec> TensorSpecs(const ModelConfig& c);

// The spec named `name` in specs, or nullptr.
const TensorSpec* FindSpec(const std::vector<TensorSpec>& specs, const std::string& name);

// Rows of the fused output before piece `piece` of group `fusion` (the piece's first row).
size_t RowsBeforePiece(const ModelConfig& c, Fusion fusion, size_t piece);

}  // namespace ternlm
