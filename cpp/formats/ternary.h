// Ternary (BitNet b1.58) packed layout, 2 bits per weight.
//
// Each row of cols weights t in {-1,0,1} is padded with zeros to a multiple of
// 256 and stored as t+1 in {0,1,2}, in 64-byte blocks of 256 weights:
//
//   byte j of a block (j = 0..63):
//     bit  7 6 | 5 4 | 3 2 | 1 0
//          w[j+192] w[j+128] w[j+64] w[j]        (each field = t + 1)
//
// so (block >> 2k) & 3, taken over any run of bytes j..j+V (V <= 64), yields the
// weights 64k+j .. 64k+j+V as uint8 in {0,1,2}, contiguous: any SIMD width up to
// 512 bits unpacks with one shift and one AND, no shuffles. The integer dot with
// int8 activations q is then  sum((t+1) q) - sum(q)  (an unsigned x signed
// product, what vpdpbusd / pmaddubsw take), and padded activations are 0.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ternlm {

constexpr size_t kTernaryBlockWeights = 256;
constexpr size_t kTernaryBlockBytes = 64;

inline size_t TernaryPaddedCols(size_t cols) { return (cols + 255) / 256 * 256; }
inline size_t TernaryPackedBytes(size_t cols) { return TernaryPaddedCols(cols) / 4; }

// t: n int8 in {-1,0,1} (not checked here); out: TernaryPackedBytes(n) bytes.
void PackTernaryRow(const int8_t* t, size_t n, uint8_t* out);
// packed: TernaryPackedBytes(n) bytes; out: n int8. Returns false on a 2-bit
// field of 3 (not a valid t+1) among the first n weights.
bool UnpackTernaryRow(const uint8_t* packed, size_t n, int8_t* out);

}  // namespace ternlm
