// INT8 matmul kernel (formats/int8.h: 16-row tiles, lane r of each 64-byte block = row r's
// four weights), compiled once per Highway target. Per tile and 32-column activation block
// it forms the exact int32 dots I[r, b] of the 16 rows (no horizontal sums), then
// y[r] = row_multiplier[r] * sum_b float(I[r, b]) / s_b in f32.
// Paths for the integer dots:
//   AVX2, AVX3 and the VNNI targets: pmaddubsw at the target's full width on |x| (u8) and
//     the weights with x's sign applied (s8: the weights are in [-127, 127], so negating
//     one fits); a pair sums to <= 2 * 128 * 127 = 32512 (no saturation), pmaddwd by 1
//     finishes each lane's four products in i32 (kernels/int8_dots-inl.h)
//   AVX3_DL (and AVX3 on CPUs with AVX512-VNNI): vpdpbusd on the weights + 128 (u8, one XOR)
//     and the activations (s8), less 128 * sum(x) per block (Int8TileVnni)
//   NEON on aarch64 CPUs with the dot-product extension: SDOT block dots
//     (kernels/dotprod_aarch64.h), the rest in Highway ops as below (Int8TileDotProd)
//   every other target (SSE4, NEON without it, EMU128, SCALAR): portable Highway in i32
//     lanes, one lane per tile row, each weight byte sign-extended by shifts
#if defined(TERNLM_KERNELS_INT8_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
// Highway compiles this header once per target (foreach_target), so the guard below toggles
// instead of blocking; the includes and namespaces after it are the preamble every
// kernels/*-inl.h shares.
#ifdef TERNLM_KERNELS_INT8_MATMUL_INL_H_
#undef TERNLM_KERNELS_INT8_MATMUL_INL_H_
#else
#define TERNLM_KERNELS_INT8_MATMUL_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include <algorithm>

#include "formats/int8.h"
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


// dot[j] (lanes = tile rows row0 ..) += the exact dots of those rows with x[j][0..31] over
// one 32-column activation block, whose eight 64-byte weight blocks start at codes.
template <size_t NX>
HWY_INLINE void Int8BlockDots(const uint8_t* HWY_RESTRICT codes, size_t row0, const int8_t* const* x,
                              hn::Vec<HeadDI32>* dot) {
#if TERNLM_PATH_BYTE_DOTS
  const DI8 di8;
  for (size_t s = 0; s < 8; ++s) {
    const auto w = hn::LoadU(di8, reinterpret_cast<const int8_t*>(codes + 64 * s + 4 * row0));
    const auto neg = hn::Neg(w);
    for (size_t j = 0; j < NX; ++j) {
      const auto xb = Broadcast4(x[j] + 4 * s);
      const auto signed_w = hn::IfNegativeThenElse(xb, neg, w);
      dot[j] = hn::Add(dot[j], SumPairs(MulBytes(hn::BitCast(DU8(), hn::Abs(xb)), signed_w)));
    }
  }
#else
  const HeadDI32 di;
  for (size_t s = 0; s < 8; ++s) {
    const hn::RebindToUnsigned<HeadDI32> du;
    const auto v = hn::LoadU(du, reinterpret_cast<const uint32_t*>(codes + 64 * s + 4 * row0));
    for (size_t i = 0; i < 4; ++i) {  // byte i of each lane, sign-extended
      const auto w = hn::ShiftRightSame(hn::BitCast(di, hn::ShiftLeftSame(v, int(24 - 8 * i))), 24);
      for (size_t j = 0; j < NX; ++j) dot[j] = hn::Add(dot[j], hn::Mul(w, hn::Set(di, int32_t(x[j][4 * s + i]))));
    }
  }
#endif
}

