// nano: sub-1-bit weights as a low-rank binary factorization (NanoQuant, arXiv 2602.06694):
//
//   W [rows = out, cols = in]  ~  diag(s_out) . U . V^T . diag(s_in)
//   U in {-1,+1}^{rows x r},  V in {-1,+1}^{cols x r},  s_out fp16 [rows],  s_in fp16 [cols]
//
// The rank r is the matrix's group_size() (QuantizedMatrix keeps one small integer per
// matrix; for nano it is the rank, 1 <= r <= kNanoMaxRank). Bits per weight are
// (r * padded_cols + rows * padded_rank + 16 * (padded_cols + rows)) / (rows * cols) plus
// the 64-byte alignment of each section: a budget b gives r ~ b * rows * cols / (rows + cols)
// (python/ternlm/nano.py picks r).
//
// Memory (data(), one buffer; every section starts on a 64-byte boundary):
//
//   padded_cols = round_up(cols, 64)          padded_rank = round_up(r, 64)
//
//   +-- v_bits: r rows of padded_cols / 8 bytes -----------------------------------+
//   | row k = column k of V over the inputs:                                        |
//   |   byte c / 8, bit c % 8  =  1 if V[c, k] = +1, 0 if V[c, k] = -1             |
//   |   (bits of the padding columns cols .. padded_cols-1 are 0)                   |
//   +-- u_bits: rows rows of padded_rank / 8 bytes --------------------------------+
//   | row o = row o of U over the rank:                                             |
//   |   byte k / 8, bit k % 8  =  1 if U[o, k] = +1, 0 if U[o, k] = -1             |
//   |   (bits of the padding ranks r .. padded_rank-1 are 0)                        |
//   +-- s_in: padded_cols fp16 (zero past cols) ------------------------------------+
//   +-- s_out: rows fp16 -----------------------------------------------------------+
//
// Stored buffers (layout_version 2): "v_bits" uint8 [r * padded_cols / 8], "u_bits" uint8
// [rows * padded_rank / 8], "s_in" uint16 [cols], "s_out" uint16 [rows] (fp16 bits). A
// stored padding bit that is set, or a non-finite scale, is rejected by from_buffers.
//
// MatMul numerics (kernels/nano_matmul-inl.h): the GEMV is two binary products.
//   x' = x * s_in (f32), q1 = int8(x') per activation row (kernels/activations.h), 1/s1
//   z[k] = float(sum_c (V[c, k] ? q1[c] : -q1[c])) * (1 / s1)               (exact int32 sum)
//   q2 = int8(z) per activation row, 1/s2
//   y[o] = float(sum_k (U[o, k] ? q2[k] : -q2[k])) * (1 / s2) * s_out[o]    (exact int32 sum)
// |sum| <= 127 * n, so n (cols and padded_rank) is capped at kNanoMaxCols.
//
// A nano matrix is not a stack of independent rows: it cannot be concatenated with
// another (fused q|k|v, gate|up stay separate pieces) nor cut by rows (only copied whole).
#pragma once
#include <cstddef>
#include <cstdint>

namespace ternlm {

constexpr size_t kNanoMaxRank = size_t(1) << 16;
constexpr size_t kNanoMaxCols = size_t(1) << 24;

inline size_t NanoRound64(size_t n) { return (n + 63) / 64 * 64; }
inline size_t NanoPaddedCols(size_t cols) { return NanoRound64(cols); }
inline size_t NanoPaddedRank(size_t rank) { return NanoRound64(rank); }

// Bytes of each section of data() and where it starts.
struct NanoLayout {
  size_t v_bytes, u_bytes, v_off, u_off, s_in_off, s_out_off, total;
  NanoLayout(size_t rows, size_t padded_cols, size_t rank) {
    v_bytes = rank * padded_cols / 8;
    u_bytes = rows * NanoPaddedRank(rank) / 8;
    v_off = 0;
    u_off = NanoRound64(v_bytes);
    s_in_off = u_off + NanoRound64(u_bytes);
    s_out_off = s_in_off + NanoRound64(2 * padded_cols);
    total = s_out_off + NanoRound64(2 * rows);
  }
};

inline bool NanoBit(const uint8_t* row, size_t i) { return (row[i / 8] >> (i % 8)) & 1u; }
inline void NanoSetBit(uint8_t* row, size_t i, bool one) {
  row[i / 8] = uint8_t(one ? row[i / 8] | (1u << (i % 8)) : row[i / 8] & ~(1u << (i % 8)));
}

}  // namespace ternlm
