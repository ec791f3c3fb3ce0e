// BF16, BF16C and F32 matmul kernels, compiled once per Highway target. F32 weights are
// row-major with rows padded to 16 columns; BF16 weights are in 16-row tiles
// (formats/bf16.h); BF16C tiles (formats/bf16c.h) are rebuilt into BF16 tile words in
// registers. Activations are f32 copies padded with zeros, so the inner loops
// have no tail. BF16 weights are widened to f32 (a shift or an AND), f32 accumulation;
// up to 4 activation rows per pass over the weights so prefill reads each weight once
// per 4 tokens. A row's result does not depend on how many activation rows run with it.
#if defined(TERNLM_KERNELS_FLOAT_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TERNLM_KERNELS_FLOAT_MATMUL_INL_H_
#undef TERNLM_KERNELS_FLOAT_MATMUL_INL_H_
#else
#define TERNLM_KERNELS_FLOAT_MATMUL_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include "formats/bf16.h"
#include "formats/bf16c.h"
#include "hwy/highway.h"
#include "kernels/tiles-inl.h"
#include "runtime/targets.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Loads N weights starting at w + i as f32.
template <class DF>
HWY_INLINE hn::Vec<DF> LoadWeights(DF df, const float* w, size_t i) {
  return hn::Load(df, w + i);
}
template <class DF>
HWY_INLINE hn::Vec<DF> LoadWeights(DF df, const hwy::bfloat16_t* w, size_t i) {
  const hn::Rebind<hwy::bfloat16_t, DF> dbf;
  return hn::PromoteTo(df, hn::LoadU(dbf, w + i));
}

// F32 weight rows times activation rows. Every row's dot product has one summation order,
// whatever the number of activation rows (a decode row, a speculative verify step of up
// to 9 rows, a prefill chunk): two FMA chains per activation row, over the even and the
// odd vectors of the row (a last odd vector on the even chain), then the sum of the two
// chains' lanes. So a token's logits are the same bit for bit in a decode step, a verify
// step or a prefill chunk (tests/test_exact_rows.py).
//
// Each weight row is streamed once, in order, as a GEMV streams it, and multiplied by up
// to 4 activation rows read from L1 (8 accumulators + 1 weight vector: fits 16 vector
// registers). Walking two weight rows at once reads two interleaved streams, which the
// hardware prefetcher follows worse (on a head larger than the caches, over twice the
// GEMV's time at 2 rows).
template <size_t NX, typename TW>
HWY_INLINE void FloatRowDots(const TW* HWY_RESTRICT w, size_t cols, const float* const* x, float* out) {
  const hn::CappedTag<float, 16> df;
  const size_t N = hn::Lanes(df);
  using V = hn::Vec<decltype(df)>;
  V even[NX], odd[NX];
#pragma GCC unroll 4
  for (size_t j = 0; j < NX; ++j) even[j] = odd[j] = hn::Zero(df);
  size_t i = 0;
  for (; i + 2 * N <= cols; i += 2 * N) {
    const V w0 = LoadWeights(df, w, i), w1 = LoadWeights(df, w, i + N);
#pragma GCC unroll 4
    for (size_t j = 0; j < NX; ++j) {
      even[j] = hn::MulAdd(w0, hn::LoadU(df, x[j] + i), even[j]);
      odd[j] = hn::MulAdd(w1, hn::LoadU(df, x[j] + i + N), odd[j]);
    }
  }
  if (i < cols) {  // cols is a multiple of N (16-column padding): at most one vector
    const V w0 = LoadWeights(df, w, i);
#pragma GCC unroll 4
    for (size_t j = 0; j < NX; ++j) even[j] = hn::MulAdd(w0, hn::LoadU(df, x[j] + i), even[j]);
  }
#pragma GCC unroll 4
  for (size_t j = 0; j < NX; ++j) out[j] = hn::GetLane(hn::SumOfLanes(df, hn::Add(even[j], odd[j])));
}

// Activation rows [x0, x0 + NX) times weight rows [r0, r1).
template <size_t NX, typename TW>
HWY_INLINE void FloatRowsNX(const TW* w, size_t stride, const PreparedActivations& a, size_t x0, size_t r0,
                            size_t r1, const MatMulOutput& out) {
  const float* xs[NX];
  for (size_t j = 0; j < NX; ++j) xs[j] = a.xf + (x0 + j) * a.stride;
  float d[NX];
  for (size_t r = r0; r < r1; ++r) {
    FloatRowDots<NX>(w + r * stride, stride, xs, d);
    for (size_t j = 0; j < NX; ++j) out.y[(x0 + j) * out.y_stride + r] = d[j];
  }
}

