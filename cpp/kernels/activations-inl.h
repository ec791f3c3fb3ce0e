// Per-target int8 activation quantization (activations.h: QuantizeActivationsInt8), used
// by the ternary (per row) and int4 (per block of 32) matmuls. Every step is exact or
// correctly rounded (max of |x|, one f32 multiply, round half to even), so all targets
// agree bit for bit.
#if defined(TERNLM_KERNELS_ACTIVATIONS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TERNLM_KERNELS_ACTIVATIONS_INL_H_
#undef TERNLM_KERNELS_ACTIVATIONS_INL_H_
#else
#define TERNLM_KERNELS_ACTIVATIONS_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "hwy/highway.h"
#include "kernels/activations.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// q[i] = clamp(round_half_even(x[i] * s), -128, 127), s = 127 / max(max|x|, 1e-5).
// Returns 1/s.
HWY_INLINE float QuantizeInt8Row(const float* HWY_RESTRICT x, size_t n, int8_t* HWY_RESTRICT q) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<int32_t, decltype(df)> di32;
  const hn::Rebind<int16_t, decltype(df)> di16;
  const hn::Rebind<int8_t, decltype(df)> di8;
  const size_t N = hn::Lanes(df);
  auto vmax = hn::Zero(df);
  size_t i = 0;
  for (; i + N <= n; i += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, x + i)));
  float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
  for (; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = 127.0f / std::max(amax, 1e-5f);
  const auto vs = hn::Set(df, s);
  const auto lo = hn::Set(df, -128.0f), hi = hn::Set(df, 127.0f);
  for (i = 0; i + N <= n; i += N) {
    const auto r = hn::Min(hn::Max(hn::Round(hn::Mul(hn::LoadU(df, x + i), vs)), lo), hi);
    const auto v32 = hn::ConvertTo(di32, r);
    hn::StoreU(hn::DemoteTo(di8, hn::DemoteTo(di16, v32)), di8, q + i);
  }
  for (; i < n; ++i) {
    const float v = std::nearbyint(x[i] * s);
    q[i] = int8_t(std::min(127.0f, std::max(-128.0f, v)));
  }
  return 1.0f / s;
}

// activations.h QuantizeActivationsInt4. The float64 sum of squares is a plain loop (the
// order does not change alpha but for a rounding-boundary straddle: activations.h); the
// codes are vectorized.
HWY_INLINE float QuantizeInt4Row(const float* HWY_RESTRICT x, size_t n, bool gaussian, int8_t* HWY_RESTRICT q) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<int32_t, decltype(df)> di32;
  const hn::Rebind<int16_t, decltype(df)> di16;
  const hn::Rebind<int8_t, decltype(df)> di8;
  const size_t N = hn::Lanes(df);
  float alpha = 0.0f;
  size_t i = 0;
  if (gaussian) {
    double sum = 0.0;
    for (i = 0; i < n; ++i) sum += double(x[i]) * double(x[i]);
    alpha = float(double(kGaussianClip4) * std::sqrt(sum / double(n)));
  } else {
    auto vmax = hn::Zero(df);
    for (; i + N <= n; i += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, x + i)));
    alpha = hn::GetLane(hn::MaxOfLanes(df, vmax));
    for (; i < n; ++i) alpha = std::max(alpha, std::fabs(x[i]));
  }
  const float s = 7.5f / std::max(alpha, 1e-5f);
  const auto vs = hn::Set(df, s);
  const auto lo = hn::Set(df, -8.0f), hi = hn::Set(df, 7.0f), one = hn::Set(df, 1.0f);
  for (i = 0; i + N <= n; i += N) {
    const auto f = hn::Min(hn::Max(hn::Floor(hn::Mul(hn::LoadU(df, x + i), vs)), lo), hi);
    const auto v32 = hn::ConvertTo(di32, hn::MulAdd(f, hn::Set(df, 2.0f), one));
    hn::StoreU(hn::DemoteTo(di8, hn::DemoteTo(di16, v32)), di8, q + i);
  }
  for (; i < n; ++i) {
    const float f = std::min(7.0f, std::max(-8.0f, std::floor(x[i] * s)));
    q[i] = int8_t(2.0f * f + 1.0f);
  }
  return 1.0f / (2.0f * s);
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
