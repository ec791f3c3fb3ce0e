// Ternary (BitNet b1.58) weights, 2 bits per weight, stored as the code t+1 in {0,1,2}
// (code 3 is invalid). Two layouts share the code:
//
// 1. The matrix layout of a ternary QuantizedMatrix ("packed", layout_version 2), made
//    for the kernels: rows padded with zero rows to a multiple of 16 and cut into tiles
//    of 16 rows (formats/tiles.h); columns padded with zeros to a multiple of 64. A tile
//    is stored contiguously (so a GEMV streams one sequential run of bytes per task) as
//    padded_cols/16 blocks of 64 bytes; block b covers columns 16b .. 16b+15 of the
//    tile's 16 rows:
//
//      byte 4r + i of the block (row r = 0..15 of the tile, i = 0..3):
//        bits 2k..2k+1 (k = 0..3) = code of column 16b + 4k + i
//
//    so the 32-bit lane r of a block masked with 0x03030303 << 2k holds the four codes
//    of row r for columns 16b+4k .. 16b+4k+3, each times 4^k: one AND, then one
//    vpdpbusd (u8 codes x s8 activations, the four activation bytes broadcast to every
//    lane) adds sum_i code * x * 4^k for all 16 rows at once, with no shuffle and no
//    horizontal sum; the 4^k is removed exactly by an arithmetic shift at the end.
//    The dot with int8 activations q is then sum(code * q) - sum(q). Padding (columns
//    and rows) is stored as zero bytes: padded activations are 0, so it adds nothing,
//    and padded rows are never written out.
//
// 2. The plain layout of ternlm.pack_ternary / unpack_ternary (PackTernary), for
//    exchanging ternary arrays of any shape: the n values in row-major order, 4 per byte,
//    element i's code in bits 2k..2k+1 (k = i % 4) of byte i / 4:
//
//      byte j = code(4j) | code(4j+1) << 2 | code(4j+2) << 4 | code(4j+3) << 6
//
//    exactly ceil(n / 4) bytes; the fields past element n-1 in the last byte hold code 1
//    (a zero weight). It is independent of the matrix layout above.
//
// MatMul numerics: activations are quantized to int8 per row, s_x = 127 / max(max|x|, 1e-5),
// q = clamp(round_half_even(x s_x), -128, 127); the int32 dots sum(t * q) are exact, and
//   y[r] = float(sum_c t[r, c] * q[c]) * (1 / s_x) * row_multiplier[r]   (f32, in that order).
#pragma once
#include <cstddef>
#include <cstdint>

#include "formats/tiles.h"

namespace ternlm {

// ---- matrix layout (QuantizedMatrix, layout_version 2)
constexpr size_t kTernaryBlockCols = 16;
inline size_t TernaryPaddedCols(size_t cols) { return (cols + 63) / 64 * 64; }
// Bytes of one tile (16 rows) for padded_cols columns.
inline size_t TernaryTileBytes(size_t padded_cols) { return padded_cols * 4; }

// Byte of (row r, column c), and the shift of its 2-bit field.
inline size_t TernaryByteIndex(size_t padded_cols, size_t r, size_t c, unsigned* shift) {
  *shift = unsigned(2 * ((c % 16) / 4));
  return (r / kTileRows) * TernaryTileBytes(padded_cols) + (c / 16) * 64 + 4 * (r % kTileRows) + c % 4;
}
// The code (t + 1, or the invalid 3) of (row r, column c).
inline unsigned TernaryCode(const uint8_t* data, size_t padded_cols, size_t r, size_t c) {
  unsigned shift;
  const size_t i = TernaryByteIndex(padded_cols, r, c, &shift);
  return (data[i] >> shift) & 3u;
}
inline void TernarySetCode(uint8_t* data, size_t padded_cols, size_t r, size_t c, unsigned code) {
  unsigned shift;
  uint8_t& byte = data[TernaryByteIndex(padded_cols, r, c, &shift)];
  byte = uint8_t((byte & ~(3u << shift)) | ((code & 3u) << shift));
}

// Writes the codes of row r from n <= padded_cols int8 in {-1,0,1} (not checked here);
// the padding columns keep whatever they held (zero bytes in a fresh matrix).
void TernarySetRow(uint8_t* data, size_t padded_cols, size_t r, const int8_t* t, size_t n);
// Reads the first n weights of row r; false if one of them has the invalid code 3.
bool TernaryGetRow(const uint8_t* data, size_t padded_cols, size_t r, size_t n, int8_t* out);

// ---- plain layout (pack_ternary)
inline size_t PackedTernaryBytes(size_t n) { return (n + 3) / 4; }
// t: n int8 in {-1,0,1} (not checked here); out: PackedTernaryBytes(n) bytes.
void PackTernary(const int8_t* t, size_t n, uint8_t* out);
// packed: PackedTernaryBytes(n) bytes; out: n int8. Returns the index of the first
// element holding the invalid code 3, or n if there is none (the padding is not read).
size_t UnpackTernary(const uint8_t* packed, size_t n, int8_t* out);

}  // namespace ternlm