// 5 to 8 activation rows (a speculative verify step, a few sequences decoding): each
// weight row streamed once, for rows 0-3 and then, from L1, for rows 4 .. 4 + NX2.
template <size_t NX2, typename TW>
HWY_INLINE void FloatRowsTwoGroups(const TW* w, size_t stride, const PreparedActivations& a, size_t r0,
                                   size_t r1, const MatMulOutput& out) {
  for (size_t r = r0; r < r1; ++r) {
    FloatRowsNX<4>(w, stride, a, 0, r, r + 1, out);
    FloatRowsNX<NX2>(w, stride, a, 4, r, r + 1, out);
  }
}

template <typename TW>
HWY_INLINE void FloatMatMulRowsT(const TW* w, size_t stride, const PreparedActivations& a,
                                 size_t r0, size_t r1, const MatMulOutput& out) {
  switch (a.n) {  // once per call: each row count has its own loop
    case 1: return FloatRowsNX<1>(w, stride, a, 0, r0, r1, out);
    case 2: return FloatRowsNX<2>(w, stride, a, 0, r0, r1, out);
    case 3: return FloatRowsNX<3>(w, stride, a, 0, r0, r1, out);
    case 4: return FloatRowsNX<4>(w, stride, a, 0, r0, r1, out);
    case 5: return FloatRowsTwoGroups<1>(w, stride, a, r0, r1, out);
    case 6: return FloatRowsTwoGroups<2>(w, stride, a, r0, r1, out);
    case 7: return FloatRowsTwoGroups<3>(w, stride, a, r0, r1, out);
    case 8: return FloatRowsTwoGroups<4>(w, stride, a, r0, r1, out);
    default: break;
  }
  // Prefill: slices of weight rows that stay in L2 while every group of 4 activation rows
  // passes over them.
  const size_t slice = std::max<size_t>(2, (128 * 1024) / (stride * sizeof(TW)));
  for (size_t s0 = r0; s0 < r1; s0 += slice) {
    const size_t s1 = std::min(r1, s0 + slice);
    size_t x0 = 0;
    for (; x0 + 4 <= a.n; x0 += 4) FloatRowsNX<4>(w, stride, a, x0, s0, s1, out);
    switch (a.n - x0) {
      case 3: FloatRowsNX<3>(w, stride, a, x0, s0, s1, out); break;
      case 2: FloatRowsNX<2>(w, stride, a, x0, s0, s1, out); break;
      case 1: FloatRowsNX<1>(w, stride, a, x0, s0, s1, out); break;
      default: break;
    }
  }
}

// Two vectors of bf16 word pairs (bf16.h: lane r = row r, low half column col + 2i, high
// half column col + 2i + 1 for w_i) times the activations of columns col..col+3 of each of
// the NX rows, into acc[j][0..3] (one chain per column mod 4).
template <size_t NX, class DF, class VU, class V>
HWY_INLINE void AddWordPairs(DF df, VU w0, VU w1, const float* const* x, size_t col, V (*acc)[4]) {
  const hn::RebindToUnsigned<DF> du;
  const auto hi_mask = hn::Set(du, 0xFFFF0000u);
  const V e0 = hn::BitCast(df, hn::ShiftLeft<16>(w0)), o0 = hn::BitCast(df, hn::And(w0, hi_mask));
  const V e1 = hn::BitCast(df, hn::ShiftLeft<16>(w1)), o1 = hn::BitCast(df, hn::And(w1, hi_mask));
#pragma GCC unroll 4
  for (size_t j = 0; j < NX; ++j) {
    const float* xc = x[j] + col;
    acc[j][0] = hn::MulAdd(e0, hn::Set(df, xc[0]), acc[j][0]);
    acc[j][1] = hn::MulAdd(o0, hn::Set(df, xc[1]), acc[j][1]);
    acc[j][2] = hn::MulAdd(e1, hn::Set(df, xc[2]), acc[j][2]);
    acc[j][3] = hn::MulAdd(o1, hn::Set(df, xc[3]), acc[j][3]);
  }
}

