// Ternary matmul kernel, compiled once per Highway target (see ternary.h for the
// packed layout). For NX activation rows at once (weights unpacked once, used NX
// times) it computes the exact integer sums  sum_i (t_i + 1) q_i  over a row;
// the caller subtracts sum(q). Paths:
//   AVX3_DL: vpdpbusd (u8 codes x s8 activations -> i32), 512-bit
//   AVX3 / AVX2: pmaddubsw (u8 x s8 -> i16 pairs, |pair| <= 2*2*128, no saturation),
//     four of them summed in i16 (<= 2048), then pmaddwd by 1 -> i32
//   otherwise: portable Highway (promote to i16, ReorderWidenMulAccumulate -> i32)
#if defined(TERNLM_KERNELS_TERNARY_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TERNLM_KERNELS_TERNARY_MATMUL_INL_H_
#undef TERNLM_KERNELS_TERNARY_MATMUL_INL_H_
#else
#define TERNLM_KERNELS_TERNARY_MATMUL_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include "hwy/highway.h"
#include "kernels/vnni_attr.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;


// One weight row (nblocks 64-byte blocks) times NX int8 activation rows (padded):
// out[j] = exact sum over the row of code * x[j]. The codes are unpacked once per
// block and used NX times. (Walking 2-4 weight rows at once to share the activation
// loads measured 2-3x slower out of cache on Zen 5: the hardware prefetcher follows
// one sequential stream best.)
template <size_t NX>
#if HWY_TARGET == HWY_AVX3_DL
// Not inlined: compiled with avx512vnni added (see kernels/vnni_attr.h for why).
HWY_NOINLINE TERNLM_VNNI_ATTR
#else
HWY_INLINE
#endif
void TernaryCodeDots(const uint8_t* HWY_RESTRICT w, size_t nblocks, const int8_t* const* x,
                     int32_t* out) {
#if HWY_TARGET == HWY_AVX3_DL
  // Field k is isolated with an AND only (no shift): code * 4^k <= 128 still fits u8,
  // so each k gets its own accumulator, scaled back exactly (>> 2k) at the end. The
  // 4 NX independent accumulators also hide vpdpbusd's latency.
  const __m512i mask[4] = {_mm512_set1_epi8(0x03), _mm512_set1_epi8(0x0C),
                           _mm512_set1_epi8(0x30), _mm512_set1_epi8(char(0xC0))};
  __m512i acc[NX][4];
#pragma GCC unroll 4
  for (size_t j = 0; j < NX; ++j)
#pragma GCC unroll 4
    for (size_t k = 0; k < 4; ++k) acc[j][k] = _mm512_setzero_si512();
  for (size_t b = 0; b < nblocks; ++b) {
    const __m512i packed = _mm512_load_si512(w + 64 * b);
#pragma GCC unroll 4
    for (size_t k = 0; k < 4; ++k) {
      const __m512i c = _mm512_and_si512(packed, mask[k]);
#pragma GCC unroll 4
      for (size_t j = 0; j < NX; ++j)
        acc[j][k] = _mm512_dpbusd_epi32(acc[j][k], c, _mm512_loadu_si512(x[j] + 256 * b + 64 * k));
    }
  }
#pragma GCC unroll 4
  for (size_t j = 0; j < NX; ++j) {
    const __m512i sum = _mm512_add_epi32(
        _mm512_add_epi32(acc[j][0], _mm512_srai_epi32(acc[j][1], 2)),
        _mm512_add_epi32(_mm512_srai_epi32(acc[j][2], 4), _mm512_srai_epi32(acc[j][3], 6)));
    out[j] = _mm512_reduce_add_epi32(sum);
  }
#elif HWY_TARGET == HWY_AVX3
  const __m512i three = _mm512_set1_epi8(3);
  const __m512i ones = _mm512_set1_epi16(1);
  __m512i acc[NX];
  for (size_t j = 0; j < NX; ++j) acc[j] = _mm512_setzero_si512();
  for (size_t b = 0; b < nblocks; ++b) {
    const __m512i packed = _mm512_load_si512(w + 64 * b);
    const __m512i c0 = _mm512_and_si512(packed, three);
    const __m512i c1 = _mm512_and_si512(_mm512_srli_epi16(packed, 2), three);
    const __m512i c2 = _mm512_and_si512(_mm512_srli_epi16(packed, 4), three);
    const __m512i c3 = _mm512_and_si512(_mm512_srli_epi16(packed, 6), three);
    for (size_t j = 0; j < NX; ++j) {
      const int8_t* xb = x[j] + 256 * b;
      __m512i s = _mm512_maddubs_epi16(c0, _mm512_loadu_si512(xb));
      s = _mm512_add_epi16(s, _mm512_maddubs_epi16(c1, _mm512_loadu_si512(xb + 64)));
      s = _mm512_add_epi16(s, _mm512_maddubs_epi16(c2, _mm512_loadu_si512(xb + 128)));
      s = _mm512_add_epi16(s, _mm512_maddubs_epi16(c3, _mm512_loadu_si512(xb + 192)));
      acc[j] = _mm512_add_epi32(acc[j], _mm512_madd_epi16(s, ones));
    }
  }
  for (size_t j = 0; j < NX; ++j) out[j] = _mm512_reduce_add_epi32(acc[j]);
#elif HWY_TARGET == HWY_AVX2
  const __m256i three = _mm256_set1_epi8(3);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[NX];
  for (size_t j = 0; j < NX; ++j) acc[j] = _mm256_setzero_si256();
  for (size_t b = 0; b < nblocks; ++b) {
    for (size_t h = 0; h < 2; ++h) {  // two 32-byte halves of the block
      const __m256i packed = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 64 * b + 32 * h));
      const __m256i c0 = _mm256_and_si256(packed, three);
      const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(packed, 2), three);
      const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(packed, 4), three);
      const __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(packed, 6), three);
      for (size_t j = 0; j < NX; ++j) {
        const __m256i* xb = reinterpret_cast<const __m256i*>(x[j] + 256 * b + 32 * h);
        __m256i s = _mm256_maddubs_epi16(c0, _mm256_loadu_si256(xb));
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c1, _mm256_loadu_si256(xb + 2)));
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c2, _mm256_loadu_si256(xb + 4)));
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c3, _mm256_loadu_si256(xb + 6)));
        acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(s, ones));
      }
    }
  }
  for (size_t j = 0; j < NX; ++j) {
    const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(acc[j]), _mm256_extracti128_si256(acc[j], 1));
    const __m128i s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    out[j] = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1)));
  }
