// Per-target bodies of vector_ops.h (compiled once per Highway target through
// vector_ops.cc). All f32; tails shorter than a vector run as scalar code with
// the same formulas.
#if defined(TERNLM_KERNELS_VECTOR_OPS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TERNLM_KERNELS_VECTOR_OPS_INL_H_
#undef TERNLM_KERNELS_VECTOR_OPS_INL_H_
#else
#define TERNLM_KERNELS_VECTOR_OPS_INL_H_
#endif

#include <cmath>
#include <cstddef>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "kernels/vector_ops.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;

HWY_INLINE float SumSquaresImpl(const float* HWY_RESTRICT x, size_t n) {
  const DF d;
  const size_t N = hn::Lanes(d);
  auto s0 = hn::Zero(d), s1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    const auto a = hn::LoadU(d, x + i), b = hn::LoadU(d, x + i + N);
    s0 = hn::MulAdd(a, a, s0);
    s1 = hn::MulAdd(b, b, s1);
  }
  for (; i + N <= n; i += N) {
    const auto a = hn::LoadU(d, x + i);
    s0 = hn::MulAdd(a, a, s0);
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1)));
  for (; i < n; ++i) sum += x[i] * x[i];
  return sum;
}

HWY_INLINE void AxpyImpl(float a, const float* HWY_RESTRICT x, size_t n, float* HWY_RESTRICT y) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const auto va = hn::Set(d, a);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::MulAdd(va, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d, y + i);
  for (; i < n; ++i) y[i] += a * x[i];
}

void RmsNormTarget(const float* x, const float* w, size_t n, float eps, float* out) {
  const float inv = 1.0f / std::sqrt(SumSquaresImpl(x, n) / float(n) + eps);
  const DF d;
  const size_t N = hn::Lanes(d);
  const auto vinv = hn::Set(d, inv);
  size_t i = 0;
  // (x * inv) * w, in transformers' order of rounding.
  for (; i + N <= n; i += N)
    hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(d, x + i), vinv), hn::LoadU(d, w + i)), d, out + i);
  for (; i < n; ++i) out[i] = (x[i] * inv) * w[i];
}

void RopeRotateHalfTarget(float* x, const float* cs, const float* sn, size_t head_dim) {
  const size_t h = head_dim / 2;
  float* HWY_RESTRICT lo = x;
  float* HWY_RESTRICT hi = x + h;
  const DF d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= h; i += N) {
    const auto a = hn::LoadU(d, lo + i), b = hn::LoadU(d, hi + i);
    const auto c = hn::LoadU(d, cs + i), s = hn::LoadU(d, sn + i);
    hn::StoreU(hn::Sub(hn::Mul(a, c), hn::Mul(b, s)), d, lo + i);
    hn::StoreU(hn::Add(hn::Mul(b, c), hn::Mul(a, s)), d, hi + i);
  }
  for (; i < h; ++i) {
    const float a = lo[i], b = hi[i];
    lo[i] = a * cs[i] - b * sn[i];
    hi[i] = b * cs[i] + a * sn[i];
  }
}

void AxpyTarget(float a, const float* x, size_t n, float* y) { AxpyImpl(a, x, n, y); }

void AddInPlaceTarget(const float* y, size_t n, float* x) { AxpyImpl(1.0f, y, n, x); }

void SiluMulTarget(const float* gate, const float* up, size_t n, float* out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const auto one = hn::Set(d, 1.0f), cap = hn::Set(d, 88.0f);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto g = hn::LoadU(d, gate + i);
    // sigmoid(g) = 1 / (1 + e^-g); e^-g capped below overflow (the product is ~0 there).
    const auto e = hn::Exp(d, hn::Min(hn::Neg(g), cap));
    const auto silu = hn::Div(g, hn::Add(one, e));
    hn::StoreU(hn::Mul(silu, hn::LoadU(d, up + i)), d, out + i);
  }
  for (; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(std::fmin(-g, 88.0f))) * up[i];
  }
}

void Relu2MulTarget(const float* gate, const float* up, size_t n, float* out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const auto zero = hn::Zero(d);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto r = hn::Max(hn::LoadU(d, gate + i), zero);
    hn::StoreU(hn::Mul(hn::Mul(r, r), hn::LoadU(d, up + i)), d, out + i);
  }
  for (; i < n; ++i) {
    const float r = gate[i] > 0.0f ? gate[i] : 0.0f;
    out[i] = (r * r) * up[i];
  }
}

size_t ArgmaxTarget(const float* x, size_t n) {
  const DF d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  float mx = x[0];
  if (n >= N) {
    auto vmax = hn::LoadU(d, x);
    for (i = N; i + N <= n; i += N) vmax = hn::Max(vmax, hn::LoadU(d, x + i));
    mx = hn::GetLane(hn::MaxOfLanes(d, vmax));
  }
  for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  for (size_t j = 0; j < n; ++j)
    if (x[j] == mx) return j;
  return 0;  // only when every value is NaN
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
