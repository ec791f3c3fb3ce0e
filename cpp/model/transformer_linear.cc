// The layer linears' inputs: the per-linear input norm of linear_norm models, the online
// Hadamard rotation of rotate_inputs models (kernels/hadamard.h), and fused / unfused
// projections. Every layer linear quantizes its input as config().activation_quant says;
// the head keeps its format's own quantization (Transformer::Logits).
#include <cstring>

#include "kernels/hadamard.h"
#include "kernels/matmul.h"
#include "kernels/vector_ops.h"
#include "model/transformer.h"

namespace ternlm {

const float* Transformer::LinearInput(const std::vector<float>& norm, const float* in, size_t cols, size_t n) {
  if (norm.empty()) return in;
  float* out = s_.lin_in.get();
  ForEachToken(n, cols, [&](size_t t) {
    RmsNorm(in + t * cols, norm.data(), cols, config_.linear_norm_eps, out + t * cols);
  });
  return out;
}

// in [n, cols] <- in·H per row when the model rotates this site's input (a decode token
// costs one O(cols log cols) transform per site; models without rotation skip it here).
void Transformer::RotateInput(unsigned site, float* in, size_t cols, size_t n) {
  if (!(config_.rotate_inputs & site)) return;
  const size_t block = HadamardBlock(cols);  // nonzero: ModelConfig::Validate
  ForEachToken(n, cols, [&](size_t t) { HadamardRotate(in + t * cols, cols, block); });
}

// out[n, p.rows] = in[n, cols] · [pieces]ᵀ, each piece's columns at its offset in a row.
// With in_norms (never fused: weights.cc) each piece reads its own normalized input.
void Transformer::Project(const FusedProjection& p, const float* in, size_t n, float* out,
                          const std::vector<float>* in_norms) {
  if (p.is_fused()) {
    MatMul(p.fused, in, n, out, pool_, config_.activation_quant);
    return;
  }
  size_t offset = 0;
  for (size_t j = 0; j < p.pieces.size(); ++j) {
    const QuantizedMatrix& m = p.pieces[j];
    MatMul(m, in_norms ? LinearInput(in_norms[j], in, m.cols(), n) : in, n, s_.proj.get(), pool_,
           config_.activation_quant);
    for (size_t t = 0; t < n; ++t)
      std::memcpy(out + t * p.rows + offset, s_.proj.get() + t * m.rows(), m.rows() * sizeof(float));
    offset += m.rows();
  }
}

}  // namespace ternlm
