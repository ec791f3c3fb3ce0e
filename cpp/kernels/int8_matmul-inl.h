// INT8 matmul kernel (formats/int8.h: 16-row tiles, lane r of each 64-byte block = row r's
// four weights), compiled once per Highway target. Per tile and 32-column activation block
// it forms the exact int32 dots I[r, b] of the 16 rows (no horizontal sums), then
// y[r] = row_multiplier[r] * sum_b float(I[r, b]) / s_b in f32.
// Paths for the integer dots:
//   AVX2, AVX3 and the VNNI targets: pmaddubsw at the target's full width on |x| (u8) and
//     the weights with x's sign applied (s8: the weights are in [-127, 127], so negating
//     one fits); a pair sums to <= 2 * 128 * 127 = 32512 (no saturation), pmaddwd by 1
//     finishes each lane's four products in i32 (kernels/int8_dots-inl.h)
//   every other target (SSE4, NEON, EMU128, SCALAR): portable Highway in i32 lanes, one
//     lane per tile row, each weight byte sign-extended by shifts
#if defined(TERNLM_KERNELS_INT8_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TERNLM_KERNELS_INT8_MATMUL_INL_H_
#undef TERNLM_KERNELS_INT8_MATMUL_INL_H_
#else
#define TERNLM_KERNELS_INT8_MATMUL_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include "formats/int8.h"
#include "hwy/highway.h"
#include "kernels/activations.h"
#include "kernels/int8_dots-inl.h"
#include "kernels/target_paths.h"
#include "kernels/tiles-inl.h"
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

// Rows [r0, r1) of y (r0 a multiple of 16) for every activation row. mult: the row
// multipliers padded to whole tiles (the caller's copy for the last partial tile).
HWY_NOINLINE void Int8MatMulRows(const uint8_t* tiles, size_t padded_cols, const float* mult, size_t rows,
                                 const PreparedActivations& a, size_t r0, size_t r1, const MatMulOutput& out) {
  const size_t nb32 = padded_cols / 32, tile_bytes = Int8TileBytes(padded_cols);
  HWY_ALIGN float acc[kMaxActivationRows * kTileRows];
  ForEachTileGroup(r0, r1, a.n, tile_bytes, [&](size_t t, size_t x0, size_t nx) HWY_ATTR {
    const int8_t* xs[kMaxActivationRows];
    const float* inv[kMaxActivationRows];
    for (size_t j = 0; j < nx; ++j) {
      xs[j] = a.q + (x0 + j) * a.stride;
      inv[j] = a.inv_scale + (x0 + j) * nb32;
    }
    float m16[kTileRows] = {};
    const float* m = mult + t * kTileRows;
    if ((t + 1) * kTileRows > rows) {  // the last, partial tile: padding rows scale 0
      for (size_t r = t * kTileRows; r < rows; ++r) m16[r - t * kTileRows] = mult[r];
      m = m16;
    }
    WithActivationRows(nx, [&](auto k) HWY_ATTR {
      Int8Tile<decltype(k)::value>(tiles + t * tile_bytes, m, nb32, xs, inv, acc, nullptr);
    });
    StoreTileRows(acc, t, r1, x0, nx, out.y, out.y_stride);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
