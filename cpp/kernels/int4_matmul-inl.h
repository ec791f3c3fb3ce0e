// INT4 matmul kernel, compiled once per Highway target (layout and numerics in
// formats/int4.h). Per block of 32 inputs the integer dot of the 4-bit codes with the
// int8 activations is exact; it is turned into f32 and scaled by
// scale_g / s_b, and the min term adds min_g * sum(q / s_b in g) once per group.
// Paths for the 32-wide dot (8 i32 lanes, then f32 FMA with the block's factor):
//   AVX3_DL: vpdpbusd on 256-bit vectors (AVX512-VNNI + VL)
//   AVX3 / AVX2: pmaddubsw (u8 <= 15 x s8 -> i16 pairs, |pair| <= 2*15*128) + pmaddwd
//   otherwise: portable Highway (promote to i16, ReorderWidenMulAccumulate)
#if defined(TERNLM_KERNELS_INT4_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TERNLM_KERNELS_INT4_MATMUL_INL_H_
#undef TERNLM_KERNELS_INT4_MATMUL_INL_H_
#else
#define TERNLM_KERNELS_INT4_MATMUL_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include "hwy/highway.h"
#include "kernels/vnni_attr.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// w: one packed int4 row (nblocks of 64 bytes = 128 weights); x: int8 activations;
// factor[b]: scale_g(b) / s_b per 32-block b. Returns sum_b factor[b] * dot_b.
#if HWY_TARGET == HWY_AVX3_DL
HWY_NOINLINE TERNLM_VNNI_ATTR  // not inlined: adds avx512vnni (kernels/vnni_attr.h)
#else
HWY_INLINE
#endif
float Int4ScaledDots(const uint8_t* HWY_RESTRICT w, size_t nblocks,
                     const int8_t* HWY_RESTRICT x, const float* HWY_RESTRICT factor) {
#if HWY_TARGET == HWY_AVX3_DL || HWY_TARGET == HWY_AVX3
  // 512-bit: one 64-byte block = 128 weights = activation blocks 4b..4b+3. The low
  // nibbles give blocks 4b, 4b+1 (i32 lanes 0-7, 8-15), the high nibbles 4b+2, 4b+3;
  // the four factors are spread to those lanes with one permute each.
  const __m512i low4 = _mm512_set1_epi8(15);
  const __m512i idx_lo = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i idx_hi = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
#if HWY_TARGET != HWY_AVX3_DL
  const __m512i ones = _mm512_set1_epi16(1);
#endif
  // acc_lo/acc_hi for even blocks, acc_lo2/acc_hi2 for odd ones: 4 independent FMA
  // chains, all in registers (an indexed array of accumulators ended up on the stack).
  __m512 acc_lo = _mm512_setzero_ps(), acc_hi = _mm512_setzero_ps();
  __m512 acc_lo2 = _mm512_setzero_ps(), acc_hi2 = _mm512_setzero_ps();
  auto block = [&](size_t b, __m512& al, __m512& ah) HWY_ATTR {
    const __m512i packed = _mm512_load_si512(w + 64 * b);
    const __m512i lo = _mm512_and_si512(packed, low4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
    const __m512i xl = _mm512_loadu_si512(x + 128 * b);
    const __m512i xh = _mm512_loadu_si512(x + 128 * b + 64);
#if HWY_TARGET == HWY_AVX3_DL
    const __m512i dl = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl);
    const __m512i dh = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, xh);
#else
    const __m512i dl = _mm512_madd_epi16(_mm512_maddubs_epi16(lo, xl), ones);
    const __m512i dh = _mm512_madd_epi16(_mm512_maddubs_epi16(hi, xh), ones);
#endif
    const __m512 f4 = _mm512_castps128_ps512(_mm_loadu_ps(factor + 4 * b));
    al = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dl), _mm512_permutexvar_ps(idx_lo, f4), al);
    ah = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dh), _mm512_permutexvar_ps(idx_hi, f4), ah);
  };
  size_t b = 0;
  for (; b + 2 <= nblocks; b += 2) {
    block(b, acc_lo, acc_hi);
    block(b + 1, acc_lo2, acc_hi2);
  }
  if (b < nblocks) block(b, acc_lo, acc_hi);
  return _mm512_reduce_add_ps(
      _mm512_add_ps(_mm512_add_ps(acc_lo, acc_hi), _mm512_add_ps(acc_lo2, acc_hi2)));
