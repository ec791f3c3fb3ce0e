// Ternary and INT4 (group 32) prefill with Intel AMX (Advanced Matrix Extensions: Sapphire Rapids and later
// Xeons), for many activation rows at once. One TDPBSUD multiplies a tile of 16 activation
// rows x 64 int8 columns by 64 columns x 16 weight rows of unsigned codes (t + 1) into
// 16 x 16 int32 sums: 16384 multiply-adds per instruction, against 64 for vpdpbusd.
//
// The ternary tile layout (formats/ternary.h) needs no transposition for it: field k of a
// 64-byte block, shifted down, is 16 rows x 4 consecutive columns as bytes, which is one
// 64-byte row of AMX's B operand ("VNNI" layout: row g = columns 4g..4g+3 of every output
// row). A weight tile's codes are unpacked so once per call (16 bytes per column, in L2)
// and reused by every group of 16 activation rows; the activations are the A operand
// as they are (row-major int8, stride padded_cols). Sums are exact (|x| <= 127, codes <=
// 2), so the results equal the vpdpbusd kernel's bit for bit.
//
// Lives in its own translation unit (AMX intrinsics need target attributes that
// Highway's per-target pragmas do not add) and is called by the ternary kernel of the
// AVX3_DL / AVX3 targets when AmxEnabled() (runtime/targets.h) and there are at least
// kAmxMinRows activation rows. AMX also needs the kernel's permission
// (arch_prctl(ARCH_REQ_XCOMP_PERM)), requested once by runtime/cpu_features.h CpuHasAmx.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/activations.h"
#include "runtime/cpu_features.h"  // TERNLM_AMX_KERNELS: whether this build has them

namespace ternlm {

constexpr size_t kAmxMinRows = 16;
// The int32 sums stay exact up to 2^31 / (127 * 2) columns; wider rows take the vpdpbusd
// kernel (which sums in runs).
constexpr size_t kAmxMaxCols = size_t(1) << 22;

// Rows [r0, r1) (r0 a multiple of 16) of y = (codes . q - sum q) / s_x * row_multiplier
// for all a.n activation rows, as TernaryMatMulRows; packed / padded_cols / mult as there.
// Returns false, having written nothing, when it cannot run (rows wider than kAmxMaxCols,
// no memory for its scratch, or not built): the caller then uses its own kernel.
bool TernaryMatMulRowsAmx(const uint8_t* packed, size_t padded_cols, const float* mult,
                          const PreparedActivations& a, size_t r0, size_t r1, const MatMulOutput& out);

// The same for an INT4 matrix with groups of 32 (formats/int4.h, in-memory layout): per
// 32-column group one TDPBSUD (16 activation rows x 32 columns x 16 weight rows) gives the
// exact integer dots, then the f32 epilogue of Int4TileG32 (int4_matmul-inl.h) in its order,
// so outputs equal the vpdpbusd kernel's bit for bit. tiles = QuantizedMatrix::data().
bool Int4G32MatMulRowsAmx(const uint8_t* tiles, size_t padded_cols, const PreparedActivations& a,
                          size_t r0, size_t r1, const MatMulOutput& out);

}  // namespace ternlm
