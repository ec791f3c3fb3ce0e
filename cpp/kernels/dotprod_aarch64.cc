// See dotprod_aarch64.h. Lane layout as in the NEON paths of the -inl.h kernels: a
// q-register of a 64-byte block holds 4 tile rows x 4 bytes.
#include "kernels/dotprod_aarch64.h"

#if TERNLM_DOTPROD_KERNELS
#include <arm_neon.h>

#include <algorithm>
#include <cstring>

#include "formats/int4.h"
#include "formats/q6.h"

#if defined(__ARM_FEATURE_DOTPROD)
#define TERNLM_DOTPROD_ATTR
#else
#define TERNLM_DOTPROD_ATTR __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

namespace ternlm {
namespace {

inline int8x16_t Dup4(const int8_t* p) {  // four activation bytes in every 32-bit lane
  int32_t v;
  std::memcpy(&v, p, 4);
  return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

// Ternary: lane r's field k holds its codes (t + 1 <= 2) of columns 16b+4k..16b+4k+3; fields
// 0-2 are isolated by an AND alone (code * 4^k <= 32 fits s8), field 3 by a shift, and the
// 4^k shifted out exactly at the end. A block adds at most 4 * 4 * 32 * 128 = 2^16 to a
// lane's four accumulators together: runs of 2^14 blocks stay far from overflow.
template <size_t NX>
TERNLM_DOTPROD_ATTR void TernaryDots(const uint8_t* tile, size_t nblocks, const int8_t* const* x, int32_t* out) {
  constexpr size_t kRun = size_t(1) << 14;
  const uint8x16_t m0 = vdupq_n_u8(0x03), m1 = vdupq_n_u8(0x0C), m2 = vdupq_n_u8(0x30);
  for (size_t g = 0; g < 4; ++g) {  // rows 4g .. 4g + 3
    int32x4_t total[NX];
    for (size_t j = 0; j < NX; ++j) total[j] = vdupq_n_s32(0);
    for (size_t b0 = 0; b0 < nblocks; b0 += kRun) {
      const size_t b1 = std::min(nblocks, b0 + kRun);
      int32x4_t acc[NX][4];
      for (size_t j = 0; j < NX; ++j)
        for (size_t k = 0; k < 4; ++k) acc[j][k] = vdupq_n_s32(0);
      for (size_t b = b0; b < b1; ++b) {
        const uint8x16_t w = vld1q_u8(tile + 64 * b + 16 * g);
        const int8x16_t f[4] = {vreinterpretq_s8_u8(vandq_u8(w, m0)), vreinterpretq_s8_u8(vandq_u8(w, m1)),
                                vreinterpretq_s8_u8(vandq_u8(w, m2)), vreinterpretq_s8_u8(vshrq_n_u8(w, 6))};
        for (size_t k = 0; k < 4; ++k)
          for (size_t j = 0; j < NX; ++j) acc[j][k] = vdotq_s32(acc[j][k], f[k], Dup4(x[j] + 16 * b + 4 * k));
      }
      for (size_t j = 0; j < NX; ++j)
        total[j] = vaddq_s32(total[j], vaddq_s32(vaddq_s32(acc[j][0], vshrq_n_s32(acc[j][1], 2)),
                                                 vaddq_s32(vshrq_n_s32(acc[j][2], 4), acc[j][3])));
    }
    for (size_t j = 0; j < NX; ++j) vst1q_s32(out + 16 * j + 4 * g, total[j]);
  }
}

// INT4: a 64-byte sub-block sb of an activation block holds, per row, the codes of columns
// 8sb..8sb+3 (low nibbles) and 8sb+4..8sb+7 (high nibbles), <= 15: one SDOT each.
template <size_t NX>
TERNLM_DOTPROD_ATTR void Int4Dots(const uint8_t* tile, size_t b0, size_t nb, size_t group_shift,
                                  const int8_t* const* x, int32_t* out) {
  const uint8x16_t m15 = vdupq_n_u8(15);
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* codes = Int4TileBlockCodes(tile, b0 + b, group_shift);
    for (size_t g = 0; g < 4; ++g) {  // rows 4g .. 4g + 3
      int32x4_t acc[NX];
      for (size_t j = 0; j < NX; ++j) acc[j] = vdupq_n_s32(0);
      for (size_t sb = 0; sb < 4; ++sb) {
        const uint8x16_t w = vld1q_u8(codes + 64 * sb + 16 * g);
        const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(w, m15)), hi = vreinterpretq_s8_u8(vshrq_n_u8(w, 4));
        for (size_t j = 0; j < NX; ++j) {
          acc[j] = vdotq_s32(acc[j], lo, Dup4(x[j] + 32 * b + 8 * sb));
          acc[j] = vdotq_s32(acc[j], hi, Dup4(x[j] + 32 * b + 8 * sb + 4));
        }
      }
      for (size_t j = 0; j < NX; ++j) vst1q_s32(out + (j * nb + b) * 16 + 4 * g, acc[j]);
    }
  }
}

// INT8 head: a 64-byte group s of a 32-column block holds, per row, its weights of columns
// 4s..4s+3 as int8 (|w| <= 127): one SDOT per 4 rows, 32 products of <= 127 * 128 per lane.
template <size_t NX>
TERNLM_DOTPROD_ATTR void Int8Dots(const uint8_t* tile, size_t nb, const int8_t* const* x, int32_t* out) {
  for (size_t b = 0; b < nb; ++b) {
    int32x4_t acc[NX][4];
    for (size_t j = 0; j < NX; ++j)
      for (size_t g = 0; g < 4; ++g) acc[j][g] = vdupq_n_s32(0);
    for (size_t s = 0; s < 8; ++s) {
      int8x16_t xs[NX];
      for (size_t j = 0; j < NX; ++j) xs[j] = Dup4(x[j] + 32 * b + 4 * s);
      for (size_t g = 0; g < 4; ++g) {  // rows 4g .. 4g + 3
        const int8x16_t w = vreinterpretq_s8_u8(vld1q_u8(tile + 512 * b + 64 * s + 16 * g));
        for (size_t j = 0; j < NX; ++j) acc[j][g] = vdotq_s32(acc[j][g], w, xs[j]);
      }
    }
    for (size_t j = 0; j < NX; ++j)
      for (size_t g = 0; g < 4; ++g) vst1q_s32(out + (j * nb + b) * 16 + 4 * g, acc[j][g]);
  }
}

// q6: a sub-block's 192 code bytes are three 64-byte groups lo_a, lo_b, hi with 4 bytes per
// row; byte i of a row's lane holds column 4k + i of code u = low nibble | 2 high bits << 4:
//   k = 0: lo_a & 15 | (hi & 3) << 4      k = 1: lo_a >> 4 | (hi >> 2 & 3) << 4
//   k = 2: lo_b & 15 | (hi >> 4 & 3) << 4  k = 3: lo_b >> 4 | (hi >> 6) << 4
// (u8 shifts stay within their byte); u <= 63 is a valid s8, so one SDOT per k.
template <size_t NX>
TERNLM_DOTPROD_ATTR void Q6Dots(const uint8_t* codes, size_t nsub, const int8_t* const* x, int32_t* out) {
  const uint8x16_t m15 = vdupq_n_u8(15), m3 = vdupq_n_u8(3);
  for (size_t i = 0; i < nsub; ++i) {
    const uint8_t* c = codes + kQ6SubCodeBytes * i;
    int8x16_t xs[NX][4];
    for (size_t j = 0; j < NX; ++j)
      for (size_t k = 0; k < 4; ++k) xs[j][k] = Dup4(x[j] + 16 * i + 4 * k);
    for (size_t g = 0; g < 4; ++g) {  // rows 4g .. 4g + 3
      const uint8x16_t lo_a = vld1q_u8(c + 16 * g), lo_b = vld1q_u8(c + 64 + 16 * g);
      const uint8x16_t hi = vld1q_u8(c + 128 + 16 * g);
      const int8x16_t u[4] = {
          vreinterpretq_s8_u8(vorrq_u8(vandq_u8(lo_a, m15), vshlq_n_u8(vandq_u8(hi, m3), 4))),
          vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(lo_a, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hi, 2), m3), 4))),
          vreinterpretq_s8_u8(vorrq_u8(vandq_u8(lo_b, m15), vshlq_n_u8(vandq_u8(vshrq_n_u8(hi, 4), m3), 4))),
          vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(lo_b, 4), vshlq_n_u8(vshrq_n_u8(hi, 6), 4)))};
      for (size_t j = 0; j < NX; ++j) {
        int32x4_t acc = vdupq_n_s32(0);
        for (size_t k = 0; k < 4; ++k) acc = vdotq_s32(acc, u[k], xs[j][k]);
        vst1q_s32(out + (j * nsub + i) * 16 + 4 * g, acc);
      }
    }
  }
}

}  // namespace