// out[16 * j + r0 + lane] = the sum of row j's four chains.
template <size_t NX, class DF, class V>
HWY_INLINE void StoreChainSums(DF df, V (*acc)[4], size_t r0, float* HWY_RESTRICT out) {
  for (size_t j = 0; j < NX; ++j)
    hn::StoreU(hn::Add(hn::Add(acc[j][0], acc[j][1]), hn::Add(acc[j][2], acc[j][3])), df, out + 16 * j + r0);
}

// BF16 tile (formats/bf16.h) times NX activation rows: out[16 * j + r] for the tile's
// 16 rows. Lane r of a vector is row r; a block's word widens to the f32 weight of its
// even column by a shift and of its odd column by an AND, each multiplied by that
// column's activation broadcast to all lanes. Two blocks per step and separate
// accumulators for even/odd columns keep 4 * NX (>= 8 for NX = 1 via the pair) FMA
// chains in flight.
template <size_t NX>
HWY_INLINE void BF16TileDots(const uint32_t* HWY_RESTRICT tile, size_t nblocks,
                             const float* const* x, float* HWY_RESTRICT out) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const size_t N = hn::Lanes(df);
  using V = hn::Vec<decltype(df)>;
  const size_t pf = PrefetchDistance();
  for (size_t r0 = 0; r0 < 16; r0 += N) {
    V acc[NX][4];
    for (size_t j = 0; j < NX; ++j)
      for (size_t k = 0; k < 4; ++k) acc[j][k] = hn::Zero(df);
    // nblocks = padded_cols / 2 is a multiple of 16: no tail. The first pass over the
    // rows streams the tile from memory (later passes, below 512-bit vectors, hit L2).
    const size_t pf_pass = r0 == 0 ? pf : 0;
    for (size_t b = 0; b < nblocks; b += 2) {
      PrefetchAhead(reinterpret_cast<const uint8_t*>(tile + 16 * b), 128, pf_pass);
      AddWordPairs<NX>(df, hn::LoadU(du, tile + 16 * b + r0), hn::LoadU(du, tile + 16 * (b + 1) + r0), x, 2 * b, acc);
    }
    StoreChainSums<NX>(df, acc, r0, out);
  }
}

// Rows [r0, r1) (r0 a multiple of 16) for every activation row.
HWY_NOINLINE void BF16MatMulRows(const uint8_t* w, size_t padded_cols, const PreparedActivations& a,
                                 size_t r0, size_t r1, const MatMulOutput& out) {
  const size_t tile_bytes = BF16TileBytes(padded_cols);
  HWY_ALIGN float d[kMaxActivationRows * kTileRows];
  ForEachTileGroup(r0, r1, a.n, tile_bytes, [&](size_t t, size_t x0, size_t nx) HWY_ATTR {
    const float* xs[kMaxActivationRows];
    for (size_t j = 0; j < nx; ++j) xs[j] = a.xf + (x0 + j) * a.stride;
    const uint32_t* tile = reinterpret_cast<const uint32_t*>(w + t * tile_bytes);
    WithActivationRows(nx, [&](auto k) HWY_ATTR { BF16TileDots<decltype(k)::value>(tile, padded_cols / 2, xs, d); });
    StoreTileRows(d, t, r1, x0, nx, out.y, out.y_stride);
  });
}

