// Ternary matmul kernel, compiled once per Highway target, over the 16-row tile
// layout of formats/ternary.h. For one tile and NX activation rows at once (the
// weights unpacked once, used NX times) it computes the exact integer sums
// sum_c code[r, c] * q[c] for the tile's 16 rows; the caller subtracts sum(q).
// Each 32-bit lane of a vector belongs to one weight row, and the four activation
// bytes that a lane's four codes multiply are broadcast to every lane, so no path
// needs a horizontal sum. Paths:
//   AVX3_DL: vpdpbusd (u8 codes x s8 activations -> i32), 512-bit, codes isolated by
//     an AND alone (field k scaled by 4^k, one accumulator per k, shifted back exactly);
//     also AVX3 (Skylake-SP .. Cooper Lake) when the CPU has AVX512-VNNI (Cascade Lake)
//   AVX3 without VNNI / AVX2: pmaddubsw (u8 x s8 -> i16 pairs, |pair| <= 2*2*128, no saturation),
//     the four fields summed in i16 (<= 2048), then pmaddwd by 1 -> i32; one kernel for
//     both widths (TernaryTileDotsMaddubs, kernels/int8_dots-inl.h)
//   NEON (aarch64) with the dot-product extension: vdotq_s32 (s8 codes x s8 activations,
//     four per 32-bit lane -> i32), fields isolated by an AND (scaled 4^k) as for VNNI
//   NEON without it: vmlal_s8 (s8 codes x s8 activations -> s16), vpadalq_s16 -> s32
//   otherwise (SSE4, EMU128, ...): portable Highway, codes widened to i16 lanes and
//     multiplied by i16 activations (the four columns of a field repeated for every row);
//     HWY_SCALAR (one lane): plain C
//   AMX (Sapphire Rapids+), 16 or more activation rows: TDPBSUD tiles, kernels/amx_x86.h
// The x86 paths also prefetch the weight stream where PrefetchDistance() asks (Intel
// CPUs with AVX-512: runtime/targets.h).
#if defined(TERNLM_KERNELS_TERNARY_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TERNLM_KERNELS_TERNARY_MATMUL_INL_H_
#undef TERNLM_KERNELS_TERNARY_MATMUL_INL_H_
#else
#define TERNLM_KERNELS_TERNARY_MATMUL_INL_H_
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "formats/ternary.h"
#include "hwy/highway.h"
#include "kernels/activations.h"
#include "kernels/amx_x86.h"
#include "kernels/dotprod_aarch64.h"
#include "kernels/int8_dots-inl.h"
#include "kernels/target_paths.h"
#include "kernels/tiles-inl.h"
#include "kernels/vnni_attr.h"
#include "runtime/targets.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#if TERNLM_PATH_VNNI || TERNLM_PATH_AVX3
// TernaryTileDots with vpdpbusd. Not inlined: compiled with avx512vnni added (see
// kernels/vnni_attr.h for why); on AVX3 called only where the CPU has VNNI.
template <size_t NX>
HWY_NOINLINE TERNLM_VNNI_ATTR void TernaryTileDotsVnni(const uint8_t* HWY_RESTRICT tile, size_t nblocks,
                                                      const int8_t* const* x, int32_t* HWY_RESTRICT out) {
  // |code * 4^k| <= 128 and |x| <= 128: one vpdpbusd adds at most 2^16 to a lane, so a
  // run of 2^14 blocks cannot overflow i32; longer rows are summed in runs.
  constexpr size_t kRun = size_t(1) << 14;
  // Two sets of accumulators (even/odd blocks) when NX is small, to hide the latency.
  constexpr size_t kSets = NX <= 2 ? 2 : 1;
  const size_t pf = PrefetchDistance();
  const __m512i mask[4] = {_mm512_set1_epi8(0x03), _mm512_set1_epi8(0x0C),
                           _mm512_set1_epi8(0x30), _mm512_set1_epi8(char(0xC0))};
  __m512i total[NX];
  for (size_t j = 0; j < NX; ++j) total[j] = _mm512_setzero_si512();
  for (size_t b0 = 0; b0 < nblocks; b0 += kRun) {
    const size_t b1 = std::min(nblocks, b0 + kRun);
    __m512i acc[kSets][NX][4];
#pragma GCC unroll 16
    for (size_t s = 0; s < kSets; ++s)
#pragma GCC unroll 4
      for (size_t j = 0; j < NX; ++j)
#pragma GCC unroll 4
        for (size_t k = 0; k < 4; ++k) acc[s][j][k] = _mm512_setzero_si512();
    for (size_t b = b0; b < b1; b += kSets) {
#pragma GCC unroll 2
      for (size_t s = 0; s < kSets; ++s) {
        PrefetchAhead(tile + 64 * (b + s), 64, pf);
        const __m512i packed = _mm512_load_si512(tile + 64 * (b + s));
#pragma GCC unroll 4
        for (size_t k = 0; k < 4; ++k) {
          const __m512i c = _mm512_and_si512(packed, mask[k]);
#pragma GCC unroll 4
          for (size_t j = 0; j < NX; ++j)
            acc[s][j][k] = _mm512_dpbusd_epi32(
                acc[s][j][k], c, _mm512_set1_epi32(LoadI32(x[j] + 16 * (b + s) + 4 * k)));
        }
      }
    }
#pragma GCC unroll 4
    for (size_t j = 0; j < NX; ++j) {
      __m512i a[4];
      for (size_t k = 0; k < 4; ++k)
        a[k] = kSets == 2 ? _mm512_add_epi32(acc[0][j][k], acc[kSets - 1][j][k]) : acc[0][j][k];
      const __m512i sum = _mm512_add_epi32(
          _mm512_add_epi32(a[0], _mm512_srai_epi32(a[1], 2)),
          _mm512_add_epi32(_mm512_srai_epi32(a[2], 4), _mm512_srai_epi32(a[3], 6)));
      total[j] = _mm512_add_epi32(total[j], sum);
    }
  }
  for (size_t j = 0; j < NX; ++j) _mm512_storeu_si512(out + 16 * j, total[j]);
}
#endif

