// INT4 matmul kernel, compiled once per Highway target, over the 16-row tile layout
// of formats/int4.h. For one tile, a run of 32-column activation blocks and NX
// activation rows it computes the exact integer dots of the 4-bit codes with the int8
// activations, 16 rows per vector (lane r = row r, the four activation bytes of a
// lane's codes broadcast to all lanes: no horizontal sums); a portable epilogue turns
// them into f32 with scale_g / s_b and adds the min term min_g * sum(q / s_b in g).
// Paths for the integer dots:
//   AVX3_DL: vpdpbusd (u8 codes x s8 activations -> i32), 512-bit; also AVX3 when the
//     CPU has AVX512-VNNI (Cascade Lake: runtime/targets.h Avx3VnniEnabled)
//   AVX3 without VNNI / AVX2: pmaddubsw (u8 <= 15 x s8 -> i16 pairs, |pair| <= 2*15*128; eight of
//     them summed in i16 <= 30720, no saturation), then pmaddwd by 1 -> i32; one kernel for
//     both widths (Int4TileBlockDotsMaddubs, kernels/int8_dots-inl.h)
//   NEON (aarch64) with the dot-product extension: vdotq_s32 (s8 nibbles x s8 -> i32)
//   NEON without it: vmlal_s8 (s8 nibbles x s8 activations -> s16), pairwise adds -> s32
//   otherwise (SSE4, EMU128, ...): portable Highway, codes widened to i16 lanes and
//     multiplied by i16 activations; HWY_SCALAR (one lane): plain C
// With groups of 32 (GGUF Q4_0/Q4_1) the VNNI kernels and AVX2 fuse the dots, the scales and the
// min term of a tile in registers (Int4TileG32) instead; with 16+ activation rows on AMX
// CPUs (Sapphire Rapids+) the dots run on AMX tiles (kernels/amx_x86.h).
#if defined(TERNLM_KERNELS_INT4_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TERNLM_KERNELS_INT4_MATMUL_INL_H_
#undef TERNLM_KERNELS_INT4_MATMUL_INL_H_
#else
#define TERNLM_KERNELS_INT4_MATMUL_INL_H_
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "formats/int4.h"
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

#if TERNLM_PATH_AVX2 || TERNLM_PATH_AVX3
// pmaddubsw at the target's full width (kernels/int8_dots-inl.h): s16[j] = the i16 pair
// sums of tile rows kVectorRows * h .. kVectorRows * (h + 1) - 1 with x[j] over activation
// block b, whose 256 bytes of codes start at codes. Eight pairs of a block sum to <= 8 * 2
// * 15 * 128 = 30720 (no saturation); SumPairs (pmaddwd by 1) finishes them in i32.
template <size_t NX>
HWY_INLINE void Int4PartBlockDots(const uint8_t* HWY_RESTRICT codes, size_t h, size_t b, const int8_t* const* x,
                                  hn::Vec<DI16>* s16) {
  const DU8 du8;
  const auto m4 = hn::Set(du8, 0x0F);
  for (size_t j = 0; j < NX; ++j) s16[j] = hn::Zero(DI16());
  for (size_t s = 0; s < 4; ++s) {
    const auto v = hn::Load(du8, codes + 64 * s + kVectorBytes * h);
    const auto lo = hn::And(v, m4);
    const auto hi = hn::And(ShiftBytes<4>(v), m4);
    for (size_t j = 0; j < NX; ++j) {
      const int8_t* x8 = x[j] + 32 * b + 8 * s;
      s16[j] = hn::Add(s16[j], MulBytes(lo, Broadcast4(x8)));
      s16[j] = hn::Add(s16[j], MulBytes(hi, Broadcast4(x8 + 4)));
    }
  }
}

// Int4TileBlockDots with pmaddubsw (AVX3 without VNNI, AVX2).
template <size_t NX>
HWY_INLINE void Int4TileBlockDotsMaddubs(const uint8_t* HWY_RESTRICT tile, size_t b0, size_t nb,
                                         size_t group_shift, const int8_t* const* x, int32_t* HWY_RESTRICT out) {
  const size_t pf = PrefetchDistance();
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* codes = Int4TileBlockCodes(tile, b0 + b, group_shift);
    PrefetchAhead(codes, 256, pf);
    for (size_t h = 0; h < kVectorsPerBlock; ++h) {
      hn::Vec<DI16> s16[NX];
      Int4PartBlockDots<NX>(codes, h, b, x, s16);
      for (size_t j = 0; j < NX; ++j)
        hn::Store(SumPairs(s16[j]), DI32(), out + (j * nb + b) * 16 + kVectorRows * h);
    }
  }
}
#endif

