// QuantizedMatrix: a weight matrix W [rows = out, cols = in] stored in one of
// ternlm's formats, ready for MatMul (kernels/matmul.h). The packed layout of
// each format is drawn in its own header under formats/.
//
// CONTRACT (shared by kernels/, model/ and python/; keep the names):
//   WeightFormat           kF32, kBF16, kInt4, kTernary
//   QuantizedMatrix        format(), rows(), cols(), group_size(), nbytes(), bits_per_weight()
//   Quantize(...)          f32 [rows, cols] -> any format (DESIGN.md §3 numerics)
//   Dequantize / DequantizeRow
//   FromTernary(...)       int8 {-1,0,1} + per-row output multiplier (already-ternary checkpoints)
//   FromInt4(...)          q uint8 [rows, cols] in [0,15] + fp16 scale/min per group (GGUF Q4_1, lossless)
//   ConcatRows(...)        stack matrices with equal cols and format (fused q/k/v, gate/up)
//   Buffers()/FromBuffers  the raw arrays, for save/load without conversion
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ternlm {

enum class WeightFormat : int { kF32 = 0, kBF16 = 1, kInt4 = 2, kTernary = 3 };

const char* FormatName(WeightFormat f);               // "f32", "bf16", "int4", "ternary"
WeightFormat ParseFormat(const std::string& name);    // throws std::invalid_argument

}  // namespace ternlm
