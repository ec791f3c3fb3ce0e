// BF16 matrix layout (QuantizedMatrix "weight", layout_version 2).
//
// Rows are padded with zero rows to a multiple of 16 and cut into tiles of 16 rows;
// columns are padded with zeros to a multiple of 32. A tile is stored contiguously as
// padded_cols/2 blocks of 64 bytes; block b holds columns 2b and 2b+1 of the 16 rows:
//
//   32-bit word r of the block (row r = 0..15 of the tile):
//     bits  0..15 = bf16 of column 2b      (word << 16 is that weight as f32)
//     bits 16..31 = bf16 of column 2b + 1  (word & 0xFFFF0000 is that weight as f32)
//
// so a GEMV widens 16 weights of one column with one shift or AND and adds them times
// the activation of that column, broadcast to every lane, into 16 row sums at once: no
// horizontal sums, and one task streams one contiguous run of bytes.
#pragma once
#include <cstddef>
#include <cstdint>

#include "formats/tiles.h"

namespace ternlm {

inline size_t BF16PaddedCols(size_t cols) { return (cols + 31) / 32 * 32; }
// Bytes of one tile (16 rows) for padded_cols columns.
inline size_t BF16TileBytes(size_t padded_cols) { return padded_cols * 2 * kTileRows; }
// Index (in uint16 units) of the weight at (r, c).
inline size_t BF16Index(size_t padded_cols, size_t r, size_t c) {
  return (r / 16) * (padded_cols * 16) + (c / 2) * 32 + (r % 16) * 2 + (c % 2);
}

// Throws std::invalid_argument "<what> Inf or NaN at flat index i" if one of the n bf16
// bit patterns is Inf or NaN (bf16 and bf16c hold finite weights only).
void CheckBF16Finite(const char* what, const uint16_t* bits, size_t n);

class QuantizedMatrix;
enum class WeightFormat : int;
// FromBF16 / FromBF16C: checks the shape and bits [rows, cols] (messages start with fn)
// and returns a zeroed matrix of format f to fill.
QuantizedMatrix AllocateForBF16Bits(const char* fn, WeightFormat f, const uint16_t* bits, size_t rows,
                                    size_t cols);

}  // namespace ternlm