#if TERNLM_PATH_VNNI || TERNLM_PATH_AVX3
// dot[j] = the exact integer dots of the tile's 16 rows with x[j] over activation block b,
// whose 256 bytes of codes (four 64-byte blocks of 8 columns, low and high nibbles)
// start at codes.
template <size_t NX>
__attribute__((always_inline)) inline TERNLM_VNNI_ATTR void Int4BlockDotsVnni(
    const uint8_t* HWY_RESTRICT codes, size_t b, const int8_t* const* x, __m512i* dot) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512i lo_acc[NX], hi_acc[NX];
  for (size_t j = 0; j < NX; ++j) lo_acc[j] = hi_acc[j] = _mm512_setzero_si512();
#pragma GCC unroll 4
  for (size_t s = 0; s < 4; ++s) {
    const __m512i v = _mm512_load_si512(codes + 64 * s);
    const __m512i lo = _mm512_and_si512(v, m4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
#pragma GCC unroll 4
    for (size_t j = 0; j < NX; ++j) {
      const int8_t* x8 = x[j] + 32 * b + 8 * s;
      lo_acc[j] = _mm512_dpbusd_epi32(lo_acc[j], lo, _mm512_set1_epi32(LoadI32(x8)));
      hi_acc[j] = _mm512_dpbusd_epi32(hi_acc[j], hi, _mm512_set1_epi32(LoadI32(x8 + 4)));
    }
  }
  for (size_t j = 0; j < NX; ++j) dot[j] = _mm512_add_epi32(lo_acc[j], hi_acc[j]);
}
#endif


#if TERNLM_PATH_VNNI || TERNLM_PATH_AVX3
// Int4TileBlockDots with vpdpbusd; not inlined: adds avx512vnni (kernels/vnni_attr.h).
template <size_t NX>
HWY_NOINLINE TERNLM_VNNI_ATTR void Int4TileBlockDotsVnni(const uint8_t* HWY_RESTRICT tile, size_t b0, size_t nb,
                                                        size_t group_shift, const int8_t* const* x,
                                                        int32_t* HWY_RESTRICT out) {
  const size_t pf = PrefetchDistance();
  for (size_t b = 0; b < nb; ++b) {
    __m512i dot[NX];
    const uint8_t* codes = Int4TileBlockCodes(tile, b0 + b, group_shift);
    PrefetchAhead(codes, 256, pf);
    Int4BlockDotsVnni<NX>(codes, b, x, dot);
    for (size_t j = 0; j < NX; ++j) _mm512_store_si512(out + (j * nb + b) * 16, dot[j]);
  }
}
#endif

// out[(j * nb + b) * 16 + r] = exact dot of row r's codes with x[j] over activation
// block b0 + b for b < nb; x[j] points at block b0's first column.
template <size_t NX>
HWY_INLINE void Int4TileBlockDots(const uint8_t* HWY_RESTRICT tile, size_t b0, size_t nb, size_t group_shift,
                                  const int8_t* const* x, int32_t* HWY_RESTRICT out) {
#if TERNLM_PATH_VNNI
  Int4TileBlockDotsVnni<NX>(tile, b0, nb, group_shift, x, out);
#elif TERNLM_PATH_AVX3
  if (Avx3VnniEnabled()) {
    Int4TileBlockDotsVnni<NX>(tile, b0, nb, group_shift, x, out);
    return;
  }
  Int4TileBlockDotsMaddubs<NX>(tile, b0, nb, group_shift, x, out);
#elif TERNLM_PATH_AVX2
  Int4TileBlockDotsMaddubs<NX>(tile, b0, nb, group_shift, x, out);
#elif TERNLM_PATH_NEON
#if TERNLM_DOTPROD_KERNELS
  if (ArmDotProdEnabled()) {  // vdotq_s32 (kernels/dotprod_aarch64.h)
    Int4TileBlockDotsDotProd(NX, tile, b0, nb, group_shift, x, out);
    return;
  }
#endif
  // NEON (aarch64): a q-register of a 64-byte sub-block holds 4 rows x 4 bytes; its low and
  // high nibbles (<= 15) times the s8 activations of their columns (one 32-bit dup load
  // each, the same for every row) with vmlal_s8 into s16: a lane's 8 products of a block
  // sum to at most 8 * 15 * 128 = 15360. vpaddlq_s16 + vpaddq_s32 leave the 4 rows' sums.
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* codes = Int4TileBlockCodes(tile, b0 + b, group_shift);
    for (size_t g = 0; g < 4; ++g) {  // rows 4g .. 4g + 3
      int16x8_t lo16[NX], hi16[NX];
      for (size_t j = 0; j < NX; ++j) lo16[j] = hi16[j] = vdupq_n_s16(0);
      for (size_t sb = 0; sb < 4; ++sb) {
        const uint8x16_t w = vld1q_u8(codes + 64 * sb + 16 * g);
        const int8x16_t nib[2] = {vreinterpretq_s8_u8(vandq_u8(w, vdupq_n_u8(15))),
                                  vreinterpretq_s8_u8(vshrq_n_u8(w, 4))};
        for (size_t j = 0; j < NX; ++j)
          for (size_t h = 0; h < 2; ++h) {
            const int8x16_t a = vreinterpretq_s8_s32(vdupq_n_s32(LoadI32(x[j] + 32 * b + 8 * sb + 4 * h)));
            lo16[j] = vmlal_s8(lo16[j], vget_low_s8(nib[h]), vget_low_s8(a));
            hi16[j] = vmlal_high_s8(hi16[j], nib[h], a);
          }
      }
      for (size_t j = 0; j < NX; ++j)
        vst1q_s32(out + (j * nb + b) * 16 + 4 * g, vpaddq_s32(vpaddlq_s16(lo16[j]), vpaddlq_s16(hi16[j])));
    }
  }
