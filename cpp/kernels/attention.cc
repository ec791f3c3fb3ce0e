// AttendPartial (attention.h): the per-target code, compiled once per Highway target by
// re-including this file (foreach_target.h), and its run-time dispatch.
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/attention.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include "formats/half.h"  // F32FromF16
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;

// f32 lanes from the cache's elements: f32, or IEEE half bits (uint16_t).
template <class D>
HWY_INLINE hn::Vec<D> LoadF32(D d, const float* HWY_RESTRICT p) {
  return hn::LoadU(d, p);
}
template <class D>
HWY_INLINE hn::Vec<D> LoadF32(D d, const uint16_t* HWY_RESTRICT p) {
  const hn::Rebind<hwy::float16_t, D> dh;
  return hn::PromoteTo(d, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(p)));
}
HWY_INLINE float ToF32(float x) { return x; }
HWY_INLINE float ToF32(uint16_t h) { return F32FromF16(h); }

// Scores of up to 4 query rows against one key block ([head_dim][kKeyBlock], d-major):
// for each d, one key vector of kKeyBlock positions times the broadcast q[r][d] per row,
// so there is no horizontal sum. Even and odd d go to separate accumulators (two
// independent FMA chains per row and vector).
template <size_t R, typename T>
HWY_INLINE void KeyBlockScores(const float* const* q, const T* HWY_RESTRICT kb, size_t hd,
                               float scale, float* const* out) {
  const hn::CappedTag<float, kKeyBlock> d;
  const size_t N = hn::Lanes(d);
  for (size_t v = 0; v < kKeyBlock; v += N) {
    hn::Vec<decltype(d)> even[R], odd[R];
    for (size_t r = 0; r < R; ++r) even[r] = odd[r] = hn::Zero(d);
    size_t i = 0;
    for (; i + 2 <= hd; i += 2) {
      const auto k0 = LoadF32(d, kb + i * kKeyBlock + v), k1 = LoadF32(d, kb + (i + 1) * kKeyBlock + v);
      for (size_t r = 0; r < R; ++r) {
        even[r] = hn::MulAdd(hn::Set(d, q[r][i]), k0, even[r]);
        odd[r] = hn::MulAdd(hn::Set(d, q[r][i + 1]), k1, odd[r]);
      }
    }
    if (i < hd) {
      const auto k0 = LoadF32(d, kb + i * kKeyBlock + v);
      for (size_t r = 0; r < R; ++r) even[r] = hn::MulAdd(hn::Set(d, q[r][i]), k0, even[r]);
    }
    const auto vscale = hn::Set(d, scale);
    for (size_t r = 0; r < R; ++r) hn::StoreU(hn::Mul(hn::Add(even[r], odd[r]), vscale), d, out[r] + v);
  }
}

// out[r][d0 .. d0 + C*N) += sum_{t < count} p[r][t] * values[t][d0 ..]: C vectors of each
// value row times the broadcast weight of each of R rows, the sums in registers.
template <size_t R, size_t C, typename T>
HWY_INLINE void ValueChunk(const float* const* p, const T* HWY_RESTRICT values, size_t count,
                           size_t hd, size_t d0, float* const* out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  hn::Vec<DF> acc[R][C];
  for (size_t r = 0; r < R; ++r)
    for (size_t c = 0; c < C; ++c) acc[r][c] = hn::LoadU(d, out[r] + d0 + c * N);
  for (size_t t = 0; t < count; ++t) {
    const T* HWY_RESTRICT row = values + t * hd + d0;
    hn::Vec<DF> w[R];
    for (size_t r = 0; r < R; ++r) w[r] = hn::Set(d, p[r][t]);
    for (size_t c = 0; c < C; ++c) {
      const auto x = LoadF32(d, row + c * N);
      for (size_t r = 0; r < R; ++r) acc[r][c] = hn::MulAdd(w[r], x, acc[r][c]);
    }
  }
  for (size_t r = 0; r < R; ++r)
    for (size_t c = 0; c < C; ++c) hn::StoreU(acc[r][c], d, out[r] + d0 + c * N);
}

// Registers for the value sums: 16 accumulators where the target has 32 vector
// registers, 8 where it has 16 (x86 before AVX-512).
#if HWY_ARCH_X86 && HWY_TARGET >= HWY_AVX2
constexpr size_t kValueChunk = 2;
#else
constexpr size_t kValueChunk = 4;
#endif

template <size_t R, typename T>
HWY_INLINE void ValueRows(const float* const* p, const T* values, size_t count, size_t hd,
                          float* const* out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  size_t d0 = 0;
  for (; d0 + kValueChunk * N <= hd; d0 += kValueChunk * N) ValueChunk<R, kValueChunk, T>(p, values, count, hd, d0, out);
  for (; d0 + N <= hd; d0 += N) ValueChunk<R, 1, T>(p, values, count, hd, d0, out);
  for (; d0 < hd; ++d0)
    for (size_t r = 0; r < R; ++r) {
      float sum = out[r][d0];
      for (size_t t = 0; t < count; ++t) sum += p[r][t] * ToF32(values[t * hd + d0]);
      out[r][d0] = sum;
    }
}