#elif HWY_TARGET == HWY_AVX2
  const __m256i low4 = _mm256_set1_epi8(15);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (size_t b = 0; b < nblocks; ++b) {
    for (size_t h = 0; h < 2; ++h) {
      const __m256i packed = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 64 * b + 32 * h));
      const __m256i lo = _mm256_and_si256(packed, low4);                         // block 4b+h
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);   // block 4b+2+h
      const __m256i xl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 128 * b + 32 * h));
      const __m256i xh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 128 * b + 64 + 32 * h));
      const __m256i dl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xl), ones);
      const __m256i dh = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xh), ones);
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dl), _mm256_broadcast_ss(factor + 4 * b + h), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dh), _mm256_broadcast_ss(factor + 4 * b + 2 + h), acc1);
    }
  }
  const __m256 s8 = _mm256_add_ps(acc0, acc1);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
  return _mm_cvtss_f32(s4);
#else
  // Portable: bytes widened to i16 lanes (nibbles by 16-bit shift and mask), i16 x i16
  // -> i32 products, per 32-block converted to f32 and scaled.
  const hn::CappedTag<int16_t, 32> di16;
  const hn::Rebind<uint8_t, decltype(di16)> du8;
  const hn::Rebind<int8_t, decltype(di16)> di8;
  const hn::Repartition<int32_t, decltype(di16)> di32;
  const hn::Repartition<float, decltype(di32)> df;
  const size_t N = hn::Lanes(di16);
  const auto low4 = hn::Set(di16, 15);
  auto acc = hn::Zero(df);
  for (size_t b = 0; b < nblocks; ++b) {
    for (size_t o = 0; o < 64; o += N) {
      const auto packed = hn::PromoteTo(di16, hn::LoadU(du8, w + 64 * b + o));
      const size_t lo_block = 4 * b + o / 32;  // bytes o.. hold weights o.. (low), 64+o.. (high)
      auto l0 = hn::Zero(di32), l1 = hn::Zero(di32), h0 = hn::Zero(di32), h1 = hn::Zero(di32);
      l0 = hn::ReorderWidenMulAccumulate(di32, hn::And(packed, low4),
                                         hn::PromoteTo(di16, hn::LoadU(di8, x + 128 * b + o)), l0, l1);
      h0 = hn::ReorderWidenMulAccumulate(di32, hn::ShiftRight<4>(packed),
                                         hn::PromoteTo(di16, hn::LoadU(di8, x + 128 * b + 64 + o)), h0, h1);
      acc = hn::MulAdd(hn::ConvertTo(df, hn::Add(l0, l1)), hn::Set(df, factor[lo_block]), acc);
      acc = hn::MulAdd(hn::ConvertTo(df, hn::Add(h0, h1)), hn::Set(df, factor[lo_block + 2]), acc);
    }
  }
  return hn::GetLane(hn::SumOfLanes(df, acc));
#endif
}

// Prefill: one weight row times NX activation rows (out[j]); the codes are unpacked
// once per block and used NX times. 2 NX FMA chains, so no block unrolling is needed.
template <size_t NX>
#if HWY_TARGET == HWY_AVX3_DL
HWY_NOINLINE TERNLM_VNNI_ATTR
#else
HWY_INLINE
#endif
void Int4ScaledDotsNX(const uint8_t* HWY_RESTRICT w, size_t nblocks, const int8_t* const* x,
                      const float* const* factor, float* out) {
#if HWY_TARGET == HWY_AVX3_DL || HWY_TARGET == HWY_AVX3
  const __m512i low4 = _mm512_set1_epi8(15);
  const __m512i idx_lo = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i idx_hi = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
#if HWY_TARGET != HWY_AVX3_DL
  const __m512i ones = _mm512_set1_epi16(1);
#endif
  __m512 acc_lo[NX], acc_hi[NX];
#pragma GCC unroll 4
  for (size_t j = 0; j < NX; ++j) acc_lo[j] = acc_hi[j] = _mm512_setzero_ps();
  for (size_t b = 0; b < nblocks; ++b) {
    const __m512i packed = _mm512_load_si512(w + 64 * b);
    const __m512i lo = _mm512_and_si512(packed, low4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
#pragma GCC unroll 4
    for (size_t j = 0; j < NX; ++j) {
      const __m512i xl = _mm512_loadu_si512(x[j] + 128 * b);
      const __m512i xh = _mm512_loadu_si512(x[j] + 128 * b + 64);
#if HWY_TARGET == HWY_AVX3_DL
      const __m512i dl = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl);
      const __m512i dh = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, xh);
#else
      const __m512i dl = _mm512_madd_epi16(_mm512_maddubs_epi16(lo, xl), ones);
      const __m512i dh = _mm512_madd_epi16(_mm512_maddubs_epi16(hi, xh), ones);
#endif
      const __m512 f4 = _mm512_castps128_ps512(_mm_loadu_ps(factor[j] + 4 * b));
      acc_lo[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dl), _mm512_permutexvar_ps(idx_lo, f4), acc_lo[j]);
      acc_hi[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dh), _mm512_permutexvar_ps(idx_hi, f4), acc_hi[j]);
    }
  }