#elif HWY_TARGET == HWY_SCALAR
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* codes = Int4TileBlockCodes(tile, b0 + b, group_shift);
    for (size_t j = 0; j < NX; ++j) {
      int32_t* o = out + (j * nb + b) * 16;
      for (size_t r = 0; r < 16; ++r) o[r] = 0;
      for (size_t byte = 0; byte < 256; ++byte) {  // sub-block byte / 64: columns 8 (byte / 64) ..
        const unsigned v = codes[byte];
        const int8_t* x8 = x[j] + 32 * b + 8 * (byte / 64) + byte % 4;
        o[byte % 64 / 4] += int32_t(v & 15) * x8[0] + int32_t(v >> 4) * x8[4];
      }
    }
  }
#else
  // Portable (SSE4, NEON, EMU128, ...), in i16 lanes like the ternary kernel: a chunk of
  // N16 bytes of a 64-byte sub-block (N16 / 4 rows x 4 bytes) widened to i16; its low and
  // high nibbles times the i16 activations of their columns (the same four for every row).
  // A lane's 8 products of a block sum to at most 8 * 15 * 128 = 15360: i16 holds them;
  // then each row's four lanes are added.
  const DW16 d16;
  const hn::Rebind<uint8_t, DW16> du8;
  const size_t N16 = hn::Lanes(d16);
  HWY_ALIGN int16_t act[8 * NX * kMaxW16Lanes];
  const auto m15 = hn::Set(d16, 15);
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* codes = Int4TileBlockCodes(tile, b0 + b, group_shift);
    for (size_t f = 0; f < 8; ++f)  // sub-block f / 2, nibble f % 2: columns 4f .. 4f + 3
      for (size_t j = 0; j < NX; ++j) StoreWidened4(x[j] + 32 * b + 4 * f, act + (f * NX + j) * N16);
    for (size_t j = 0; j < NX; ++j)
      for (size_t r = 0; r < 16; ++r) out[(j * nb + b) * 16 + r] = 0;
    for (size_t c = 0; c < 64; c += N16) {
      hn::Vec<DW16> acc[NX];
      for (size_t j = 0; j < NX; ++j) acc[j] = hn::Zero(d16);
      for (size_t sb = 0; sb < 4; ++sb) {
        const auto w = hn::PromoteTo(d16, hn::LoadU(du8, codes + 64 * sb + c));
        const auto lo = hn::And(w, m15), hi = hn::ShiftRight<4>(w);
        for (size_t j = 0; j < NX; ++j) {
          acc[j] = hn::Add(acc[j], hn::Mul(lo, hn::Load(d16, act + (2 * sb * NX + j) * N16)));
          acc[j] = hn::Add(acc[j], hn::Mul(hi, hn::Load(d16, act + ((2 * sb + 1) * NX + j) * N16)));
        }
      }
      for (size_t j = 0; j < NX; ++j) AddLanesToRows(acc[j], c, out + (j * nb + b) * 16);
    }
  }
#endif
}

