// INT8 weights with one f32 scale per row: w[r, c] = row_multiplier[r] * q[r, c], q in
// [-127, 127] (-128 is invalid: the kernels apply the activation's sign to the weight, and
// -(-128) does not fit in int8). A near-lossless embedding / head at 8 bits per weight.
//
// Matrix layout ("q8" uint8, the int8 bit patterns; stored as in memory): rows padded with
// zero rows to a multiple of 16 and cut into tiles of 16 rows (formats/tiles.h), columns
// padded with zeros to a multiple of 32 (one activation block). A tile is padded_cols/4
// blocks of 64 bytes; block b covers columns 4b .. 4b+3 of the tile's 16 rows:
//
//   byte 4r + i of the block (row r = 0..15 of the tile, i = 0..3) = q of column 4b + i
//
// so the 32-bit lane r of a block holds row r's four weights and one byte-dot with the
// four activation bytes broadcast to every lane gives all 16 rows' partial sums. The
// scales are the "row_multiplier" float32 [rows] (as ternary's).
//
// MatMul numerics: activations int8 per block of 32 inputs (s_b = 127 / max(max|x_b|, 1e-5),
// q = round_half_even(x s_b), kernels/activations.h); the block dots I[r, b] =
// sum_{c in b} q_w[r, c] * q_x[c] are exact int32, and
//   y[r] = row_multiplier[r] * sum_b float(I[r, b]) * (1 / s_b)   (f32, b in order).
#pragma once
#include <cstddef>
#include <cstdint>

#include "formats/tiles.h"

namespace ternlm {

inline size_t Int8PaddedCols(size_t cols) { return (cols + 31) / 32 * 32; }
inline size_t Int8TileBytes(size_t padded_cols) { return padded_cols * kTileRows; }
// Byte of (row r, column c).
inline size_t Int8ByteIndex(size_t padded_cols, size_t r, size_t c) {
  return (r / kTileRows) * Int8TileBytes(padded_cols) + (c / 4) * 64 + 4 * (r % kTileRows) + c % 4;
}

}  // namespace ternlm
