// Q6: a ~6.6-bit k-quant-style format for embeddings / heads, numerically the same as
// GGUF's Q6_K (so Q6_K tensors import without loss):
//
//   w[r, c] = d[r, S] * sc[r, j] * (u[r, c] - 32)
//
// u in [0, 63] (6 bits) per weight, sc int8 per sub-block j of 16 columns, d fp16 per
// super-block S of 256 columns (the last super-block of a row may be shorter: it covers
// the columns left, a multiple of 32). 6.5 + 16 * ceil(pc/256) / pc bits per weight
// (6.5625 when pc is a multiple of 256, 6.58 for 576 columns).
//
// Matrix layout ("tiles" uint8, stored as in memory): rows padded with zero rows to a
// multiple of 16 and cut into tiles of 16 rows (formats/tiles.h), columns padded to a
// multiple of 32 (one activation block; padding weights have sc = 0 and d = 0). A tile is
// its super-blocks in order; a super-block of n = cols/16 sub-blocks is
//
//   n x 192 bytes   codes: per sub-block j (columns 16j .. 16j+15 of the super-block)
//                     64 bytes "lo A": byte 4r+i = u[r, 16j+i] & 15 | (u[r, 16j+4+i] & 15) << 4
//                     64 bytes "lo B": byte 4r+i = u[r, 16j+8+i] & 15 | (u[r, 16j+12+i] & 15) << 4
//                     64 bytes "hi":   byte 4r+i, bits 2k..2k+1 = u[r, 16j+4k+i] >> 4 (k = 0..3)
//   n x 16 bytes    sc: int8, [sub-block j][row r]
//   32 bytes        d: fp16 bits, [row r]
//
// (r = 0..15 the row within the tile, i = 0..3), so the 32-bit lane r of each 64-byte
// block holds row r's fields for four columns and the four columns 16j+4k .. 16j+4k+3 come
// out of (lo >> 4·(k&1)) & 15 | ((hi >> 2k) & 3) << 4 for all 16 rows at once; a byte-dot
// with the four activation bytes broadcast to every lane gives every row's partial sum.
//
// MatMul numerics: activations int8 per block of 32 inputs (s_b = 127 / max(max|x_b|, 1e-5),
// q = round_half_even(x s_b), kernels/activations.h), and with xs_j = sum of q over
// sub-block j, the block sums are exact int32:
//   I[r, b] = sum_{j in b} sc[r, j] * (sum_{c in j} u[r, c] * q[c] - 32 * xs_j)
//   y[r]    = sum_S d[r, S] * (sum_{b in S} float(I[r, b]) * (1 / s_b))   (f32, in order).
#pragma once
#include <cstddef>
#include <cstdint>

#include "formats/tiles.h"

namespace ternlm {

constexpr size_t kQ6SuperCols = 256;
constexpr size_t kQ6SubCols = 16;
constexpr size_t kQ6SubCodeBytes = 192;  // one sub-block's codes in a tile

inline size_t Q6PaddedCols(size_t cols) { return (cols + 31) / 32 * 32; }
inline size_t Q6SuperBlocks(size_t padded_cols) { return (padded_cols + kQ6SuperCols - 1) / kQ6SuperCols; }
// Columns of super-block s (256, or what is left for the last one).
inline size_t Q6SuperCols(size_t padded_cols, size_t s) {
  const size_t left = padded_cols - s * kQ6SuperCols;
  return left < kQ6SuperCols ? left : kQ6SuperCols;
}
// Bytes of a super-block of n columns in a tile: codes, sub-block scales, d.
inline size_t Q6SuperBytes(size_t n) { return n / kQ6SubCols * (kQ6SubCodeBytes + 16) + 32; }
inline size_t Q6TileBytes(size_t padded_cols) {
  return padded_cols / kQ6SubCols * (kQ6SubCodeBytes + 16) + 32 * Q6SuperBlocks(padded_cols);
}

// Where the fields of (row r, column c) live: byte offsets from the matrix start.
struct Q6Place {
  size_t lo, hi, sc, d;   // lo: nibble byte; hi: 2-bit field byte; sc: int8; d: fp16 (2 bytes)
  unsigned lo_shift, hi_shift;
};
inline Q6Place Q6Locate(size_t padded_cols, size_t r, size_t c) {
  const size_t s = c / kQ6SuperCols, n = Q6SuperCols(padded_cols, s);
  const size_t base = (r / kTileRows) * Q6TileBytes(padded_cols) + s * Q6SuperBytes(kQ6SuperCols);
  const size_t j = (c % kQ6SuperCols) / kQ6SubCols, k = (c % kQ6SubCols) / 4, i = c % 4, rr = r % kTileRows;
  Q6Place p;
  p.lo = base + j * kQ6SubCodeBytes + (k / 2) * 64 + 4 * rr + i;
  p.lo_shift = unsigned(4 * (k % 2));
  p.hi = base + j * kQ6SubCodeBytes + 128 + 4 * rr + i;
  p.hi_shift = unsigned(2 * k);
  p.sc = base + n / kQ6SubCols * kQ6SubCodeBytes + j * 16 + rr;
  p.d = base + Q6SuperBytes(n) - 32 + 2 * rr;
  return p;
}

}  // namespace ternlm