#if TERNLM_PATH_AVX3 || TERNLM_PATH_AVX2
// TernaryTileDots with pmaddubsw (AVX3 without VNNI, AVX2), at the target's full width
// (kernels/int8_dots-inl.h): a 64-byte block is kVectorsPerBlock vectors of kVectorRows
// tile rows. Field k of every byte (codes <= 2) times its columns' activations gives i16
// pairs |p| <= 2 * 2 * 128; the four fields of a block sum to <= 2048 in i16 (no
// saturation), then pmaddwd by 1 widens them to i32.
template <size_t NX>
HWY_INLINE void TernaryTileDotsMaddubs(const uint8_t* HWY_RESTRICT tile, size_t nblocks, const int8_t* const* x,
                                       int32_t* HWY_RESTRICT out) {
  const DU8 du8;
  const DI32 di32;
  const auto three = hn::Set(du8, 3);
  const size_t pf = PrefetchDistance();
  hn::Vec<DI32> acc[NX][kVectorsPerBlock];
  for (size_t j = 0; j < NX; ++j)
    for (size_t h = 0; h < kVectorsPerBlock; ++h) acc[j][h] = hn::Zero(di32);
  for (size_t b = 0; b < nblocks; ++b) {
    PrefetchAhead(tile + 64 * b, 64, pf);
    for (size_t h = 0; h < kVectorsPerBlock; ++h) {  // tile rows kVectorRows * h ..
      const auto packed = hn::Load(du8, tile + 64 * b + kVectorBytes * h);
      const hn::Vec<DU8> c[4] = {hn::And(packed, three), hn::And(ShiftBytes<2>(packed), three),
                                 hn::And(ShiftBytes<4>(packed), three), hn::And(ShiftBytes<6>(packed), three)};
      for (size_t j = 0; j < NX; ++j) {
        const int8_t* xb = x[j] + 16 * b;
        auto s = MulBytes(c[0], Broadcast4(xb));
        s = hn::Add(s, MulBytes(c[1], Broadcast4(xb + 4)));
        s = hn::Add(s, MulBytes(c[2], Broadcast4(xb + 8)));
        s = hn::Add(s, MulBytes(c[3], Broadcast4(xb + 12)));
        acc[j][h] = hn::Add(acc[j][h], SumPairs(s));
      }
    }
  }
  for (size_t j = 0; j < NX; ++j)
    for (size_t h = 0; h < kVectorsPerBlock; ++h)
      hn::StoreU(acc[j][h], di32, out + 16 * j + kVectorRows * h);
}
#endif