#if TERNLM_PATH_VNNI || TERNLM_PATH_AVX3
// Groups of 32 (GGUF Q4_0/Q4_1, the default): the integer dots, the scales and the min
// term of one tile in one pass, all in registers. out[16 j + r] = y of tile row r for
// activation row j. tile: nb32 groups of 320 bytes (codes, 16 fp16 scales, 16 fp16
// mins); inv[j], gsum[j]: 1/s_b and the group sums of activation row j.
template <size_t NX>
HWY_NOINLINE TERNLM_VNNI_ATTR void Int4TileG32(const uint8_t* HWY_RESTRICT tile, size_t nb32,
                                               const int8_t* const* x, const float* const* inv,
                                               const float* const* gsum, float* HWY_RESTRICT out) {
  __m512 acc[NX], macc[NX];
  const size_t pf = PrefetchDistance();
  for (size_t j = 0; j < NX; ++j) acc[j] = macc[j] = _mm512_setzero_ps();
  for (size_t b = 0; b < nb32; ++b) {
    const uint8_t* grp = tile + 320 * b;
    PrefetchAhead(grp, 320, pf);
    __m512i dot[NX];
    Int4BlockDotsVnni<NX>(grp, b, x, dot);
    const __m512 scale = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(grp + 256)));
    const __m512 mins = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(grp + 288)));
#pragma GCC unroll 4
    for (size_t j = 0; j < NX; ++j) {
      const __m512 d = _mm512_cvtepi32_ps(dot[j]);
      acc[j] = _mm512_fmadd_ps(d, _mm512_mul_ps(scale, _mm512_set1_ps(inv[j][b])), acc[j]);
      macc[j] = _mm512_fmadd_ps(mins, _mm512_set1_ps(gsum[j][b]), macc[j]);
    }
  }
  for (size_t j = 0; j < NX; ++j) _mm512_storeu_ps(out + 16 * j, _mm512_add_ps(macc[j], acc[j]));
}
#endif

#if TERNLM_PATH_AVX2
// The same for AVX2: per half tile (8 rows in a 256-bit register) the eight pmaddubsw of a 32-column block are summed in i16
// (<= 8 * 2 * 15 * 128 = 30720), widened by pmaddwd, then scaled and the min term added
// in f32 registers; no i32 buffer, no separate epilogue.
template <size_t NX>
HWY_INLINE void Int4TileG32(const uint8_t* HWY_RESTRICT tile, size_t nb32, const int8_t* const* x,
                            const float* const* inv, const float* const* gsum, float* HWY_RESTRICT out) {
  const size_t pf = PrefetchDistance();
  for (size_t h = 0; h < 2; ++h) {  // rows 0-7, rows 8-15 (the second pass reads L2)
    __m256 acc[NX], macc[NX];
    for (size_t j = 0; j < NX; ++j) acc[j] = macc[j] = _mm256_setzero_ps();
    for (size_t b = 0; b < nb32; ++b) {
      const uint8_t* grp = tile + 320 * b;
      PrefetchAhead(grp, 320, h == 0 ? pf : 0);
      hn::Vec<DI16> s16[NX];
      Int4PartBlockDots<NX>(grp, h, b, x, s16);
      const __m256 scale = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(grp + 256 + 16 * h)));
      const __m256 mins = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(grp + 288 + 16 * h)));
      for (size_t j = 0; j < NX; ++j) {
        const __m256 d = _mm256_cvtepi32_ps(SumPairs(s16[j]).raw);
        acc[j] = _mm256_fmadd_ps(d, _mm256_mul_ps(scale, _mm256_set1_ps(inv[j][b])), acc[j]);
        macc[j] = _mm256_fmadd_ps(mins, _mm256_set1_ps(gsum[j][b]), macc[j]);
      }
    }
    for (size_t j = 0; j < NX; ++j) _mm256_storeu_ps(out + 16 * j + 8 * h, _mm256_add_ps(macc[j], acc[j]));
  }
}
#endif

