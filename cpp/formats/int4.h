// INT4 packed layout (group-wise asymmetric, w = scale * q + min, q in [0,15]).
//
// Each row of cols codes q is padded with zeros to a multiple of 128 and stored
// in 64-byte blocks of 128 weights:
//
//   byte j of a block (j = 0..63):   bits 7..4 = q[j + 64]   bits 3..0 = q[j]
//
// so (block & 15) over bytes j..j+V gives weights j..j+V and (block >> 4) gives
// 64+j..64+j+V, contiguous for any SIMD width up to 512 bits. A group of 32
// weights is therefore 32 contiguous bytes, one nibble each. Scales and mins are
// fp16 bits, one per group of group_size (32, 64 or 128) weights along the row:
// [rows, padded_cols / group_size], padding groups 0.
//
// MatMul numerics: activations are quantized to int8 per block of 32 inputs
// (s_b = 127 / max(max|x_b|, 1e-5), q = clamp(round_half_even(x s_b), -128, 127)),
// the 32-wide integer dots are exact, and
//   y = sum_g scale_g * sum_{b in g} dot_b / s_b  +  min_g * sum_{b in g} sum(q_b) / s_b   (f32),
//   i.e. the min term sums the same dequantized int8 activations as the dots (GGUF Q8_1).
#pragma once
#include <cstddef>
#include <cstdint>

namespace ternlm {

constexpr size_t kInt4BlockWeights = 128;
constexpr size_t kInt4ActBlock = 32;  // activation quantization block

inline size_t Int4PaddedCols(size_t cols) { return (cols + 127) / 128 * 128; }

// q: n codes in [0,15]; out: Int4PaddedCols(n)/2 bytes.
void PackInt4Row(const uint8_t* q, size_t n, uint8_t* out);
void UnpackInt4Row(const uint8_t* packed, size_t n, uint8_t* out);

}  // namespace ternlm