#pragma GCC unroll 4
  for (size_t j = 0; j < NX; ++j) out[j] = _mm512_reduce_add_ps(_mm512_add_ps(acc_lo[j], acc_hi[j]));
#else
  for (size_t j = 0; j < NX; ++j) out[j] = Int4ScaledDots(w, nblocks, x[j], factor[j]);
#endif
}

// Rows [r0, r1) of y for every activation row, same slicing as the ternary kernel.
// scratch: 2 * groups_per_row + 4 * (padded/32) floats for one thread.
HWY_NOINLINE void Int4MatMulRows(const uint8_t* packed, size_t row_bytes, const uint16_t* scale_f16,
                                 const uint16_t* min_f16, int group, const PreparedActivations& a,
                                 size_t r0, size_t r1, const MatMulOutput& out, float* scratch) {
  const size_t nblocks = row_bytes / 64;
  const size_t nb32 = nblocks * 4, ng = nblocks * 128 / size_t(group), per_g = size_t(group) / 32;
  float* sc = scratch;            // [ng] scales of the row, f32
  float* factors = scratch + 2 * ng;  // [4][nb32] scale_g(b) / s_b for up to 4 activation rows
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const hn::CappedTag<float, 1> d1;
  const hn::Rebind<hwy::float16_t, decltype(d1)> dh1;
  const size_t N = hn::Lanes(df);
  const size_t slice = a.n <= 1 ? (r1 - r0) : std::max<size_t>(1, (128 * 1024) / row_bytes);
  for (size_t s0 = r0; s0 < r1; s0 += slice) {
    const size_t s1 = std::min(r1, s0 + slice);
    for (size_t x0 = 0; x0 < a.n; x0 += 4) {
      const size_t nx = std::min<size_t>(4, a.n - x0);
      const int8_t* xq[4];
      const float* fac[4];
      float min_term[4], dots[4];
      for (size_t r = s0; r < s1; ++r) {
        const uint16_t* s16 = scale_f16 + r * ng;
        const uint16_t* m16 = min_f16 + r * ng;
        for (size_t j = 0; j < nx; ++j) {
          const size_t xi = x0 + j;
          const float* inv = a.inv_scale + xi * nb32;
          const float* gsum = a.group_sum + xi * ng;
          float* factor = factors + j * nb32;
          xq[j] = a.q + xi * a.stride;
          fac[j] = factor;
          // f32 scales and mins of the row; factor[b] = scale_g(b) / s_b; min term.
          // Full vectors, then single lanes (same ops, so no scalar fp16 conversion).
          auto vmin = hn::Zero(df);
          auto v1min = hn::Zero(d1);
          size_t g = 0;
          auto setup = [&](auto d, auto dh16, size_t g0, auto& acc) HWY_ATTR {
            const auto vs = hn::PromoteTo(d, hn::LoadU(dh16, reinterpret_cast<const hwy::float16_t*>(s16 + g0)));
            const auto vm = hn::PromoteTo(d, hn::LoadU(dh16, reinterpret_cast<const hwy::float16_t*>(m16 + g0)));
            acc = hn::MulAdd(vm, hn::LoadU(d, gsum + g0), acc);
            if (per_g == 1) {
              hn::StoreU(hn::Mul(vs, hn::LoadU(d, inv + g0)), d, factor + g0);
            } else {
              hn::StoreU(vs, d, sc + g0);
            }
          };
          for (; g + N <= ng; g += N) setup(df, dh, g, vmin);
          for (; g < ng; ++g) setup(d1, dh1, g, v1min);
          min_term[j] = hn::GetLane(hn::SumOfLanes(df, vmin)) + hn::GetLane(v1min);
          if (per_g != 1)
            for (size_t b = 0; b < nb32; ++b) factor[b] = sc[b / per_g] * inv[b];
        }
        const uint8_t* wr = packed + r * row_bytes;
        switch (nx) {
          case 4: Int4ScaledDotsNX<4>(wr, nblocks, xq, fac, dots); break;
          case 3: Int4ScaledDotsNX<3>(wr, nblocks, xq, fac, dots); break;
          case 2: Int4ScaledDotsNX<2>(wr, nblocks, xq, fac, dots); break;
          default: dots[0] = Int4ScaledDots(wr, nblocks, xq[0], fac[0]); break;
        }
        for (size_t j = 0; j < nx; ++j) out.y[(x0 + j) * out.y_stride + r] = dots[j] + min_term[j];
      }
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
