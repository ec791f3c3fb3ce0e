// INT4 layouts (group-wise asymmetric, w = scale * q + min, q in [0,15]).
//
// 1. The row codec (PackInt4Row; QuantizedMatrix layout_version 1): each row padded with
//    zeros to a multiple of 128, in 64-byte blocks of 128 weights; byte j of a block
//    holds q[j] in bits 3..0 and q[j + 64] in bits 7..4. Scales/mins [rows, groups].
//
// 2. The matrix layout of a QuantizedMatrix (layout_version 2), made for the kernels:
//    rows padded with zero rows to a multiple of 16 and cut into tiles of 16 rows,
//    columns padded to a multiple of 32 (no padding: the group divides cols). A tile is stored contiguously as
//    padded_cols/8 blocks of 64 bytes; block b covers columns 8b .. 8b+7 of its 16 rows:
//
//      byte 4r + i of the block (row r = 0..15 of the tile, i = 0..3):
//        bits 3..0 = q of column 8b + i,  bits 7..4 = q of column 8b + 4 + i
//
//    so the 32-bit lane r of a block ANDed with 0x0F0F0F0F holds row r's codes of
//    columns 8b..8b+3 and (lane >> 4) & 0x0F0F0F0F those of 8b+4..8b+7: one vpdpbusd
//    each, with the four activation bytes broadcast to all lanes, gives the 16 rows'
//    integer dots; four blocks make one 32-column activation block. Scales and mins
//    are fp16 bits in the same tile order, [tile][group][16 rows] (padding rows and
//    groups 0), so one 32-byte load gives a group's 16 row scales as a vector.
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


// Row codec (layout 1): rows padded to 128 weights.
inline size_t Int4CodecPaddedCols(size_t cols) { return (cols + 127) / 128 * 128; }
// Matrix layout: columns padded to a multiple of 32 (one activation block); since the
// group (32/64/128) divides cols, that is cols itself for every valid matrix.
inline size_t Int4PaddedCols(size_t cols) { return (cols + 31) / 32 * 32; }

constexpr size_t kInt4TileRows = 16;
// Bytes of one tile (16 rows) of codes for padded_cols columns.
inline size_t Int4TileBytes(size_t padded_cols) { return padded_cols * 8; }
// Byte holding (row r, column c) in the matrix layout; *shift = 0 or 4 (its nibble).
inline size_t Int4ByteIndex(size_t padded_cols, size_t r, size_t c, unsigned* shift) {
  *shift = (c % 8) >= 4 ? 4u : 0u;
  return (r / 16) * Int4TileBytes(padded_cols) + (c / 8) * 64 + 4 * (r % 16) + c % 4;
}
// Index of the scale/min of (row r, group g), groups_per_row = padded_cols / group.
inline size_t Int4ScaleIndex(size_t groups_per_row, size_t r, size_t g) {
  return (r / 16) * groups_per_row * 16 + g * 16 + r % 16;
}

// Row codec (layout 1, read when converting old files): packed holds
// Int4CodecPaddedCols(n)/2 bytes; out: n codes in [0,15].
void UnpackInt4Row(const uint8_t* packed, size_t n, uint8_t* out);

}  // namespace ternlm
