// Q6 matmul kernel (formats/q6.h), compiled once per Highway target. Per tile, sub-block
// of 16 columns and activation row it forms the exact dots sum u * q of the 16 rows' 6-bit
// codes (lane r = row r, no horizontal sums), removes 32 * sum(q) and weights them by the
// int8 sub-block scales: the block sums I[r, b] of q6.h, exact in int32
// (|I| <= 2 * 128 * 16 * 32 * 127). Then f32: per super-block sum_b I / s_b, times d.
// Paths for the integer dots:
//   AVX2, AVX3 and the VNNI targets: the codes of four columns are rebuilt in the bytes of
//     a full-width vector (lo nibble | hi 2 bits << 4: three ANDs, two shifts, one OR) and
//     multiplied by pmaddubsw (u8 <= 63 x s8 -> i16 pairs, two of them summed <= 4 * 63 *
//     128 = 32256, no saturation), pmaddwd by 1 -> i32 (kernels/int8_dots-inl.h)
//   AVX3_DL (and AVX3 on CPUs with AVX512-VNNI): the same codes, vpdpbusd (u8 x s8, four
//     products summed into i32 per lane) instead, in Q6TileVnni
//   NEON on aarch64 CPUs with the dot-product extension: SDOT sub-block dots
//     (kernels/dotprod_aarch64.h), the rest in Highway ops as below (Q6TileDotProd)
//   every other target (SSE4, NEON without it, EMU128, SCALAR): portable Highway in i32
//     lanes, one lane per tile row, each code shifted out of its lane
#if defined(TERNLM_KERNELS_Q6_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
// Highway compiles this header once per target (foreach_target), so the guard below toggles
// instead of blocking; the includes and namespaces after it are the preamble every
// kernels/*-inl.h shares.
#ifdef TERNLM_KERNELS_Q6_MATMUL_INL_H_
#undef TERNLM_KERNELS_Q6_MATMUL_INL_H_
#else
#define TERNLM_KERNELS_Q6_MATMUL_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include "formats/q6.h"
#include "hwy/highway.h"
#include "kernels/activations.h"
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

// dot[j] (lanes = tile rows row0 ..) = sum_c u[r, c] * x[j][c] over one sub-block (16
// columns), whose 192 code bytes start at codes.
template <size_t NX>
HWY_INLINE void Q6SubDots(const uint8_t* HWY_RESTRICT codes, size_t row0, const int8_t* const* x,
                          hn::Vec<HeadDI32>* dot) {
#if TERNLM_PATH_BYTE_DOTS
  const DU8 du8;
  const auto m4 = hn::Set(du8, 0x0F), m30 = hn::Set(du8, 0x30);
  const auto lo_a = hn::LoadU(du8, codes + 4 * row0);
  const auto lo_b = hn::LoadU(du8, codes + 64 + 4 * row0);
  const auto hi = hn::LoadU(du8, codes + 128 + 4 * row0);
  const hn::Repartition<uint16_t, DU8> du16;
  // hi's 2-bit field k moved to bits 4..5 of its byte (bits that cross from the neighbour
  // byte in the 16-bit shift fall outside the mask)
  const auto h0 = hn::And(hn::BitCast(du8, hn::ShiftLeft<4>(hn::BitCast(du16, hi))), m30);
  const auto h1 = hn::And(hn::BitCast(du8, hn::ShiftLeft<2>(hn::BitCast(du16, hi))), m30);
  const auto h2 = hn::And(hi, m30);
  const auto h3 = hn::And(ShiftBytes<2>(hi), m30);
  const auto c0 = hn::Or(hn::And(lo_a, m4), h0);
  const auto c1 = hn::Or(hn::And(ShiftBytes<4>(lo_a), m4), h1);
  const auto c2 = hn::Or(hn::And(lo_b, m4), h2);
  const auto c3 = hn::Or(hn::And(ShiftBytes<4>(lo_b), m4), h3);
  for (size_t j = 0; j < NX; ++j) {
    const int8_t* xj = x[j];
    const auto s01 = hn::Add(MulBytes(c0, Broadcast4(xj)), MulBytes(c1, Broadcast4(xj + 4)));
    const auto s23 = hn::Add(MulBytes(c2, Broadcast4(xj + 8)), MulBytes(c3, Broadcast4(xj + 12)));
    dot[j] = hn::Add(SumPairs(s01), SumPairs(s23));
  }
#else
  const HeadDI32 di;
  const hn::RebindToUnsigned<HeadDI32> du;
  const auto m4 = hn::Set(du, 15u), m3 = hn::Set(du, 3u);
  for (size_t j = 0; j < NX; ++j) dot[j] = hn::Zero(di);
  const auto hi = hn::LoadU(du, reinterpret_cast<const uint32_t*>(codes + 128 + 4 * row0));
  for (size_t k = 0; k < 4; ++k) {
    const auto lo = hn::LoadU(du, reinterpret_cast<const uint32_t*>(codes + 64 * (k / 2) + 4 * row0));
    for (size_t i = 0; i < 4; ++i) {
      const auto l4 = hn::And(hn::ShiftRightSame(lo, int(8 * i + 4 * (k % 2))), m4);
      const auto h2 = hn::And(hn::ShiftRightSame(hi, int(8 * i + 2 * k)), m3);
      const auto u = hn::BitCast(di, hn::Or(l4, hn::ShiftLeft<4>(h2)));
      for (size_t j = 0; j < NX; ++j) dot[j] = hn::Add(dot[j], hn::Mul(u, hn::Set(di, int32_t(x[j][4 * k + i]))));
    }
  }
#endif
}

