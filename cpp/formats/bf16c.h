// BF16C matrix layout (QuantizedMatrix format "bf16c", layout_version 2): the values of a
// bf16 matrix, bit for bit, in 12 bits per weight instead of 16.
//
// A bf16 word is a low byte (exponent bit 0 + 7 mantissa bits) and a high byte (sign + the
// exponent's upper 7 bits). In a weight matrix the high byte takes few values: weights of
// one tile of rows span a few octaves of magnitude and two signs. So each 16-row tile keeps
// a table of its 15 most frequent high bytes; a weight is stored as its low byte and a
// 4-bit code into that table. Code 15 always means high byte 0x00 (zero, tiny positives).
// A weight whose high byte is not in its tile's table (rare: values far below the tile's
// typical magnitude, or huge ones) is stored as code 15 with low byte 0, i.e. +0.0, and
// its value is kept in a per-row exception list that the kernels add afterwards.
//
// Rows are padded with zero rows to a multiple of 16, columns with zeros to a multiple of
// 32 (padding: low byte 0, code 15). A tile is kBF16CTableBytes of table (bytes 0..15
// used, the rest 0) followed by padded_cols/8 chunks of 192 bytes; chunk k holds columns
// 8k..8k+7 of the 16 rows as four column pairs p = 0..3 (columns 8k+2p, 8k+2p+1) in three
// 64-byte parts:
//
//   A = bytes   0..63: low bytes of pairs 0 and 1
//   B = bytes  64..127: low bytes of pairs 2 and 3
//   C = bytes 128..191: codes; byte i of C: low nibble = code of A's byte i,
//                                          high nibble = code of B's byte i
//   In A (and B), row r of the tile is in the 16 bytes at 16 * (r / 4) ("row group"):
//     byte (p % 2) * 8 + 2 * (r % 4) + e     (e = 0 even column, 1 odd column)
//
// so for any vector of 4*G 32-bit lanes (G 16-byte blocks, G = 1 for NEON/SSE4, 2 for
// AVX2, 4 for AVX-512) covering rows 4g..4g+4G-1: load G*16 bytes of A, B and C at 16*g,
// split C into low and high nibbles, look both up in the table (a byte shuffle within each
// 16-byte block), and interleave bytes (within each block) of A with A's high bytes:
// the lower half gives, in lane 4j + m, the 32-bit word (bf16 of column 8k+1 << 16 |
// bf16 of column 8k) of row 4(g+j)+m, the upper half the same for pair 1; B gives pairs 2
// and 3. Those are the words of the bf16 layout (bf16.h), widened to f32 by a shift or an
// AND. The same bytes serve every vector width; the exceptions are applied per row.
#pragma once
#include <cstddef>
#include <cstdint>

#include "formats/tiles.h"

namespace ternlm {

constexpr size_t kBF16CTableBytes = 64;  // 16 used; keeps the chunks 64-byte aligned
constexpr uint8_t kBF16CZeroCode = 15;   // high byte 0x00
inline size_t BF16CPaddedCols(size_t cols) { return (cols + 31) / 32 * 32; }
inline size_t BF16CTileBytes(size_t padded_cols) { return kBF16CTableBytes + padded_cols * 24; }

// Offsets within a tile of the low byte of weight (r, c) (r = row within the tile) and of
// the byte holding its code; *high_nibble says which nibble.
inline size_t BF16CLowByte(size_t r, size_t c) {
  const size_t p = (c % 8) / 2;
  return kBF16CTableBytes + (c / 8) * 192 + (p / 2) * 64 + 16 * (r / 4) + (p % 2) * 8 + 2 * (r % 4) + c % 2;
}
inline size_t BF16CCodeByte(size_t r, size_t c, bool* high_nibble) {
  const size_t p = (c % 8) / 2;
  *high_nibble = p >= 2;
  return kBF16CTableBytes + (c / 8) * 192 + 128 + 16 * (r / 4) + (p % 2) * 8 + 2 * (r % 4) + c % 2;
}
// Sets the 4-bit code of (r, c) of a tile, keeping the other nibble of its byte.
inline void BF16CSetCode(uint8_t* tile, size_t r, size_t c, unsigned code) {
  bool high;
  uint8_t& b = tile[BF16CCodeByte(r, c, &high)];
  b = uint8_t(high ? (b & 0x0F) | (code << 4) : (b & 0xF0) | code);
}
// The stored bf16 bits of (r, c) of a tile (before exceptions).
inline uint16_t BF16CTileBits(const uint8_t* tile, size_t r, size_t c) {
  bool hi;
  const uint8_t code_byte = tile[BF16CCodeByte(r, c, &hi)];
  const uint8_t code = hi ? code_byte >> 4 : code_byte & 15;
  return uint16_t(uint16_t(tile[code]) << 8 | tile[BF16CLowByte(r, c)]);
}

}  // namespace ternlm
