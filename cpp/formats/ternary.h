// Ternary (BitNet b1.58) weights, 2 bits per weight, stored as the code t+1 in {0,1,2}
// (code 3 is invalid). Two layouts share the code:
//
// 1. The row codec of ternlm.pack_ternary / unpack_ternary (PackTernaryRow): a row of n
//    weights padded with zeros to a multiple of 256, in 64-byte blocks of 256 weights;
//    byte j of a block holds weights j, j+64, j+128, j+192 in bits 0-1, 2-3, 4-5, 6-7.
//    (Also the layout of QuantizedMatrix "packed" buffers of layout_version 1.)
//
// 2. The matrix layout of a ternary QuantizedMatrix (layout_version 2), made for the
//    kernels: rows padded with zero rows to a multiple of 16 and cut into tiles of 16
//    rows; columns padded with zeros to a multiple of 64. A tile is stored contiguously
//    (so a GEMV streams one sequential run of bytes per task) as padded_cols/16 blocks
//    of 64 bytes; block b covers columns 16b .. 16b+15 of the tile's 16 rows:
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
#pragma once
#include <cstddef>
#include <cstdint>

namespace ternlm {

// ---- row codec (pack_ternary) ----
inline size_t TernaryPaddedCols(size_t cols) { return (cols + 255) / 256 * 256; }
inline size_t TernaryPackedBytes(size_t cols) { return TernaryPaddedCols(cols) / 4; }

// t: n int8 in {-1,0,1} (not checked here); out: TernaryPackedBytes(n) bytes.
void PackTernaryRow(const int8_t* t, size_t n, uint8_t* out);
// packed: TernaryPackedBytes(n) bytes; out: n int8. Returns false on a 2-bit
// field of 3 (not a valid t+1) among the first n weights.
bool UnpackTernaryRow(const uint8_t* packed, size_t n, int8_t* out);

// ---- matrix layout (QuantizedMatrix, layout_version 2) ----
constexpr size_t kTernaryTileRows = 16;
constexpr size_t kTernaryBlockCols = 16;
inline size_t TernaryMatrixPaddedCols(size_t cols) { return (cols + 63) / 64 * 64; }
inline size_t TernaryMatrixPaddedRows(size_t rows) { return (rows + 15) / 16 * 16; }
// Bytes of one tile (16 rows) for padded_cols columns.
inline size_t TernaryTileBytes(size_t padded_cols) { return padded_cols * 4; }

// Writes the codes of row r from n <= padded_cols int8 in {-1,0,1} (not checked here);
// the padding columns keep whatever they held (zero bytes in a fresh matrix).
void TernarySetRow(uint8_t* data, size_t padded_cols, size_t r, const int8_t* t, size_t n);
// Reads the first n weights of row r; false if one of them has the invalid code 3.
bool TernaryGetRow(const uint8_t* data, size_t padded_cols, size_t r, size_t n, int8_t* out);

}  // namespace ternlm