// out[16 j + r] = y of tile row r for activation row j (f32, int8.h numerics), or with
// int_out the block dots I[r, b] of activation row 0 at int_out[b * 16 + r].
template <size_t NX>
HWY_INLINE void Int8Tile(const uint8_t* HWY_RESTRICT tile, const float* HWY_RESTRICT mult, size_t nb32,
                         const int8_t* const* x, const float* const* inv, float* HWY_RESTRICT out,
                         int32_t* HWY_RESTRICT int_out) {
  const HeadDI32 di;
  const hn::Rebind<float, HeadDI32> df;
  const size_t N = hn::Lanes(di);
  for (size_t row0 = 0; row0 < kTileRows; row0 += N) {
    hn::Vec<decltype(df)> acc[NX];
    for (size_t j = 0; j < NX; ++j) acc[j] = hn::Zero(df);
    const int8_t* xs[NX];
    for (size_t b = 0; b < nb32; ++b) {
      hn::Vec<HeadDI32> dot[NX];
      for (size_t j = 0; j < NX; ++j) dot[j] = hn::Zero(di), xs[j] = x[j] + 32 * b;
      Int8BlockDots<NX>(tile + 512 * b, row0, xs, dot);
      if (int_out) hn::StoreU(dot[0], di, int_out + 16 * b + row0);
      for (size_t j = 0; j < NX; ++j) acc[j] = hn::MulAdd(hn::ConvertTo(df, dot[j]), hn::Set(df, inv[j][b]), acc[j]);
    }
    const auto m = hn::LoadU(df, mult + row0);
    for (size_t j = 0; j < NX; ++j) hn::StoreU(hn::Mul(m, acc[j]), df, out + 16 * j + row0);
  }
}

#if TERNLM_PATH_NEON && TERNLM_DOTPROD_KERNELS
// Int8Tile with the block dots of runs of kRun blocks from SDOT; then the same f32
// operations in the same order per lane (so the same results bit for bit).
template <size_t NX>
HWY_INLINE void Int8TileDotProd(const uint8_t* HWY_RESTRICT tile, const float* HWY_RESTRICT mult, size_t nb32,
                                const int8_t* const* x, const float* const* inv, float* HWY_RESTRICT out,
                                int32_t* HWY_RESTRICT int_out) {
  constexpr size_t kRun = 8;
  const HeadDI32 di;
  const hn::Rebind<float, HeadDI32> df;
  const size_t N = hn::Lanes(di);
  hn::Vec<decltype(df)> acc[NX][kTileRows];  // [j][row0 / N]
  for (size_t j = 0; j < NX; ++j)
    for (size_t g = 0; g < kTileRows / N; ++g) acc[j][g] = hn::Zero(df);
  HWY_ALIGN int32_t dots[kMaxActivationRows * kRun * kTileRows];
  for (size_t b0 = 0; b0 < nb32; b0 += kRun) {
    const size_t nb = std::min(kRun, nb32 - b0);
    const int8_t* xs[NX];
    for (size_t j = 0; j < NX; ++j) xs[j] = x[j] + 32 * b0;
    Int8TileBlockDotsDotProd(NX, tile + 512 * b0, nb, xs, dots);
    for (size_t b = 0; b < nb; ++b) {
      if (int_out) std::copy(dots + 16 * b, dots + 16 * (b + 1), int_out + 16 * (b0 + b));
      for (size_t row0 = 0; row0 < kTileRows; row0 += N)
        for (size_t j = 0; j < NX; ++j) {
          const auto dot = hn::Load(di, dots + (j * nb + b) * kTileRows + row0);
          acc[j][row0 / N] = hn::MulAdd(hn::ConvertTo(df, dot), hn::Set(df, inv[j][b0 + b]), acc[j][row0 / N]);
        }
    }
  }
  for (size_t row0 = 0; row0 < kTileRows; row0 += N) {
    const auto m = hn::LoadU(df, mult + row0);
    for (size_t j = 0; j < NX; ++j) hn::StoreU(hn::Mul(m, acc[j][row0 / N]), df, out + 16 * j + row0);
  }
}
#endif