// Rows [r0, r1) of y (r0 a multiple of 16) for every activation row, over the in-memory
// tiles of int4.h (per group: codes, 16 scales, 16 mins; one stream per task).
HWY_NOINLINE void Int4MatMulRows(const uint8_t* tiles, size_t padded_cols, int group,
                                 const PreparedActivations& a, size_t r0, size_t r1,
                                 const MatMulOutput& out) {
  const hn::CappedTag<float, kTileRows> df;
  const hn::Rebind<int32_t, decltype(df)> di;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const size_t N = hn::Lanes(df);
  const size_t g = size_t(group), nb32 = padded_cols / 32, gpr = padded_cols / g, per_g = g / 32;
  const size_t group_bytes = Int4GroupBytes(g), tile_bytes = Int4TileBytes(padded_cols, g);
  HWY_ALIGN float acc[kMaxActivationRows * kTileRows];
#if TERNLM_PATH_VNNI || TERNLM_PATH_AVX2 || TERNLM_PATH_AVX3
  // Group 32: dots, scales and min term fused (Int4TileG32). (AVX-512 without VNNI keeps
  // the path below: its 512-bit dots beat the 256-bit fused kernel in decode.)
  if (per_g == 1 && (!TERNLM_PATH_AVX3 || Avx3VnniEnabled())) {
#if (TERNLM_PATH_VNNI || TERNLM_PATH_AVX3) && TERNLM_AMX_KERNELS
    // Prefill on AMX CPUs (kernels/amx_x86.h): the same dots and epilogue, in AMX tiles.
    if (a.n >= kAmxMinRows && AmxEnabled() && Int4G32MatMulRowsAmx(tiles, padded_cols, a, r0, r1, out)) return;
#endif
    ForEachTileGroup(r0, r1, a.n, tile_bytes, [&](size_t t, size_t x0, size_t nx) HWY_ATTR {
      // Each tiled kernel points at its rows' codes, block scales and a per-format third array
      // (group sums, sub-block sums): the gathering looks the same, what it gathers differs.
      const int8_t* xs[kMaxActivationRows];
      const float* inv[kMaxActivationRows];
      const float* gs[kMaxActivationRows];
      for (size_t j = 0; j < nx; ++j) {
        xs[j] = a.q + (x0 + j) * a.stride;
        inv[j] = a.inv_scale + (x0 + j) * nb32;
        gs[j] = a.group_sum + (x0 + j) * gpr;
      }
      WithActivationRows(nx, [&](auto k) HWY_ATTR {
        Int4TileG32<decltype(k)::value>(tiles + t * tile_bytes, nb32, xs, inv, gs, acc);
      });
      StoreTileRows(acc, t, r1, x0, nx, out.y, out.y_stride);
    });
    return;
  }
#endif
  // Other targets and groups: the min term first, then runs of kRun activation blocks:
  // their integer dots into a small buffer, then scale_g / s_b per block.
  constexpr size_t kRun = 16;  // activation blocks (512 columns) per run
  const size_t group_shift = per_g == 1 ? 0 : per_g == 2 ? 1 : 2;
  HWY_ALIGN int32_t dots[kMaxActivationRows * kRun * kTileRows];
  ForEachTileGroup(r0, r1, a.n, tile_bytes, [&](size_t t, size_t x0, size_t nx) HWY_ATTR {
    const uint8_t* tile = tiles + t * tile_bytes;
    for (size_t j = 0; j < nx; ++j) {  // acc = sum_g min_g * group_sum_g
      const float* gs = a.group_sum + (x0 + j) * gpr;
      for (size_t r = 0; r < kTileRows; r += N) {
        auto v = hn::Zero(df);
        for (size_t gi = 0; gi < gpr; ++gi) {
          const auto* mn = reinterpret_cast<const hwy::float16_t*>(tile + gi * group_bytes + 8 * g + 32);
          v = hn::MulAdd(hn::PromoteTo(df, hn::LoadU(dh, mn + r)), hn::Set(df, gs[gi]), v);
        }
        hn::Store(v, df, acc + 16 * j + r);
      }
    }
    for (size_t b0 = 0; b0 < nb32; b0 += kRun) {
      const size_t nb = std::min(kRun, nb32 - b0);
      const int8_t* xs[kMaxActivationRows];
      for (size_t j = 0; j < nx; ++j) xs[j] = a.q + (x0 + j) * a.stride + 32 * b0;
      WithActivationRows(nx, [&](auto k) HWY_ATTR {
        Int4TileBlockDots<decltype(k)::value>(tile, b0, nb, group_shift, xs, dots);
      });
      for (size_t j = 0; j < nx; ++j) {
        const float* inv = a.inv_scale + (x0 + j) * nb32 + b0;
        for (size_t r = 0; r < kTileRows; r += N) {
          auto v = hn::Load(df, acc + 16 * j + r);
          for (size_t b = 0; b < nb; ++b) {
            const auto* sc = reinterpret_cast<const hwy::float16_t*>(
                tile + ((b0 + b) >> group_shift) * group_bytes + 8 * g);
            const auto d = hn::ConvertTo(df, hn::Load(di, dots + (j * nb + b) * 16 + r));
            v = hn::MulAdd(d, hn::Mul(hn::PromoteTo(df, hn::LoadU(dh, sc + r)), hn::Set(df, inv[b])), v);
          }
          hn::Store(v, df, acc + 16 * j + r);
        }
      }
    }
    StoreTileRows(acc, t, r1, x0, nx, out.y, out.y_stride);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