// out[16 j + r] = y of tile row r for activation row j (f32, q6.h numerics), or with
// int_out also the block sums I[r, b] of activation row 0 at int_out[b * 16 + r].
// sub_sum[j]: sum of x[j] per 16 columns.
template <size_t NX>
HWY_INLINE void Q6Tile(const uint8_t* HWY_RESTRICT tile, size_t padded_cols, const int8_t* const* x,
                       const float* const* inv, const int32_t* const* sub_sum, float* HWY_RESTRICT out,
                       int32_t* HWY_RESTRICT int_out) {
  const HeadDI32 di;
  const hn::Rebind<float, HeadDI32> df;
  const hn::Rebind<int8_t, HeadDI32> di8;
  const hn::Rebind<hwy::float16_t, HeadDI32> df16;
  const size_t N = hn::Lanes(di);
  for (size_t row0 = 0; row0 < kTileRows; row0 += N) {
    hn::Vec<decltype(df)> acc[NX];
    for (size_t j = 0; j < NX; ++j) acc[j] = hn::Zero(df);
    const uint8_t* sb = tile;
    for (size_t s = 0; s < Q6SuperBlocks(padded_cols); ++s) {
      const size_t n = Q6SuperCols(padded_cols, s), nsub = n / kQ6SubCols, c0 = s * kQ6SuperCols;
      const uint8_t* scales = sb + nsub * kQ6SubCodeBytes;
      hn::Vec<decltype(df)> part[NX];
      for (size_t j = 0; j < NX; ++j) part[j] = hn::Zero(df);
      for (size_t b = 0; b < nsub / 2; ++b) {
        hn::Vec<HeadDI32> blk[NX];
        for (size_t j = 0; j < NX; ++j) blk[j] = hn::Zero(di);
        for (size_t h = 0; h < 2; ++h) {
          const size_t sub = 2 * b + h, col = c0 + kQ6SubCols * sub;
          const int8_t* xs[NX];
          for (size_t j = 0; j < NX; ++j) xs[j] = x[j] + col;
          hn::Vec<HeadDI32> dot[NX];
          Q6SubDots<NX>(sb + sub * kQ6SubCodeBytes, row0, xs, dot);
          const auto sc = hn::PromoteTo(di, hn::LoadU(di8, reinterpret_cast<const int8_t*>(scales + 16 * sub + row0)));
          for (size_t j = 0; j < NX; ++j) {
            const auto centred = hn::Sub(dot[j], hn::Set(di, 32 * sub_sum[j][col / kQ6SubCols]));
            blk[j] = hn::Add(blk[j], hn::Mul(centred, sc));
          }
        }
        const size_t bg = c0 / 32 + b;
        if (int_out) hn::StoreU(blk[0], di, int_out + 16 * bg + row0);
        for (size_t j = 0; j < NX; ++j)
          part[j] = hn::MulAdd(hn::ConvertTo(df, blk[j]), hn::Set(df, inv[j][bg]), part[j]);
      }
      const auto* dp = reinterpret_cast<const hwy::float16_t*>(sb + Q6SuperBytes(n) - 32);
      const auto d = hn::PromoteTo(df, hn::LoadU(df16, dp + row0));
      for (size_t j = 0; j < NX; ++j) acc[j] = hn::MulAdd(d, part[j], acc[j]);
      sb += Q6SuperBytes(n);
    }
    for (size_t j = 0; j < NX; ++j) hn::StoreU(acc[j], df, out + 16 * j + row0);
  }
}