#if TERNLM_PATH_VNNI || TERNLM_PATH_AVX3
// Int8Tile with vpdpbusd: sum (w + 128) x - 128 sum(x) = the same exact block dots, the same
// f32 operations in the same order. sub_sum[j]: sum of x[j] per 16 columns. Not inlined:
// it adds avx512vnni (kernels/vnni_attr.h).
template <size_t NX>
HWY_NOINLINE TERNLM_VNNI_ATTR void Int8TileVnni(const uint8_t* HWY_RESTRICT tile, const float* HWY_RESTRICT mult,
                                                size_t nb32, const int8_t* const* x, const float* const* inv,
                                                const int32_t* const* sub_sum, float* HWY_RESTRICT out,
                                                int32_t* HWY_RESTRICT int_out) {
  const __m512i bias = _mm512_set1_epi8(-128);
  __m512 acc[NX];
  for (size_t j = 0; j < NX; ++j) acc[j] = _mm512_setzero_ps();
  for (size_t b = 0; b < nb32; ++b) {
    __m512i dot[NX];
    for (size_t j = 0; j < NX; ++j) dot[j] = _mm512_set1_epi32(-128 * (sub_sum[j][2 * b] + sub_sum[j][2 * b + 1]));
    for (size_t s = 0; s < 8; ++s) {
      const __m512i w = _mm512_xor_si512(_mm512_loadu_si512(tile + 512 * b + 64 * s), bias);  // w + 128
      for (size_t j = 0; j < NX; ++j)
        dot[j] = _mm512_dpbusd_epi32(dot[j], w, _mm512_set1_epi32(LoadI32(x[j] + 32 * b + 4 * s)));
    }
    if (int_out) _mm512_storeu_si512(int_out + 16 * b, dot[0]);
    for (size_t j = 0; j < NX; ++j)
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[j]), _mm512_set1_ps(inv[j][b]), acc[j]);
  }
  const __m512 m = _mm512_loadu_ps(mult);
  for (size_t j = 0; j < NX; ++j) _mm512_storeu_ps(out + 16 * j, _mm512_mul_ps(m, acc[j]));
}
#endif

// Int8Tile on the best path this target and CPU have.
template <size_t NX>
HWY_INLINE void Int8TileBest(const uint8_t* HWY_RESTRICT tile, const float* HWY_RESTRICT mult, size_t nb32,
                             const int8_t* const* x, const float* const* inv, const int32_t* const* sub_sum,
                             float* HWY_RESTRICT out, int32_t* HWY_RESTRICT int_out) {
#if TERNLM_PATH_VNNI
  return Int8TileVnni<NX>(tile, mult, nb32, x, inv, sub_sum, out, int_out);
#else
#if TERNLM_PATH_AVX3
  if (Avx3VnniEnabled()) return Int8TileVnni<NX>(tile, mult, nb32, x, inv, sub_sum, out, int_out);
#endif
  (void)sub_sum;
#if TERNLM_PATH_NEON && TERNLM_DOTPROD_KERNELS
  if (ArmDotProdEnabled()) return Int8TileDotProd<NX>(tile, mult, nb32, x, inv, out, int_out);
#endif
  Int8Tile<NX>(tile, mult, nb32, x, inv, out, int_out);
#endif
}

// Rows [r0, r1) of y (r0 a multiple of 16) for every activation row. mult: the row
// multipliers padded to whole tiles (the caller's copy for the last partial tile).
HWY_NOINLINE void Int8MatMulRows(const uint8_t* tiles, size_t padded_cols, const float* mult, size_t rows,
                                 const PreparedActivations& a, size_t r0, size_t r1, const MatMulOutput& out) {
  const size_t nb32 = padded_cols / 32, tile_bytes = Int8TileBytes(padded_cols);
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
      sums[j] = a.sub_sum + (x0 + j) * 2 * nb32;
    }
    float m16[kTileRows] = {};
    const float* m = mult + t * kTileRows;
    if ((t + 1) * kTileRows > rows) {  // the last, partial tile: padding rows scale 0
      for (size_t r = t * kTileRows; r < rows; ++r) m16[r - t * kTileRows] = mult[r];
      m = m16;
    }
    WithActivationRows(nx, [&](auto k) HWY_ATTR {
      Int8TileBest<decltype(k)::value>(tiles + t * tile_bytes, m, nb32, xs, inv, sums, acc, nullptr);
    });
    StoreTileRows(acc, t, r1, x0, nx, out.y, out.y_stride);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