void Int8TileBlockDotsDotProd(size_t nx, const uint8_t* tile, size_t nb, const int8_t* const* x, int32_t* out) {
  switch (nx) {
    case 4: Int8Dots<4>(tile, nb, x, out); break;
    case 3: Int8Dots<3>(tile, nb, x, out); break;
    case 2: Int8Dots<2>(tile, nb, x, out); break;
    default: Int8Dots<1>(tile, nb, x, out); break;
  }
}

void Q6SubDotsDotProd(size_t nx, const uint8_t* codes, size_t nsub, const int8_t* const* x, int32_t* out) {
  switch (nx) {
    case 4: Q6Dots<4>(codes, nsub, x, out); break;
    case 3: Q6Dots<3>(codes, nsub, x, out); break;
    case 2: Q6Dots<2>(codes, nsub, x, out); break;
    default: Q6Dots<1>(codes, nsub, x, out); break;
  }
}

void TernaryTileDotsDotProd(size_t nx, const uint8_t* tile, size_t nblocks, const int8_t* const* x, int32_t* out) {
  switch (nx) {
    case 4: TernaryDots<4>(tile, nblocks, x, out); break;
    case 3: TernaryDots<3>(tile, nblocks, x, out); break;
    case 2: TernaryDots<2>(tile, nblocks, x, out); break;
    default: TernaryDots<1>(tile, nblocks, x, out); break;
  }
}

void Int4TileBlockDotsDotProd(size_t nx, const uint8_t* tile, size_t b0, size_t nb, size_t group_shift,
                              const int8_t* const* x, int32_t* out) {
  switch (nx) {
    case 4: Int4Dots<4>(tile, b0, nb, group_shift, x, out); break;
    case 3: Int4Dots<3>(tile, b0, nb, group_shift, x, out); break;
    case 2: Int4Dots<2>(tile, b0, nb, group_shift, x, out); break;
    default: Int4Dots<1>(tile, b0, nb, group_shift, x, out); break;
  }
}

}  // namespace ternlm
#endif  // TERNLM_DOTPROD_KERNELS