#if TERNLM_PATH_NEON && TERNLM_DOTPROD_KERNELS
// Q6Tile with the raw code dots of each super-block's sub-blocks from SDOT; the centring,
// sub-block scales and f32 operations as Q6Tile's, in the same order per lane (so the same
// results bit for bit).
template <size_t NX>
HWY_INLINE void Q6TileDotProd(const uint8_t* HWY_RESTRICT tile, size_t padded_cols, const int8_t* const* x,
                              const float* const* inv, const int32_t* const* sub_sum, float* HWY_RESTRICT out,
                              int32_t* HWY_RESTRICT int_out) {
  const HeadDI32 di;
  const hn::Rebind<float, HeadDI32> df;
  const hn::Rebind<int8_t, HeadDI32> di8;
  const hn::Rebind<hwy::float16_t, HeadDI32> df16;
  const size_t N = hn::Lanes(di);
  hn::Vec<decltype(df)> acc[NX][kTileRows];  // [j][row0 / N]
  for (size_t j = 0; j < NX; ++j)
    for (size_t g = 0; g < kTileRows / N; ++g) acc[j][g] = hn::Zero(df);
  HWY_ALIGN int32_t dots[kMaxActivationRows * (kQ6SuperCols / kQ6SubCols) * kTileRows];
  const uint8_t* sb = tile;
  for (size_t s = 0; s < Q6SuperBlocks(padded_cols); ++s) {
    const size_t n = Q6SuperCols(padded_cols, s), nsub = n / kQ6SubCols, c0 = s * kQ6SuperCols;
    const uint8_t* scales = sb + nsub * kQ6SubCodeBytes;
    const int8_t* xs[NX];
    for (size_t j = 0; j < NX; ++j) xs[j] = x[j] + c0;
    Q6SubDotsDotProd(NX, sb, nsub, xs, dots);
    const auto* dp = reinterpret_cast<const hwy::float16_t*>(sb + Q6SuperBytes(n) - 32);
    for (size_t row0 = 0; row0 < kTileRows; row0 += N) {
      hn::Vec<decltype(df)> part[NX];
      for (size_t j = 0; j < NX; ++j) part[j] = hn::Zero(df);
      for (size_t b = 0; b < nsub / 2; ++b) {
        hn::Vec<HeadDI32> blk[NX];
        for (size_t j = 0; j < NX; ++j) blk[j] = hn::Zero(di);
        for (size_t h = 0; h < 2; ++h) {
          const size_t sub = 2 * b + h, col = c0 + kQ6SubCols * sub;
          const auto sc = hn::PromoteTo(di, hn::LoadU(di8, reinterpret_cast<const int8_t*>(scales + 16 * sub + row0)));
          for (size_t j = 0; j < NX; ++j) {
            const auto dot = hn::Load(di, dots + (j * nsub + sub) * kTileRows + row0);
            const auto centred = hn::Sub(dot, hn::Set(di, 32 * sub_sum[j][col / kQ6SubCols]));
            blk[j] = hn::Add(blk[j], hn::Mul(centred, sc));
          }
        }
        const size_t bg = c0 / 32 + b;
        if (int_out) hn::StoreU(blk[0], di, int_out + 16 * bg + row0);
        for (size_t j = 0; j < NX; ++j)
          part[j] = hn::MulAdd(hn::ConvertTo(df, blk[j]), hn::Set(df, inv[j][bg]), part[j]);
      }
      const auto d = hn::PromoteTo(df, hn::LoadU(df16, dp + row0));
      for (size_t j = 0; j < NX; ++j) acc[j][row0 / N] = hn::MulAdd(d, part[j], acc[j][row0 / N]);
    }
    sb += Q6SuperBytes(n);
  }
  for (size_t row0 = 0; row0 < kTileRows; row0 += N)
    for (size_t j = 0; j < NX; ++j) hn::StoreU(acc[j][row0 / N], df, out + 16 * j + row0);
}
#endif