// e^(x - max) in place over x[skip, n), zeros over [0, skip) (positions left of a sliding
// window) and [n, padded); returns the max (-inf when skip >= n) and writes the sum of the
// exponentials.
HWY_INLINE float ExpRow(float* HWY_RESTRICT x, size_t skip, size_t n, size_t padded, float* sum_out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  float mx = -INFINITY, sum = 0.0f;
  for (size_t i = 0; i < skip && i < padded; ++i) x[i] = 0.0f;
  if (skip >= n) {
    for (size_t i = skip; i < padded; ++i) x[i] = 0.0f;
    *sum_out = 0.0f;
    return mx;
  }
  x += skip;
  n -= skip;
  padded -= skip;
  {
    size_t i = 0;
    if (n >= N) {
      auto vmax = hn::LoadU(d, x);
      for (i = N; i + N <= n; i += N) vmax = hn::Max(vmax, hn::LoadU(d, x + i));
      mx = hn::GetLane(hn::MaxOfLanes(d, vmax));
    }
    for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
    const auto vm = hn::Set(d, mx);
    auto vsum = hn::Zero(d);
    for (i = 0; i + N <= n; i += N) {
      const auto e = hn::Exp(d, hn::Sub(hn::LoadU(d, x + i), vm));
      hn::StoreU(e, d, x + i);
      vsum = hn::Add(vsum, e);
    }
    sum = hn::GetLane(hn::SumOfLanes(d, vsum));
    for (; i < n; ++i) {
      x[i] = std::exp(x[i] - mx);
      sum += x[i];
    }
  }
  for (size_t i = n; i < padded; ++i) x[i] = 0.0f;
  *sum_out = sum;
  return mx;
}

// fn(first row, std::integral_constant<size_t, R>) for consecutive chunks of R <= 4 rows.
template <class Fn>
HWY_INLINE void ForRowChunks(size_t rows, const Fn& fn) {
  for (size_t r0 = 0; r0 < rows; r0 += 4) {
    switch (rows - r0 >= 4 ? 4 : rows - r0) {
      case 4: fn(r0, std::integral_constant<size_t, 4>()); break;
      case 3: fn(r0, std::integral_constant<size_t, 3>()); break;
      case 2: fn(r0, std::integral_constant<size_t, 2>()); break;
      default: fn(r0, std::integral_constant<size_t, 1>()); break;
    }
  }
}

template <typename T>
void AttendPartialT(const AttendArgs& a) {
  const T* keys = static_cast<const T*>(a.keys);
  const T* values = static_cast<const T*>(a.values);
  const size_t rows = a.tokens * a.group, hd = a.head_dim;
  const size_t stride = AttendScoresStride(a.begin, a.end);
  // Row r = token i, query head g: visible positions of this call [begin, begin + count(r)).
  auto count = [&](size_t r) -> size_t {
    const size_t visible = std::min(a.end, a.first_len + r / a.group);
    return visible > a.begin ? visible - a.begin : 0;
  };
  // Positions [begin, begin + skip(r)) are left of row r's sliding window.
  auto skip = [&](size_t r) -> size_t {
    const size_t visible = a.first_len + r / a.group;
    if (a.window == 0 || visible <= a.window) return 0;
    const size_t lo = visible - a.window;
    return lo > a.begin ? std::min(lo - a.begin, count(r)) : 0;
  };
  auto q_row = [&](size_t r) { return a.q + (r / a.group) * a.q_stride + (r % a.group) * hd; };
  auto out_row = [&](size_t r) { return a.out + (r / a.group) * a.out_stride + (r % a.group) * hd; };
  auto score_row = [&](size_t r) { return a.scores + r * stride; };

  // Keys: one pass over the blocks; each block is scored for every row that sees it
  // (rows are in token order, so a chunk's last row sees the most).
  for (size_t b = 0; b < stride; b += kKeyBlock) {
    const T* kb = keys + (a.begin + b) * hd;  // block (begin + b) / kKeyBlock
    ForRowChunks(rows, [&](size_t r0, auto tag) {
      constexpr size_t R = decltype(tag)::value;
      if (count(r0 + R - 1) <= b) return;
      const float* q[R];
      float* out[R];
      for (size_t r = 0; r < R; ++r) q[r] = q_row(r0 + r), out[r] = score_row(r0 + r) + b;
      KeyBlockScores<R, T>(q, kb, hd, a.scale, out);
    });
  }
  for (size_t r = 0; r < rows; ++r) {
    a.row_max[r] = ExpRow(score_row(r), skip(r), count(r), stride, &a.row_sum[r]);
    float* o = out_row(r);
    for (size_t i = 0; i < hd; ++i) o[i] = 0.0f;
  }
  // Values: blocks of kValueBlock rows (16 KiB at head_dim 128, in L1 while every row
  // chunk and every part of the row is summed from it).
  constexpr size_t kValueBlock = 32;
  for (size_t b = 0; b < stride; b += kValueBlock) {
    ForRowChunks(rows, [&](size_t r0, auto tag) {
      constexpr size_t R = decltype(tag)::value;
      const size_t last = count(r0 + R - 1);
      if (last <= b) return;
      const size_t n = std::min(kValueBlock, last - b);
      const float* p[R];
      float* out[R];
      for (size_t r = 0; r < R; ++r) p[r] = score_row(r0 + r) + b, out[r] = out_row(r0 + r);
      ValueRows<R, T>(p, values + (a.begin + b) * hd, n, hd, out);
    });
  }
}

void AttendPartialTarget(const AttendArgs& a) {
  if (a.f16)
    AttendPartialT<uint16_t>(a);
  else
    AttendPartialT<float>(a);
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ternlm {

HWY_EXPORT(AttendPartialTarget);

void AttendPartial(const AttendArgs& args) { HWY_DYNAMIC_DISPATCH(AttendPartialTarget)(args); }

}  // namespace ternlm
#endif  // HWY_ONCE
