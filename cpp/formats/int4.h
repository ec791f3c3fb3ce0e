// INT4 layouts (group-wise asymmetric, w = scale * q + min, q in [0,15]).
//
// Stored layout (QuantizedMatrix buffers, layout_version 2): rows padded with zero rows
// to a multiple of 16 and cut into tiles of 16 rows, columns padded to a multiple of 32
// (no padding: the group divides cols). "q4" holds each tile's codes contiguously as
// padded_cols/8 blocks of 64 bytes; block b covers columns 8b .. 8b+7 of its 16 rows:
//
//   byte 4r + i of the block (row r = 0..15 of the tile, i = 0..3):
//     bits 3..0 = q of column 8b + i,  bits 7..4 = q of column 8b + 4 + i
//
// so the 32-bit lane r of a block ANDed with 0x0F0F0F0F holds row r's codes of
// columns 8b..8b+3 and (lane >> 4) & 0x0F0F0F0F those of 8b+4..8b+7: one vpdpbusd
// each, with the four activation bytes broadcast to all lanes, gives the 16 rows'
// integer dots; four blocks make one 32-column activation block. "scale" and "min"
// are fp16 bits in the same tile order, [tile][group][16 rows] (padding rows and
// groups 0), so one 32-byte load gives a group's 16 row scales as a vector.
//
// In-memory layout: the three are interleaved into one stream per tile (a GEMV then
// reads one sequential run of bytes per task, not three: on the machines measured,
// three concurrent streams per core read 15-25% slower than one): a tile is, for each
// group g in order, the group's code blocks as stored (group/8 blocks of 64 bytes),
// then its 16 fp16 scales, then its 16 fp16 mins (Int4GroupBytes = 8 * group + 64
// bytes). The int4 codec (int4.cc) converts between the two in Buffers / FromBuffers.
//
// MatMul numerics: activations are quantized to int8 per block of 32 inputs
// (s_b = 127 / max(max|x_b|, 1e-5), q = clamp(round_half_even(x s_b), -128, 127)),
// the 32-wide integer dots are exact, and
//   y = sum_g scale_g * sum_{b in g} dot_b / s_b  +  min_g * sum_{b in g} sum(q_b) / s_b   (f32),
//   i.e. the min term sums the same dequantized int8 activations as the dots (GGUF Q8_1).
#pragma once
#include <cstddef>
#include <cstdint>

#include "formats/tiles.h"

namespace ternlm {

// Matrix layout: columns padded to a multiple of 32 (one activation block); since the
// group (32/64/128) divides cols, that is cols itself for every valid matrix.
inline size_t Int4PaddedCols(size_t cols) { return (cols + 31) / 32 * 32; }

// Stored layout: bytes of one tile's codes ("q4"; "scale"/"min" hold 16 values per
// tile and group, in tile order).
inline size_t Int4CodeTileBytes(size_t padded_cols) { return padded_cols * 8; }

// In-memory layout: one group of a tile = codes, 16 scales, 16 mins.
inline size_t Int4GroupBytes(size_t group) { return 8 * group + 64; }
inline size_t Int4TileBytes(size_t padded_cols, size_t group) {
  return padded_cols / group * Int4GroupBytes(group);
}
// Byte holding (row r, column c); *shift = 0 or 4 (its nibble).
inline size_t Int4ByteIndex(size_t padded_cols, size_t group, size_t r, size_t c, unsigned* shift) {
  *shift = (c % 8) >= 4 ? 4u : 0u;
  return (r / 16) * Int4TileBytes(padded_cols, group) + (c / group) * Int4GroupBytes(group) +
         (c % group / 8) * 64 + 4 * (r % 16) + c % 4;
}
// The codes of activation block b (32 columns) of a tile in the in-memory layout:
// each group is 2^group_shift blocks of 256 bytes, then 64 bytes of fp16 scales and mins,
// so block b starts at 256 b plus 64 bytes per group before it.
inline const uint8_t* Int4TileBlockCodes(const uint8_t* tile, size_t b, size_t group_shift) {
  return tile + 256 * b + 64 * (b >> group_shift);
}
// Byte offset of the fp16 scale of (row r, group g); its min is 32 bytes further.
inline size_t Int4ScaleByte(size_t padded_cols, size_t group, size_t r, size_t g) {
  return (r / 16) * Int4TileBytes(padded_cols, group) + g * Int4GroupBytes(group) + 8 * group +
         2 * (r % 16);
}

}  // namespace ternlm