#if TERNLM_PATH_VNNI || TERNLM_PATH_AVX3
// Q6Tile with vpdpbusd, all 16 rows in one register; the same integer sums and the same f32
// operations in the same order (so the same results bit for bit). Not inlined: it adds
// avx512vnni (kernels/vnni_attr.h).
template <size_t NX>
HWY_NOINLINE TERNLM_VNNI_ATTR void Q6TileVnni(const uint8_t* HWY_RESTRICT tile, size_t padded_cols,
                                              const int8_t* const* x, const float* const* inv,
                                              const int32_t* const* sub_sum, float* HWY_RESTRICT out,
                                              int32_t* HWY_RESTRICT int_out) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  __m512 acc[NX];
  for (size_t j = 0; j < NX; ++j) acc[j] = _mm512_setzero_ps();
  const uint8_t* sb = tile;
  for (size_t s = 0; s < Q6SuperBlocks(padded_cols); ++s) {
    const size_t n = Q6SuperCols(padded_cols, s), nsub = n / kQ6SubCols, c0 = s * kQ6SuperCols;
    const uint8_t* scales = sb + nsub * kQ6SubCodeBytes;
    __m512 part[NX];
    for (size_t j = 0; j < NX; ++j) part[j] = _mm512_setzero_ps();
    for (size_t b = 0; b < nsub / 2; ++b) {
      __m512i blk[NX];
      for (size_t j = 0; j < NX; ++j) blk[j] = _mm512_setzero_si512();
      for (size_t h = 0; h < 2; ++h) {
        const size_t sub = 2 * b + h, col = c0 + kQ6SubCols * sub;
        const uint8_t* codes = sb + sub * kQ6SubCodeBytes;
        const __m512i lo_a = _mm512_loadu_si512(codes), lo_b = _mm512_loadu_si512(codes + 64);
        const __m512i hi = _mm512_loadu_si512(codes + 128);
        const __m512i c[4] = {
            _mm512_or_si512(_mm512_and_si512(lo_a, m4), _mm512_and_si512(_mm512_slli_epi16(hi, 4), m30)),
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(lo_a, 4), m4),
                            _mm512_and_si512(_mm512_slli_epi16(hi, 2), m30)),
            _mm512_or_si512(_mm512_and_si512(lo_b, m4), _mm512_and_si512(hi, m30)),
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(lo_b, 4), m4),
                            _mm512_and_si512(_mm512_srli_epi16(hi, 2), m30))};
        const __m512i sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + 16 * sub)));
        for (size_t j = 0; j < NX; ++j) {
          __m512i d = _mm512_set1_epi32(-32 * sub_sum[j][col / kQ6SubCols]);
          for (size_t k = 0; k < 4; ++k) d = _mm512_dpbusd_epi32(d, c[k], _mm512_set1_epi32(LoadI32(x[j] + col + 4 * k)));
          blk[j] = _mm512_add_epi32(blk[j], _mm512_mullo_epi32(d, sc));
        }
      }
      const size_t bg = c0 / 32 + b;
      if (int_out) _mm512_storeu_si512(int_out + 16 * bg, blk[0]);
      for (size_t j = 0; j < NX; ++j)
        part[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(blk[j]), _mm512_set1_ps(inv[j][bg]), part[j]);
    }
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + Q6SuperBytes(n) - 32)));
    for (size_t j = 0; j < NX; ++j) acc[j] = _mm512_fmadd_ps(d, part[j], acc[j]);
    sb += Q6SuperBytes(n);
  }
  for (size_t j = 0; j < NX; ++j) _mm512_storeu_ps(out + 16 * j, acc[j]);
}
#endif

// Q6Tile on the best path this target and CPU have.
template <size_t NX>
HWY_INLINE void Q6TileBest(const uint8_t* HWY_RESTRICT tile, size_t padded_cols, const int8_t* const* x,
                           const float* const* inv, const int32_t* const* sub_sum, float* HWY_RESTRICT out,
                           int32_t* HWY_RESTRICT int_out) {
#if TERNLM_PATH_VNNI
  return Q6TileVnni<NX>(tile, padded_cols, x, inv, sub_sum, out, int_out);
#else
#if TERNLM_PATH_AVX3
  if (Avx3VnniEnabled()) return Q6TileVnni<NX>(tile, padded_cols, x, inv, sub_sum, out, int_out);
#endif
#if TERNLM_PATH_NEON && TERNLM_DOTPROD_KERNELS
  if (ArmDotProdEnabled()) return Q6TileDotProd<NX>(tile, padded_cols, x, inv, sub_sum, out, int_out);
#endif
  Q6Tile<NX>(tile, padded_cols, x, inv, sub_sum, out, int_out);
#endif
}

// Rows [r0, r1) of y (r0 a multiple of 16) for every activation row.
HWY_NOINLINE void Q6MatMulRows(const uint8_t* tiles, size_t padded_cols, const PreparedActivations& a, size_t r0,
                               size_t r1, const MatMulOutput& out) {
  const size_t nb32 = padded_cols / 32, nsub = padded_cols / kQ6SubCols, tile_bytes = Q6TileBytes(padded_cols);
  HWY_ALIGN float acc[kMaxActivationRows * kTileRows];
  ForEachTileGroup(r0, r1, a.n, tile_bytes, [&](size_t t, size_t x0, size_t nx) HWY_ATTR {
    // Each tiled kernel points at its rows' codes, block scales and a per-format third array
    // (group sums, sub-block sums): the gathering looks the same, what it gathers differs.
    const int8_t* xs[kMaxActivationRows];
    const float* inv[kMaxActivationRows];
    const int32_t* sums[kMaxActivationRows];
    for (size_t j = 0; j < nx; ++j) {
      xs[j] = a.q + (x0 + j) * a.stride;
      inv[j] = a.inv_scale + (x0 + j) * nb32;
      sums[j] = a.sub_sum + (x0 + j) * nsub;
    }
    WithActivationRows(nx, [&](auto k) HWY_ATTR {
      Q6TileBest<decltype(k)::value>(tiles + t * tile_bytes, padded_cols, xs, inv, sums, acc, nullptr);
    });
    StoreTileRows(acc, t, r1, x0, nx, out.y, out.y_stride);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
