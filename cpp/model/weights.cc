#include "model/weights.h"

#include <cmath>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

#include "formats/format_traits.h"
#include "model/schema.h"

namespace ternlm {

size_t FusedProjection::nbytes() const {
  size_t b = fused.nbytes();
  for (const QuantizedMatrix& m : pieces) b += m.nbytes();
  return b;
}

size_t Weights::nbytes() const {
  size_t b = embed.nbytes() + lm_head.nbytes() + norm.size() * 4;
  for (const LayerWeights& l : layers) {
    b += l.qkv.nbytes() + l.o.nbytes() + l.gate_up.nbytes() + l.down.nbytes() +
         4 * (l.attn_norm.size() + l.attn_sub_norm.size() + l.ffn_norm.size() + l.ffn_sub_norm.size() +
              l.q_bias.size() + l.k_bias.size() + l.v_bias.size() + l.q_norm.size() + l.k_norm.size() +
              l.o_bias.size() + l.gate_bias.size() + l.up_bias.size() + l.down_bias.size());
    for (const std::vector<float>& v : l.in_norm) b += 4 * v.size();
  }
  return b;
}

namespace {

// Where each declared tensor lives in Weights. W is Weights or const Weights.
template <class W>
auto& VectorOf(W& w, const TensorSpec& s) {  // the float vectors: norm weights and biases
  switch (s.id()) {
    case TensorId::kNorm: return w.norm;
    case TensorId::kQBias: return w.layers[s.layer].q_bias;
    case TensorId::kKBias: return w.layers[s.layer].k_bias;
    case TensorId::kVBias: return w.layers[s.layer].v_bias;
    case TensorId::kOBias: return w.layers[s.layer].o_bias;
    case TensorId::kGateBias: return w.layers[s.layer].gate_bias;
    case TensorId::kUpBias: return w.layers[s.layer].up_bias;
    case TensorId::kDownBias: return w.layers[s.layer].down_bias;
    case TensorId::kQNorm: return w.layers[s.layer].q_norm;
    case TensorId::kKNorm: return w.layers[s.layer].k_norm;
    case TensorId::kQInNorm: return w.layers[s.layer].in_norm[kLinearQ];
    case TensorId::kKInNorm: return w.layers[s.layer].in_norm[kLinearK];
    case TensorId::kVInNorm: return w.layers[s.layer].in_norm[kLinearV];
    case TensorId::kOInNorm: return w.layers[s.layer].in_norm[kLinearO];
    case TensorId::kGateInNorm: return w.layers[s.layer].in_norm[kLinearGate];
    case TensorId::kUpInNorm: return w.layers[s.layer].in_norm[kLinearUp];
    case TensorId::kDownInNorm: return w.layers[s.layer].in_norm[kLinearDown];
    case TensorId::kAttnNorm: return w.layers[s.layer].attn_norm;
    case TensorId::kAttnSubNorm: return w.layers[s.layer].attn_sub_norm;
    case TensorId::kFfnNorm: return w.layers[s.layer].ffn_norm;
    case TensorId::kFfnSubNorm: return w.layers[s.layer].ffn_sub_norm;
    default: throw std::logic_error("weights: no vector slot for '" + s.name + "'");
  }
}

template <class W>
auto& MatrixOf(W& w, const TensorSpec& s) {  // a matrix that is no fused piece
  switch (s.id()) {
    case TensorId::kEmbed: return w.embed;
    case TensorId::kLmHead: return w.lm_head;
    case TensorId::kO: return w.layers[s.layer].o;
    case TensorId::kDown: return w.layers[s.layer].down;
    default: throw std::logic_error("weights: no matrix slot for '" + s.name + "'");
  }
}

template <class W>
auto& ProjectionOf(W& w, int layer, Fusion f) {
  switch (f) {
    case Fusion::kQkv: return w.layers[layer].qkv;
    case Fusion::kGateUp: return w.layers[layer].gate_up;
    default: throw std::logic_error("weights: no fused projection slot");
  }
}

// "(16, 64)", "(63,)": a shape as Python writes a tuple, for messages.
std::string ShapeAsTuple(const std::vector<size_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

[[noreturn]] void Fail(const std::string& what) { throw std::invalid_argument("Transformer: " + what); }

void CheckMatrix(const TensorSpec& s, const QuantizedMatrix& m) {
  if (m.rows() != s.rows || m.cols() != s.cols)
    Fail("tensor '" + s.name + "' has shape " + ShapeAsTuple({m.rows(), m.cols()}) + ", expected " +
         ShapeAsTuple({s.rows, s.cols}) +
         (m.rows() == 0 ? " (empty: already moved into another Transformer?)" : ""));
}

std::vector<float> CheckedVector(const TensorSpec& s, FloatVector v) {
  const std::string what = std::string(RoleName(s.role())) + " weight '" + s.name + "'";  // "norm weight 'norm'"
  if (v.shape != std::vector<size_t>{s.rows})
    Fail(what + " has shape " + ShapeAsTuple(v.shape) + ", expected " + ShapeAsTuple({s.rows}));
  for (size_t i = 0; i < v.values.size(); ++i)
    if (!std::isfinite(v.values[i])) Fail(what + " has a non-finite value at index " + std::to_string(i));
  return std::move(v.values);
}

void RejectUnexpected(const ModelConfig& c, const std::vector<TensorSpec>& specs, const TensorSource& source) {
  std::set<std::string> expected;
  for (const TensorSpec& s : specs) expected.insert(s.name);
  for (const std::string& name : source.Names())
    if (!expected.count(name))
      Fail("unexpected tensor '" + name + "' for this " + ArchName(c.arch) + " config with " +
           std::to_string(c.num_layers) + " layers" +
           (name == "lm_head" ? " (tie_word_embeddings is true)" : ""));
}

// The pieces of one projection, in output-row order; concatenated when all formats (and
// int4 groups) agree, the format stacks rows (not nano) and the pieces share their input
// (no per-linear input norm).
FusedProjection Fuse(std::vector<QuantizedMatrix> pieces, bool shared_input) {
  FusedProjection p;
  bool same = shared_input;
  for (const QuantizedMatrix& m : pieces) {
    p.rows += m.rows();
    same = same && m.format() == pieces[0].format() && m.group_size() == pieces[0].group_size() &&
           !Traits(m.format()).low_rank;
  }
  if (same) {
    std::vector<const QuantizedMatrix*> ptrs;
    for (const QuantizedMatrix& m : pieces) ptrs.push_back(&m);
    p.fused = ConcatRows(ptrs);
  } else {
    p.pieces = std::move(pieces);
  }
  return p;
}

}  // namespace

Weights AssembleWeights(const ModelConfig& c, TensorSource& source) {
  const std::vector<TensorSpec> specs = TensorSpecs(c);
  Weights w;
  w.layers.resize(c.num_layers);

  // 1. Check every tensor; nothing is moved yet. Vectors (norms) are copied into place.
  std::set<const QuantizedMatrix*> seen;
  for (const TensorSpec& s : specs) {
    if (!source.Contains(s.name)) Fail("missing tensor '" + s.name + "'");
    if (!HasFormat(s.role())) {
      VectorOf(w, s) = CheckedVector(s, source.Vector(s.name));
      continue;
    }
    const QuantizedMatrix& m = source.Matrix(s.name);
    CheckMatrix(s, m);
    if (!seen.insert(&m).second) Fail("tensor '" + s.name + "' is the same object as another tensor");
  }
  RejectUnexpected(c, specs, source);

  // 2. Move the storage in (the source keeps an empty (0, 0) matrix: a defaulted move
  // would leave its shape behind with no storage), then fuse each projection.
  std::map<std::pair<int, Fusion>, std::vector<QuantizedMatrix>> projections;  // (layer, group) -> pieces
  for (const TensorSpec& s : specs) {
    if (!HasFormat(s.role())) continue;
    QuantizedMatrix& src = source.Matrix(s.name);
    QuantizedMatrix m = std::move(src);
    src = QuantizedMatrix();
    if (s.fusion() == Fusion::kNone) {
      MatrixOf(w, s) = std::move(m);
      continue;
    }
    std::vector<QuantizedMatrix>& pieces = projections[{s.layer, s.fusion()}];
    if (pieces.size() <= s.piece()) pieces.resize(s.piece() + 1);
    pieces[s.piece()] = std::move(m);
  }
  for (auto& [key, pieces] : projections)
    ProjectionOf(w, key.first, key.second) = Fuse(std::move(pieces), !c.linear_norm);
  return w;
}

QuantizedMatrix CopyMatrix(const Weights& w, const ModelConfig& c, const std::string& name) {
  const std::vector<TensorSpec> specs = TensorSpecs(c);
  const TensorSpec* s = FindSpec(specs, name);
  if (!s && name == "lm_head" && c.tie_word_embeddings) throw std::out_of_range("matrix: 'lm_head' is tied to 'embed'");
  if (!s || !HasFormat(s->role())) throw std::out_of_range("matrix: no matrix named '" + name + "'");
  if (s->fusion() == Fusion::kNone) {
    const QuantizedMatrix& m = MatrixOf(w, *s);
    return SliceRows(m, 0, m.rows());
  }
  const FusedProjection& p = ProjectionOf(w, s->layer, s->fusion());
  if (!p.is_fused()) return SliceRows(p.pieces[s->piece()], 0, s->rows);
  const size_t r0 = RowsBeforePiece(c, s->fusion(), s->piece());
  return SliceRows(p.fused, r0, r0 + s->rows);
}

}  // namespace ternlm
