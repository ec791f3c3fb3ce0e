// nano matmul kernels (formats/nano.h), compiled once per Highway target: the two binary
// products of y = s_out * (U (V^T (s_in * x))) share one building block, the exact signed
// sum of int8 activations selected by a row of sign bits:
//
//   dot(bits, q) = sum_i (bit_i ? q_i : -q_i)          (q_i in [-127, 127], n = padded length)
//
// Both signs of every activation are prepared once per matmul as biased bytes,
// pos_i = q_i + 128 and neg_i = -q_i + 128 (u8), so one row costs, per vector of u8 lanes:
// a mask from the bits (LoadMaskBits: kmovq on AVX-512, 64 columns), a select of pos or
// neg (vpblendmb), a sum of 8 bytes per u64 lane (SumsOf8: vpsadbw) and an add; the bias
// is removed at the end, dot = sum - 128 n. The mask is loaded once and used for NX
// activation rows (prefill). HWY_SCALAR (one lane) reads the bits in plain C.
//
// Why not vpdpbusd on {0,1} codes (the ternary kernels' path): the codes would first have
// to be widened from bits to bytes, one shuffle sequence per 64 weights, where the select
// above needs none; and float sign-selected adds (f32 activations, no quantization) handle
// 16 columns per vector where bytes handle 64 (BM_NanoSigned in benchmarks/bench_matmul.cc
// measures both sums).
#if defined(TERNLM_KERNELS_NANO_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
// Highway compiles this header once per target (foreach_target), so the guard below toggles
// instead of blocking; the includes and namespaces after it are the preamble every
// kernels/*-inl.h shares.
#ifdef TERNLM_KERNELS_NANO_MATMUL_INL_H_
#undef TERNLM_KERNELS_NANO_MATMUL_INL_H_
#else
#define TERNLM_KERNELS_NANO_MATMUL_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include <cstring>

#include "formats/half.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// out[j] = dot(bits, q_j) for j < NX; pos[j] / neg[j] hold n biased bytes (n a multiple
// of 64), bits n / 8 bytes.
template <size_t NX>
HWY_INLINE void NanoBitDots(const uint8_t* HWY_RESTRICT bits, size_t n, const uint8_t* const* pos,
                            const uint8_t* const* neg, int32_t* out) {
#if HWY_TARGET == HWY_SCALAR
  for (size_t j = 0; j < NX; ++j) {
    int64_t sum = 0;
    for (size_t i = 0; i < n; ++i) sum += ((bits[i / 8] >> (i % 8)) & 1u) ? pos[j][i] : neg[j][i];
    out[j] = int32_t(sum - 128 * int64_t(n));
  }
#else
  const hn::ScalableTag<uint8_t> d8;
  const hn::Repartition<uint64_t, decltype(d8)> d64;
  const size_t N = hn::Lanes(d8);
  hn::Vec<decltype(d64)> acc[NX];
  for (size_t j = 0; j < NX; ++j) acc[j] = hn::Zero(d64);
  for (size_t i = 0; i < n; i += N) {
    const auto m = hn::LoadMaskBits(d8, bits + i / 8);
    for (size_t j = 0; j < NX; ++j)
      acc[j] = hn::Add(acc[j], hn::SumsOf8(hn::IfThenElse(m, hn::LoadU(d8, pos[j] + i), hn::LoadU(d8, neg[j] + i))));
  }
  for (size_t j = 0; j < NX; ++j)
    out[j] = int32_t(int64_t(hn::GetLane(hn::SumOfLanes(d64, acc[j]))) - 128 * int64_t(n));
#endif
}

// For rows [r0, r1) of a bit matrix (row_bytes = n / 8 per row) and na activation rows:
// dots[j * dots_stride + r] = dot(row r, q_j). NX = 4 at a time, then one by one.
HWY_INLINE void NanoBitRows(const uint8_t* bits, size_t n, size_t r0, size_t r1, const uint8_t* pos,
                            const uint8_t* neg, size_t na, int32_t* dots, size_t dots_stride) {
  const size_t row_bytes = n / 8;
  for (size_t r = r0; r < r1; ++r) {
    const uint8_t* b = bits + r * row_bytes;
    size_t j = 0;
    for (; j + 4 <= na; j += 4) {
      const uint8_t* p[4] = {pos + j * n, pos + (j + 1) * n, pos + (j + 2) * n, pos + (j + 3) * n};
      const uint8_t* q[4] = {neg + j * n, neg + (j + 1) * n, neg + (j + 2) * n, neg + (j + 3) * n};
      int32_t o[4];
      NanoBitDots<4>(b, n, p, q, o);
      for (size_t t = 0; t < 4; ++t) dots[(j + t) * dots_stride + r] = o[t];
    }
    for (; j < na; ++j) {
      const uint8_t* p[1] = {pos + j * n};
      const uint8_t* q[1] = {neg + j * n};
      NanoBitDots<1>(b, n, p, q, dots + j * dots_stride + r);
    }
  }
}