#else
  // Portable: bytes widened to i16 lanes, so the 2-bit fields are extracted with
  // 16-bit shifts and the products accumulate through i16 x i16 -> i32.
  const hn::CappedTag<int16_t, 32> di16;
  const hn::Rebind<uint8_t, decltype(di16)> du8;
  const hn::Rebind<int8_t, decltype(di16)> di8;
  const hn::Repartition<int32_t, decltype(di16)> di32;
  const size_t N = hn::Lanes(di16);
  const auto three = hn::Set(di16, 3);
  using V32 = hn::Vec<decltype(di32)>;
  V32 acc0[NX], acc1[NX];
  for (size_t j = 0; j < NX; ++j) acc0[j] = acc1[j] = hn::Zero(di32);
  for (size_t b = 0; b < nblocks; ++b) {
    for (size_t o = 0; o < 64; o += N) {
      const auto packed = hn::PromoteTo(di16, hn::LoadU(du8, w + 64 * b + o));
      const auto c0 = hn::And(packed, three);
      const auto c1 = hn::And(hn::ShiftRight<2>(packed), three);
      const auto c2 = hn::And(hn::ShiftRight<4>(packed), three);
      const auto c3 = hn::And(hn::ShiftRight<6>(packed), three);
      for (size_t j = 0; j < NX; ++j) {
        const int8_t* xb = x[j] + 256 * b + o;
        acc0[j] = hn::ReorderWidenMulAccumulate(di32, c0, hn::PromoteTo(di16, hn::LoadU(di8, xb)), acc0[j], acc1[j]);
        acc0[j] = hn::ReorderWidenMulAccumulate(di32, c1, hn::PromoteTo(di16, hn::LoadU(di8, xb + 64)), acc0[j], acc1[j]);
        acc0[j] = hn::ReorderWidenMulAccumulate(di32, c2, hn::PromoteTo(di16, hn::LoadU(di8, xb + 128)), acc0[j], acc1[j]);
        acc0[j] = hn::ReorderWidenMulAccumulate(di32, c3, hn::PromoteTo(di16, hn::LoadU(di8, xb + 192)), acc0[j], acc1[j]);
      }
    }
  }
  for (size_t j = 0; j < NX; ++j)
    out[j] = hn::GetLane(hn::SumOfLanes(di32, hn::Add(acc0[j], acc1[j])));
#endif
}

// Rows [r0, r1) of y for every activation row: y = (codes·q - sum q) / s_x * row_multiplier.
// Weights are walked in slices that stay in L2 while every group of 4 activation rows
// passes over them, so prefill streams each weight from memory once.
HWY_NOINLINE void TernaryMatMulRows(const uint8_t* packed, size_t row_bytes, const float* mult,
                                    const PreparedActivations& a, size_t r0, size_t r1,
                                    const MatMulOutput& out) {
  const size_t nblocks = row_bytes / 64;
  const size_t slice = a.n <= 4 ? (r1 - r0) : std::max<size_t>(1, (128 * 1024) / row_bytes);
  for (size_t s0 = r0; s0 < r1; s0 += slice) {
    const size_t s1 = std::min(r1, s0 + slice);
    for (size_t x0 = 0; x0 < a.n; x0 += 4) {
      const size_t nx = std::min<size_t>(4, a.n - x0);
      const int8_t* xs[4];
      for (size_t j = 0; j < nx; ++j) xs[j] = a.q + (x0 + j) * a.stride;
      int32_t d[4];
      for (size_t r = s0; r < s1; ++r) {
        const uint8_t* wr = packed + r * row_bytes;
        switch (nx) {
          case 4: TernaryCodeDots<4>(wr, nblocks, xs, d); break;
          case 3: TernaryCodeDots<3>(wr, nblocks, xs, d); break;
          case 2: TernaryCodeDots<2>(wr, nblocks, xs, d); break;
          default: TernaryCodeDots<1>(wr, nblocks, xs, d); break;
        }
        for (size_t j = 0; j < nx; ++j) {
          const size_t xi = x0 + j;
          out.y[xi * out.y_stride + r] = float(d[j] - a.q_sum[xi]) * a.inv_scale[xi] * mult[r];
        }
      }
    }
  }
}

// Exact integer sums t·q for rows [r0, r1), one activation row (tests call this).
HWY_NOINLINE void TernaryIntDotsRows(const uint8_t* packed, size_t row_bytes, const int8_t* q,
                                     int32_t q_sum, size_t r0, size_t r1, int32_t* out) {
  const int8_t* xs[1] = {q};
  for (size_t r = r0; r < r1; ++r) {
    int32_t d;
    TernaryCodeDots<1>(packed + r * row_bytes, row_bytes / 64, xs, &d);
    out[r] = d - q_sum;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