// out[16 * j + r] = sum_c code[r, c] * x[j][c] over the nblocks blocks (16 columns
// each; nblocks is even) of one tile, for j < NX.
template <size_t NX>
HWY_INLINE void TernaryTileDots(const uint8_t* HWY_RESTRICT tile, size_t nblocks, const int8_t* const* x,
                                int32_t* HWY_RESTRICT out) {
#if TERNLM_PATH_VNNI
  TernaryTileDotsVnni<NX>(tile, nblocks, x, out);
#elif TERNLM_PATH_AVX3
  if (Avx3VnniEnabled()) {
    TernaryTileDotsVnni<NX>(tile, nblocks, x, out);
    return;
  }
  TernaryTileDotsMaddubs<NX>(tile, nblocks, x, out);
#elif TERNLM_PATH_AVX2
  TernaryTileDotsMaddubs<NX>(tile, nblocks, x, out);
#elif TERNLM_PATH_NEON
#if TERNLM_DOTPROD_KERNELS
  if (ArmDotProdEnabled()) {  // vdotq_s32 (kernels/dotprod_aarch64.h)
    TernaryTileDotsDotProd(NX, tile, nblocks, x, out);
    return;
  }
#endif
  // NEON (aarch64): a q-register of a block holds 4 rows x 4 bytes; field k of every byte
  // is isolated in u8 (shift, AND: codes <= 2), and vmlal_s8 multiplies 8 codes by 8 s8
  // activations into s16 (the field's four columns repeated for every row: one 32-bit dup
  // load). The four fields of a block add at most 4 * 2 * 128 = 1024 to an s16 lane; runs
  // of 16 blocks stay in s16, then vpadalq_s16 folds byte pairs into s32 lanes, and one
  // vpaddq_s32 at the end leaves the four rows' sums in order. Rows are done 4 at a time
  // (the tile's other bytes are read from L1 on the later passes).
  constexpr size_t kRun = 16;
  for (size_t g = 0; g < 4; ++g) {
    int32x4_t lo32[NX], hi32[NX];
    for (size_t j = 0; j < NX; ++j) lo32[j] = hi32[j] = vdupq_n_s32(0);
    for (size_t b0 = 0; b0 < nblocks; b0 += kRun) {
      const size_t b1 = std::min(nblocks, b0 + kRun);
      int16x8_t lo16[NX], hi16[NX];
      for (size_t j = 0; j < NX; ++j) lo16[j] = hi16[j] = vdupq_n_s16(0);
      for (size_t b = b0; b < b1; ++b) {
        const uint8x16_t w = vld1q_u8(tile + 64 * b + 16 * g);
        const uint8x16_t three = vdupq_n_u8(3);
        const int8x16_t f[4] = {vreinterpretq_s8_u8(vandq_u8(w, three)),
                                vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(w, 2), three)),
                                vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(w, 4), three)),
                                vreinterpretq_s8_u8(vshrq_n_u8(w, 6))};
        for (size_t k = 0; k < 4; ++k)
          for (size_t j = 0; j < NX; ++j) {
            const int8x16_t a = vreinterpretq_s8_s32(vdupq_n_s32(LoadI32(x[j] + 16 * b + 4 * k)));
            lo16[j] = vmlal_s8(lo16[j], vget_low_s8(f[k]), vget_low_s8(a));
            hi16[j] = vmlal_high_s8(hi16[j], f[k], a);
          }
      }
      for (size_t j = 0; j < NX; ++j) {
        lo32[j] = vpadalq_s16(lo32[j], lo16[j]);
        hi32[j] = vpadalq_s16(hi32[j], hi16[j]);
      }
    }
    for (size_t j = 0; j < NX; ++j) vst1q_s32(out + 16 * j + 4 * g, vpaddq_s32(lo32[j], hi32[j]));
  }
#elif HWY_TARGET == HWY_SCALAR
  for (size_t i = 0; i < 16 * NX; ++i) out[i] = 0;
  for (size_t b = 0; b < nblocks; ++b)
    for (size_t byte = 0; byte < 64; ++byte) {
      const unsigned codes = tile[64 * b + byte];
      for (size_t j = 0; j < NX; ++j) {
        const int8_t* xb = x[j] + 16 * b + byte % 4;
        out[16 * j + byte / 4] += int32_t(codes & 3) * xb[0] + int32_t((codes >> 2) & 3) * xb[4] +
                                  int32_t((codes >> 4) & 3) * xb[8] + int32_t(codes >> 6) * xb[12];
      }
    }