// The float alternative measured against NanoBitDots (benchmarks only): sum_i (bit_i ? x_i
// : -x_i) over f32 activations, 16 columns per vector on AVX-512.
HWY_INLINE float NanoBitDotFloat(const uint8_t* HWY_RESTRICT bits, size_t n, const float* HWY_RESTRICT x) {
#if HWY_TARGET == HWY_SCALAR
  float sum = 0;
  for (size_t i = 0; i < n; ++i) sum += ((bits[i / 8] >> (i % 8)) & 1u) ? x[i] : -x[i];
  return sum;
#else
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  auto acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    const auto x0 = hn::LoadU(df, x + i), x1 = hn::LoadU(df, x + i + N);
    acc0 = hn::Add(acc0, hn::IfThenElse(hn::LoadMaskBits(df, bits + i / 8), x0, hn::Neg(x0)));
    acc1 = hn::Add(acc1, hn::IfThenElse(hn::LoadMaskBits(df, bits + (i + N) / 8), x1, hn::Neg(x1)));
  }
  for (; i < n; i += N) {
    const auto x0 = hn::LoadU(df, x + i);
    acc0 = hn::Add(acc0, hn::IfThenElse(hn::LoadMaskBits(df, bits + i / 8), x0, hn::Neg(x0)));
  }
  return hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
#endif
}

HWY_INLINE uint16_t NanoHalfBits(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
}

// x'[i] = x[i] * s_in[i] for i < n (s_in fp16 bits, read unaligned), then zeros to n_pad.
HWY_INLINE void NanoScaleInput(const float* HWY_RESTRICT x, const uint8_t* s_in_f16, size_t n, size_t n_pad,
                               float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const size_t N = hn::Lanes(df);
  const hwy::float16_t* s = reinterpret_cast<const hwy::float16_t*>(s_in_f16);  // 64-byte aligned section
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(df, x + i), hn::PromoteTo(df, hn::LoadU(dh, s + i))), df, out + i);
  for (; i < n; ++i) out[i] = x[i] * F32FromF16(NanoHalfBits(s_in_f16 + 2 * i));
  for (; i < n_pad; ++i) out[i] = 0.0f;
}

// out[i] = float(h[i]) for i < n (fp16 bits, 2-byte aligned).
HWY_INLINE void NanoHalvesToFloat(const uint8_t* h, size_t n, float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const size_t N = hn::Lanes(df);
  const hwy::float16_t* s = reinterpret_cast<const hwy::float16_t*>(h);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, s + i)), df, out + i);
  for (; i < n; ++i) out[i] = F32FromF16(NanoHalfBits(h + 2 * i));
}

// pos = q + 128, neg = -q + 128 as bytes (q in [-127, 127], so -q does not overflow).
HWY_INLINE void NanoBiasBoth(const int8_t* HWY_RESTRICT q, size_t n, uint8_t* HWY_RESTRICT pos,
                             uint8_t* HWY_RESTRICT neg) {
  const hn::ScalableTag<int8_t> d;
  const hn::RebindToUnsigned<decltype(d)> du;
  const size_t N = hn::Lanes(d);
  const auto bias = hn::Set(du, uint8_t(0x80));
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto v = hn::LoadU(d, q + i);
    hn::StoreU(hn::Xor(hn::BitCast(du, v), bias), du, pos + i);
    hn::StoreU(hn::Xor(hn::BitCast(du, hn::Neg(v)), bias), du, neg + i);
  }
  for (; i < n; ++i) {
    pos[i] = uint8_t(int(q[i]) + 128);
    neg[i] = uint8_t(128 - int(q[i]));
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
