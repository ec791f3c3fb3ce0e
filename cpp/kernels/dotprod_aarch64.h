// Ternary, INT4 and head (INT8, q6) tile kernels with the ARMv8.2 dot-product extension (vdotq_s32 / SDOT),
// for aarch64 CPUs that have it (Apple M1+, Graviton2+, Cortex-A76+, Neoverse). They live
// in their own translation unit, outside Highway's per-target pragmas, compiled with the
// extension enabled for these functions only; the NEON paths of ternary_matmul-inl.h and
// int4_matmul-inl.h call them when ArmDotProdEnabled() (runtime/targets.h), which is
// false where they are not built (other architectures; clang without a dot-product
// baseline); so do the NEON paths of int8_matmul-inl.h and q6_matmul-inl.h, which take
// their block dots from here and do the rest in Highway ops. Same inputs and outputs as
// TernaryTileDots / Int4TileBlockDots there; nx 1..4. Highway 1.0.3 has no int8 dot op
// (its ReorderWidenMulAccumulate widens i16 only), hence the intrinsics.
#pragma once
#include <cstddef>
#include <cstdint>

#include "runtime/cpu_features.h"  // TERNLM_DOTPROD_KERNELS: whether this build has them

namespace ternlm {

// out[16 j + r] = sum_c code[r, c] * x[j][c] over the nblocks 64-byte blocks of a ternary
// tile (formats/ternary.h), j < nx.
void TernaryTileDotsDotProd(size_t nx, const uint8_t* tile, size_t nblocks, const int8_t* const* x, int32_t* out);
// out[(j nb + b) 16 + r] = the integer dots of an INT4 tile's rows (formats/int4.h, in-memory
// layout) with x[j] over activation blocks b0 + b, b < nb (x[j] at block b0's first column).
void Int4TileBlockDotsDotProd(size_t nx, const uint8_t* tile, size_t b0, size_t nb, size_t group_shift,
                              const int8_t* const* x, int32_t* out);

// out[(j nb + b) 16 + r] = the exact int32 dots of an INT8 tile's rows (formats/int8.h)
// with x[j] over nb 32-column blocks from the tile's block at `tile` (x[j] at its first column).
void Int8TileBlockDotsDotProd(size_t nx, const uint8_t* tile, size_t nb, const int8_t* const* x, int32_t* out);
// out[(j nsub + i) 16 + r] = sum_c u[r, c] * x[j][c] over sub-block i < nsub (16 columns) of
// a q6 super-block whose codes start at `codes` (formats/q6.h; x[j] at its first column):
// the raw code dots, before q6.h's - 32 sum(x) and the sub-block scales.
void Q6SubDotsDotProd(size_t nx, const uint8_t* codes, size_t nsub, const int8_t* const* x, int32_t* out);

}  // namespace ternlm
