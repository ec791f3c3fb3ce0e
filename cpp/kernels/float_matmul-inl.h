// BF16 and F32 matmul kernels, compiled once per Highway target. Weights are
// row-major with rows padded (bf16 to 32, f32 to 16 columns) and activations are
// f32 copies padded with zeros, so the inner loop has no tail. BF16 weights are
// widened to f32 (a shift), f32 accumulation, up to 4 activation rows per pass
// over a weight row so prefill reads each weight row once per 4 tokens.
#if defined(TERNLM_KERNELS_FLOAT_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TERNLM_KERNELS_FLOAT_MATMUL_INL_H_
#undef TERNLM_KERNELS_FLOAT_MATMUL_INL_H_
#else
#define TERNLM_KERNELS_FLOAT_MATMUL_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include "hwy/highway.h"

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

// out[j] = dot(w, x[j]) over cols (a multiple of 16 for f32, 32 for bf16).
template <size_t NX, typename TW>
HWY_INLINE void FloatDots(const TW* HWY_RESTRICT w, size_t cols, const float* const* x, float* out) {
  const hn::CappedTag<float, 16> df;
  const size_t N = hn::Lanes(df);
  using V = hn::Vec<decltype(df)>;
  V acc0[NX], acc1[NX];
  for (size_t j = 0; j < NX; ++j) acc0[j] = acc1[j] = hn::Zero(df);
  size_t i = 0;
  for (; i + 2 * N <= cols; i += 2 * N) {
    const V w0 = LoadWeights(df, w, i), w1 = LoadWeights(df, w, i + N);
    for (size_t j = 0; j < NX; ++j) {
      acc0[j] = hn::MulAdd(w0, hn::LoadU(df, x[j] + i), acc0[j]);
      acc1[j] = hn::MulAdd(w1, hn::LoadU(df, x[j] + i + N), acc1[j]);
    }
  }
  for (; i < cols; i += N) {
    const V w0 = LoadWeights(df, w, i);
    for (size_t j = 0; j < NX; ++j) acc0[j] = hn::MulAdd(w0, hn::LoadU(df, x[j] + i), acc0[j]);
  }
  for (size_t j = 0; j < NX; ++j) out[j] = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0[j], acc1[j])));
}

template <typename TW>
HWY_INLINE void FloatMatMulRowsT(const TW* w, size_t stride, const PreparedActivations& a,
                                 size_t r0, size_t r1, const MatMulOutput& out) {
  const size_t row_bytes = stride * sizeof(TW);
  const size_t slice = a.n <= 4 ? (r1 - r0) : std::max<size_t>(1, (128 * 1024) / row_bytes);
  for (size_t s0 = r0; s0 < r1; s0 += slice) {
    const size_t s1 = std::min(r1, s0 + slice);
    for (size_t x0 = 0; x0 < a.n; x0 += 4) {
      const size_t nx = std::min<size_t>(4, a.n - x0);
      const float* xs[4];
      for (size_t j = 0; j < nx; ++j) xs[j] = a.xf + (x0 + j) * a.stride;
      for (size_t r = s0; r < s1; ++r) {
        float d[4];
        const TW* wr = w + r * stride;
        switch (nx) {
          case 4: FloatDots<4>(wr, stride, xs, d); break;
          case 3: FloatDots<3>(wr, stride, xs, d); break;
          case 2: FloatDots<2>(wr, stride, xs, d); break;
          default: FloatDots<1>(wr, stride, xs, d); break;
        }
        for (size_t j = 0; j < nx; ++j) out.y[(x0 + j) * out.y_stride + r] = d[j];
      }
    }
  }
}

HWY_NOINLINE void BF16MatMulRows(const uint8_t* w, size_t stride, const PreparedActivations& a,
                                 size_t r0, size_t r1, const MatMulOutput& out) {
  FloatMatMulRowsT(reinterpret_cast<const hwy::bfloat16_t*>(w), stride, a, r0, r1, out);
}

HWY_NOINLINE void F32MatMulRows(const uint8_t* w, size_t stride, const PreparedActivations& a,
                                size_t r0, size_t r1, const MatMulOutput& out) {
  FloatMatMulRowsT(reinterpret_cast<const float*>(w), stride, a, r0, r1, out);
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
