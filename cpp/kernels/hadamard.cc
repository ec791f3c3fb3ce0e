// The fast Walsh-Hadamard transform of kernels/hadamard.h, compiled for every Highway
// target. Stages with h >= the vector length pair whole vectors h apart; the stages
// with h < the vector length pair lanes inside one vector: the partner of lane i is lane
// i ^ h (TableLookupLanes), and lanes with bit h set take (partner - own), the others
// (own + partner): the same two f32 operations as the scalar butterfly.
#include "kernels/hadamard.h"

#include <cmath>
#include <cstdint>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/hadamard.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// One block of b values, stages h = 1 .. b/2 in order, scalar (blocks shorter than a vector).
HWY_INLINE void FwhtBlockScalar(float* HWY_RESTRICT x, size_t b) {
  for (size_t h = 1; h < b; h *= 2)
    for (size_t i = 0; i < b; i += 2 * h)
      for (size_t j = i; j < i + h; ++j) {
        const float a = x[j], c = x[j + h];
        x[j] = a + c;
        x[j + h] = a - c;
      }
}

void HadamardRotateTarget(float* HWY_RESTRICT x, size_t n, size_t b) {
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
  const size_t N = hn::Lanes(df);
  const float norm = float(1.0 / std::sqrt(double(b)));
  const auto vnorm = hn::Set(df, norm);
  if (b < N || b % N != 0) {
    for (size_t i = 0; i < n; i += b) FwhtBlockScalar(x + i, b);
    for (size_t i = 0; i < n; ++i) x[i] *= norm;
    return;
  }
  const auto iota = hn::Iota(di, 0);
  for (size_t base = 0; base < n; base += b) {
    float* blk = x + base;
    // in-vector stages h = 1 .. N/2
    for (size_t h = 1; h < N; h *= 2) {
      const auto vh = hn::Set(di, int32_t(h));
      const auto idx = hn::IndicesFromVec(df, hn::Xor(iota, vh));
      const auto upper = hn::RebindMask(df, hn::TestBit(iota, vh));
      for (size_t i = 0; i < b; i += N) {
        const auto v = hn::LoadU(df, blk + i);
        const auto p = hn::TableLookupLanes(v, idx);
        hn::StoreU(hn::IfThenElse(upper, hn::Sub(p, v), hn::Add(v, p)), df, blk + i);
      }
    }
    // whole-vector stages h = N .. b/2
    for (size_t h = N; h < b; h *= 2)
      for (size_t i = 0; i < b; i += 2 * h)
        for (size_t j = i; j < i + h; j += N) {
          const auto a = hn::LoadU(df, blk + j), c = hn::LoadU(df, blk + j + h);
          hn::StoreU(hn::Add(a, c), df, blk + j);
          hn::StoreU(hn::Sub(a, c), df, blk + j + h);
        }
    for (size_t i = 0; i < b; i += N) hn::StoreU(hn::Mul(hn::LoadU(df, blk + i), vnorm), df, blk + i);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ternlm {

HWY_EXPORT(HadamardRotateTarget);

size_t HadamardBlock(size_t n) {
  if (n == 0) return 0;
  const size_t b = n & (~n + 1);  // the lowest set bit: the largest power of two dividing n
  return b >= kMinHadamardBlock ? b : 0;
}

void HadamardRotate(float* x, size_t n, size_t block) {
  HWY_DYNAMIC_DISPATCH(HadamardRotateTarget)(x, n, block);
}

}  // namespace ternlm
#endif  // HWY_ONCE