#else
  // Portable (SSE4, NEON, EMU128, ...), in i16 lanes: a chunk of N16 bytes of a block
  // (N16 / 4 rows x 4 bytes) is widened to i16 once; field k of every byte (a shift and an
  // AND) times the i16 activation of its column, which is the same four columns for every
  // row, so one activation vector serves the whole chunk. Sums stay in i16 for runs of
  // kRun blocks (|sum| <= kRun * 4 fields * 2 * 128 = 16384), then each row's four lanes
  // are added into out.
  const DW16 d16;
  const hn::Rebind<uint8_t, DW16> du8;
  const size_t N16 = hn::Lanes(d16);
  constexpr size_t kRun = 16;
  HWY_ALIGN int16_t act[kRun * 4 * NX * kMaxW16Lanes];
  const auto three = hn::Set(d16, 3);
  for (size_t i = 0; i < 16 * NX; ++i) out[i] = 0;
  for (size_t b0 = 0; b0 < nblocks; b0 += kRun) {
    const size_t nb = std::min(kRun, nblocks - b0);
    for (size_t b = 0; b < nb; ++b)  // activations of the run: the 4 columns of field k, repeated
      for (size_t k = 0; k < 4; ++k)
        for (size_t j = 0; j < NX; ++j)
          StoreWidened4(x[j] + 16 * (b0 + b) + 4 * k, act + ((b * 4 + k) * NX + j) * N16);
    for (size_t c = 0; c < 64; c += N16) {  // bytes c .. c + N16 of each block: rows c/4 ..
      hn::Vec<DW16> acc[NX];
      for (size_t j = 0; j < NX; ++j) acc[j] = hn::Zero(d16);
      for (size_t b = 0; b < nb; ++b) {
        const auto w = hn::PromoteTo(d16, hn::LoadU(du8, tile + 64 * (b0 + b) + c));
        const int16_t* a = act + b * 4 * NX * N16;
        const hn::Vec<DW16> f[4] = {hn::And(w, three), hn::And(hn::ShiftRight<2>(w), three),
                                    hn::And(hn::ShiftRight<4>(w), three), hn::ShiftRight<6>(w)};
        for (size_t k = 0; k < 4; ++k)
          for (size_t j = 0; j < NX; ++j)
            acc[j] = hn::Add(acc[j], hn::Mul(f[k], hn::Load(d16, a + (k * NX + j) * N16)));
      }
      for (size_t j = 0; j < NX; ++j) AddLanesToRows(acc[j], c, out + 16 * j);
    }
  }
#endif
}

// Rows [r0, r1) of y for every activation row (r0 a multiple of 16):
// y = (codes·q - sum q) / s_x * row_multiplier.
HWY_NOINLINE void TernaryMatMulRows(const uint8_t* packed, size_t padded_cols, const float* mult,
                                    const PreparedActivations& a, size_t r0, size_t r1,
                                    const MatMulOutput& out) {
#if (TERNLM_PATH_VNNI || TERNLM_PATH_AVX3) && TERNLM_AMX_KERNELS
  // Prefill on AMX CPUs (kernels/amx_x86.h): the same exact sums, 256x the work per instruction.
  if (a.n >= kAmxMinRows && AmxEnabled() && TernaryMatMulRowsAmx(packed, padded_cols, mult, a, r0, r1, out)) return;
#endif
  const size_t tile_bytes = TernaryTileBytes(padded_cols);
  HWY_ALIGN int32_t d[kMaxActivationRows * kTileRows];
  HWY_ALIGN float y[kMaxActivationRows * kTileRows];
  ForEachTileGroup(r0, r1, a.n, tile_bytes, [&](size_t t, size_t x0, size_t nx) HWY_ATTR {
    const int8_t* xs[kMaxActivationRows];
    for (size_t j = 0; j < nx; ++j) xs[j] = a.q + (x0 + j) * a.stride;
    const uint8_t* tile = packed + t * tile_bytes;
    WithActivationRows(nx, [&](auto k) HWY_ATTR {
      TernaryTileDots<decltype(k)::value>(tile, padded_cols / kTernaryBlockCols, xs, d);
    });
    const float* m = mult + t * kTileRows;
    const size_t rows = std::min(kTileRows, r1 - t * kTileRows);  // mult has only real rows
    for (size_t j = 0; j < nx; ++j) {
      const int32_t qs = a.q_sum[x0 + j];
      const float sx = a.inv_scale[x0 + j];
      for (size_t r = 0; r < rows; ++r) y[kTileRows * j + r] = float(d[kTileRows * j + r] - qs) * sx * m[r];
    }
    StoreTileRows(y, t, r1, x0, nx, out.y, out.y_stride);
  });
}

// Exact integer sums t·q for every row, one activation row (tests call this).
HWY_NOINLINE void TernaryIntDotsRows(const uint8_t* packed, size_t padded_cols, size_t rows,
                                     const int8_t* q, int32_t q_sum, int32_t* out) {
  const int8_t* xs[1] = {q};
  HWY_ALIGN int32_t d[kTileRows];
  for (size_t rb = 0; rb < rows; rb += kTileRows) {
    TernaryTileDots<1>(packed + (rb / kTileRows) * TernaryTileBytes(padded_cols),
                       padded_cols / kTernaryBlockCols, xs, d);
    for (size_t r = rb; r < std::min(rows, rb + kTileRows); ++r) out[r] = d[r - rb] - q_sum;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
