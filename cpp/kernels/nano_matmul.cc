// NanoMatMul: the two-stage matmul of formats/nano.h. Stage 1 splits the r rows of V^T
// over the thread pool, stage 2 the output rows of U; between them the calling thread
// quantizes z (r values per activation row). Scratch is thread-local and reused, so decode
// allocates nothing once warm. Kernels: kernels/nano_matmul-inl.h, one per Highway target.
#include "kernels/nano_matmul.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "formats/nano.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/nano_matmul.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include "kernels/activations-inl.h"
#include "kernels/nano_matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {

void NanoBitRowsTarget(const uint8_t* bits, size_t n, size_t r0, size_t r1, const uint8_t* pos, const uint8_t* neg,
                       size_t na, int32_t* dots, size_t dots_stride) {
  NanoBitRows(bits, n, r0, r1, pos, neg, na, dots, dots_stride);
}
// f32 activations [na, n_pad] from x [na, n]: x * s_in, quantized to int8 per row, then
// biased (pos/neg [na, n_pad]); inv[j] = 1/s of row j.
void NanoPrepareTarget(const float* x, const uint8_t* s_in, size_t n, size_t n_pad, size_t na, float* xf,
                       int8_t* q, uint8_t* pos, uint8_t* neg, float* inv) {
  for (size_t j = 0; j < na; ++j) {
    float* xs = xf + j * n_pad;
    if (s_in) {
      NanoScaleInput(x + j * n, s_in, n, n_pad, xs);
    } else {
      std::memcpy(xs, x + j * n, n * 4);
      std::fill(xs + n, xs + n_pad, 0.0f);
    }
    inv[j] = QuantizeInt8Row(xs, n_pad, q + j * n_pad);
    NanoBiasBoth(q + j * n_pad, n_pad, pos + j * n_pad, neg + j * n_pad);
  }
}
void NanoHalvesToFloatTarget(const uint8_t* h, size_t n, float* out) { NanoHalvesToFloat(h, n, out); }
float NanoBitDotFloatTarget(const uint8_t* bits, size_t n, const float* x) { return NanoBitDotFloat(bits, n, x); }

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ternlm {

HWY_EXPORT(NanoBitRowsTarget);
HWY_EXPORT(NanoPrepareTarget);
HWY_EXPORT(NanoBitDotFloatTarget);
HWY_EXPORT(NanoHalvesToFloatTarget);

namespace {

struct NanoScratch {
  std::vector<float> xf, z, inv1, inv2, s_out;
  std::vector<int8_t> q;
  std::vector<uint8_t> pos, neg;
  std::vector<int32_t> dots;
};

// Tasks of at least `min_rows` rows, about 8 per thread.
template <typename Fn>
void SplitRows(ThreadPool& pool, size_t rows, size_t min_rows, const Fn& fn) {
  const size_t ntasks = std::max<size_t>(1, std::min(pool.num_threads() * 8, rows / min_rows));
  const size_t per = (rows + ntasks - 1) / ntasks;
  pool.Run(ntasks, [&](size_t task, size_t) {
    const size_t r0 = task * per, r1 = std::min(rows, r0 + per);
    if (r0 < r1) fn(r0, r1);
  });
}

}  // namespace

void NanoMatMul(const QuantizedMatrix& w, const float* x, size_t n, float* y, ThreadPool& pool) {
  const size_t rows = w.rows(), cols = w.cols(), pc = w.padded_cols();
  const size_t rank = size_t(w.group_size()), pr = NanoPaddedRank(rank);
  const NanoLayout l(rows, pc, rank);
  const uint8_t* d = w.data();
  // The lambdas below run on the pool's threads: they use these pointers, never the
  // thread_local itself (which would name each worker's own scratch).
  thread_local NanoScratch scratch;
  NanoScratch& s = scratch;
  const size_t width = std::max(pc, pr);
  s.xf.resize(n * width);
  s.q.resize(n * width);
  s.pos.resize(n * width);
  s.neg.resize(n * width);
  s.inv1.resize(n);
  s.inv2.resize(n);
  s.z.resize(n * pr);
  s.s_out.resize(rows);
  s.dots.resize(n * std::max(pr, rows));
  const uint8_t* pos = s.pos.data();
  const uint8_t* neg = s.neg.data();
  int32_t* dots = s.dots.data();
  float* s_out = s.s_out.data();
  const float* inv2 = s.inv2.data();
  const auto bit_rows = HWY_DYNAMIC_DISPATCH(NanoBitRowsTarget);
  const auto halves = HWY_DYNAMIC_DISPATCH(NanoHalvesToFloatTarget);
  // stage 1: z_int[j, k] = sum_c V[c, k] q1[j, c]
  HWY_DYNAMIC_DISPATCH(NanoPrepareTarget)(x, d + l.s_in_off, cols, pc, n, s.xf.data(), s.q.data(), s.pos.data(),
                                          s.neg.data(), s.inv1.data());
  SplitRows(pool, rank, 16, [&](size_t k0, size_t k1) { bit_rows(d + l.v_off, pc, k0, k1, pos, neg, n, dots, pr); });
  // z = z_int / s1 (f32), zero past the rank; then stage 2 on the int8 of z.
  for (size_t j = 0; j < n; ++j) {
    for (size_t k = 0; k < rank; ++k) s.z[j * pr + k] = float(dots[j * pr + k]) * s.inv1[j];
    std::fill(s.z.begin() + j * pr + rank, s.z.begin() + (j + 1) * pr, 0.0f);
  }
  HWY_DYNAMIC_DISPATCH(NanoPrepareTarget)(s.z.data(), nullptr, pr, pr, n, s.xf.data(), s.q.data(), s.pos.data(),
                                          s.neg.data(), s.inv2.data());
  // stage 2: y[j, r] = float(sum_k U[r, k] q2[j, k]) * (1 / s2) * s_out[r]
  SplitRows(pool, rows, 16, [&](size_t r0, size_t r1) {
    bit_rows(d + l.u_off, pr, r0, r1, pos, neg, n, dots, rows);
    halves(d + l.s_out_off + 2 * r0, r1 - r0, s_out + r0);
    for (size_t j = 0; j < n; ++j)
      for (size_t r = r0; r < r1; ++r) y[j * rows + r] = float(dots[j * rows + r]) * inv2[j] * s_out[r];
  });
}

void NanoBitDotsForTest(const uint8_t* bits, size_t nrows, size_t n, const int8_t* q, size_t na, int32_t* out) {
  if (n == 0 || n % 64)
    throw std::invalid_argument("nano_bit_dots: n must be a positive multiple of 64, got " + std::to_string(n));
  for (size_t i = 0; i < na * n; ++i)
    if (q[i] == -128) throw std::invalid_argument("nano_bit_dots: q must be in [-127, 127]");
  std::vector<uint8_t> pos(na * n), neg(na * n);
  for (size_t i = 0; i < na * n; ++i) {
    pos[i] = uint8_t(int(q[i]) + 128);
    neg[i] = uint8_t(128 - int(q[i]));
  }
  HWY_DYNAMIC_DISPATCH(NanoBitRowsTarget)(bits, n, 0, nrows, pos.data(), neg.data(), na, out, nrows);
}

float NanoBitDotFloat(const uint8_t* bits, size_t n, const float* x) {
  return HWY_DYNAMIC_DISPATCH(NanoBitDotFloatTarget)(bits, n, x);
}

}  // namespace ternlm
#endif  // HWY_ONCE
