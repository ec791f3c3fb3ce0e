// Weights: every matrix and norm weight of a model, owned, in the layout the forward
// pass reads (transformer.h); and their assembly from tensors under canonical names,
// checked against the tensor schema (schema.h).
#pragma once
#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "formats/quantized_matrix.h"
#include "model/config.h"

namespace ternlm {

// Projections of the same input are fused row-wise when their formats agree
// (ConcatRows), so the activations are prepared once per fused MatMul:
//   qkv      = [q; k; v]   rows q_dim + 2*kv_dim   -> output row [q | k | v]
//   gate_up  = [gate; up]  rows 2*intermediate     -> output row [gate | up]
// When the formats differ, or each piece normalizes its own input (linear_norm), the
// pieces stay separate matrices and their outputs are copied into the same row layout.
struct FusedProjection {
  QuantizedMatrix fused;                // all pieces stacked; empty when they are not fused
  std::vector<QuantizedMatrix> pieces;  // the pieces unfused, in output-row order; else empty
  size_t rows = 0;                      // total output rows
  bool is_fused() const { return pieces.empty(); }
  size_t nbytes() const;
};

// The layer linears in the order of LayerWeights::in_norm.
enum LayerLinear : size_t { kLinearQ, kLinearK, kLinearV, kLinearO, kLinearGate, kLinearUp, kLinearDown,
                            kLayerLinears };

struct LayerWeights {
  std::vector<float> attn_norm;      // [hidden]
  FusedProjection qkv;               // [q_dim + 2*kv_dim, hidden]
  std::vector<float> attn_sub_norm;  // [q_dim], BitNet only
  QuantizedMatrix o;                 // [hidden, q_dim]
  std::vector<float> ffn_norm;       // [hidden]
  FusedProjection gate_up;           // [2*intermediate, hidden]
  std::vector<float> ffn_sub_norm;   // [intermediate], BitNet only
  QuantizedMatrix down;              // [hidden, intermediate]
  std::vector<float> q_bias, k_bias, v_bias;  // [q_dim], [kv_dim], [kv_dim]: attention_bias only
  std::vector<float> q_norm, k_norm;          // [head_dim]: qk_norm only
  std::vector<float> o_bias;                  // [hidden]: o_bias only
  std::vector<float> gate_bias, up_bias, down_bias;  // [intermediate] x2, [hidden]: mlp_bias only
  // linear_norm only: each linear's input RMSNorm weight [its cols], by LayerLinear (empty
  // for a linear in plain_linears: its input is used as it is).
  std::array<std::vector<float>, kLayerLinears> in_norm;
};

struct Weights {
  QuantizedMatrix embed;             // [vocab, hidden]; rows read with DequantizeRow
  std::vector<LayerWeights> layers;
  std::vector<float> norm;           // [hidden]
  QuantizedMatrix lm_head;           // [vocab, hidden]; empty when tied to embed
  const QuantizedMatrix& head() const { return lm_head.rows() ? lm_head : embed; }
  size_t nbytes() const;
};

// A float vector as its container holds it: shape (for messages) and values as f32.
struct FloatVector {
  std::vector<size_t> shape;
  std::vector<float> values;
};

// Where the tensors come from, by canonical name (bind_model.cc: a Python dict). An
// implementation raises its own type errors when a value is not of the kind asked for.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual std::vector<std::string> Names() const = 0;
  virtual bool Contains(const std::string& name) const = 0;
  // The matrix stored under name, still owned by the source (AssembleWeights moves it out).
  virtual QuantizedMatrix& Matrix(const std::string& name) = 0;
  virtual FloatVector Vector(const std::string& name) const = 0;  // copied
};

// The weights of a model with config c from `source`. First every tensor of the schema
// is checked (present, right shape, finite norms, no matrix given twice, nothing
// unexpected), with nothing moved, so an error leaves the source untouched; then the
// storage of every matrix is moved out of the source (each left an empty (0, 0) matrix)
// and q/k/v and gate/up are fused. Throws std::invalid_argument naming the tensor.
Weights AssembleWeights(const ModelConfig& c, TensorSource& source);

// A copy of the matrix stored under its canonical name ("embed", "layers.0.q"; a fused
// piece is cut out of its projection). Throws std::out_of_range for a name that is no
// matrix of this model (an unknown name, a norm, lm_head when tied).
QuantizedMatrix CopyMatrix(const Weights& w, const ModelConfig& c, const std::string& name);

}  // namespace ternlm