// BF16C tile (formats/bf16c.h) times NX activation rows: out[16 * j + r]. Per 8 columns,
// the low bytes (A, B) and the codes (C) of the rows in this vector are loaded, the codes
// looked up in the tile's table of high bytes, and the bytes interleaved into the same
// 32-bit words as a BF16 tile (bf16.h); from there as BF16TileDots.
#if HWY_TARGET == HWY_SCALAR
template <size_t NX>
HWY_INLINE void BF16CTileDots(const uint8_t* HWY_RESTRICT tile, size_t padded_cols, const float* const* x,
                              float* HWY_RESTRICT out) {
  for (size_t r = 0; r < 16; ++r) {
    float acc[NX] = {};
    for (size_t c = 0; c < padded_cols; ++c) {
      const uint32_t u = uint32_t(BF16CTileBits(tile, r, c)) << 16;
      float wv;
      __builtin_memcpy(&wv, &u, 4);
      for (size_t j = 0; j < NX; ++j) acc[j] += wv * x[j][c];
    }
    for (size_t j = 0; j < NX; ++j) out[16 * j + r] = acc[j];
  }
}
#else
template <size_t NX>
HWY_INLINE void BF16CTileDots(const uint8_t* HWY_RESTRICT tile, size_t padded_cols, const float* const* x,
                              float* HWY_RESTRICT out) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::Repartition<uint8_t, decltype(df)> d8;
  const hn::Repartition<uint16_t, decltype(df)> d16;
  const size_t N = hn::Lanes(df);
  using V = hn::Vec<decltype(df)>;
  const auto nibble = hn::Set(d8, 0x0F);
  const auto table = hn::LoadDup128(d8, tile);
  const uint8_t* chunks = tile + kBF16CTableBytes;
  const size_t pf = PrefetchDistance();
  for (size_t r0 = 0; r0 < 16; r0 += N) {
    const size_t pf_pass = r0 == 0 ? pf : 0;
    V acc[NX][4];
    for (size_t j = 0; j < NX; ++j)
      for (size_t k = 0; k < 4; ++k) acc[j][k] = hn::Zero(df);
    const uint8_t* p = chunks + 4 * r0;  // row group r0 / 4: 16 bytes each in A, B, C
    for (size_t c = 0; c < padded_cols; c += 8, p += 192) {
      PrefetchAhead(chunks + 24 * c, 192, pf_pass);
      const auto a = hn::LoadU(d8, p), b = hn::LoadU(d8, p + 64), codes = hn::LoadU(d8, p + 128);
      const auto ha = hn::TableLookupBytes(table, hn::And(codes, nibble));
      const auto hb = hn::TableLookupBytes(table, hn::And(hn::BitCast(d8, hn::ShiftRight<4>(hn::BitCast(d16, codes))), nibble));
      AddWordPairs<NX>(df, hn::BitCast(du, hn::InterleaveLower(d8, a, ha)),
                       hn::BitCast(du, hn::InterleaveUpper(d8, a, ha)), x, c, acc);
      AddWordPairs<NX>(df, hn::BitCast(du, hn::InterleaveLower(d8, b, hb)),
                       hn::BitCast(du, hn::InterleaveUpper(d8, b, hb)), x, c + 4, acc);
    }
    StoreChainSums<NX>(df, acc, r0, out);
  }
}
#endif

// Rows [r0, r1) (r0 a multiple of 16) for every activation row; then each row's
// exceptions (weights stored as 0 in the tiles) are added.
HWY_NOINLINE void BF16CMatMulRows(const uint8_t* w, size_t padded_cols, const uint32_t* exc_row_ptr,
                                  const uint32_t* exc_col, const uint16_t* exc_value,
                                  const PreparedActivations& a, size_t r0, size_t r1, const MatMulOutput& out) {
  const size_t tile_bytes = BF16CTileBytes(padded_cols);
  HWY_ALIGN float d[kMaxActivationRows * kTileRows];
  ForEachTileGroup(r0, r1, a.n, tile_bytes, [&](size_t t, size_t x0, size_t nx) HWY_ATTR {
    const float* xs[kMaxActivationRows];
    for (size_t j = 0; j < nx; ++j) xs[j] = a.xf + (x0 + j) * a.stride;
    WithActivationRows(nx, [&](auto k) HWY_ATTR {
      BF16CTileDots<decltype(k)::value>(w + t * tile_bytes, padded_cols, xs, d);
    });
    StoreTileRows(d, t, r1, x0, nx, out.y, out.y_stride);
  });
  for (size_t r = r0; r < r1; ++r)
    for (uint32_t e = exc_row_ptr[r]; e < exc_row_ptr[r + 1]; ++e) {
      const uint32_t u = uint32_t(exc_value[e]) << 16;
      float v;
      __builtin_memcpy(&v, &u, 4);
      for (size_t i = 0; i < a.n; ++i) out.y[i * out.y_stride + r] += v * a.xf[i * a.stride + exc_col[e]];
    }
}

HWY_NOINLINE void F32MatMulRows(const uint8_t* w, size_t stride, const PreparedActivations& a,
                                size_t r0, size_t r1, const MatMulOutput& out) {
  FloatMatMulRowsT(reinterpret_cast<const float*>(w), stride, a, r0, r1, out);
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
