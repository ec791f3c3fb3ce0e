// MatMul: prepares the activations once (kernels/activations.h), splits the output
// rows into tasks for the thread pool, and runs the best kernel for this CPU
// (Highway dynamic dispatch over ternary_matmul-inl.h, int4_matmul-inl.h,
// float_matmul-inl.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "formats/bf16.h"
#include "formats/quantized_matrix.h"
#include "formats/ternary.h"
#include "kernels/activations.h"
#include "kernels/matmul.h"
#include "kernels/matmul_testing.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/matmul.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include "kernels/activations-inl.h"
#include "kernels/float_matmul-inl.h"
#include "kernels/int4_matmul-inl.h"
#include "kernels/ternary_matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {

void MatMulRows(const QuantizedMatrix& w, const PreparedActivations& a, size_t r0, size_t r1,
                const MatMulOutput& out) {
  switch (w.format()) {
    case WeightFormat::kTernary:
      TernaryMatMulRows(w.data(), w.padded_cols(), w.row_multiplier(), a, r0, r1, out);
      break;
    case WeightFormat::kInt4:
      Int4MatMulRows(w.data(), w.padded_cols(), w.group_size(), a, r0, r1, out);
      break;
    case WeightFormat::kBF16:
      BF16MatMulRows(w.data(), w.padded_cols(), a, r0, r1, out);
      break;
    case WeightFormat::kF32:
      F32MatMulRows(w.data(), w.padded_cols(), a, r0, r1, out);
      break;
    case WeightFormat::kBF16C:
      BF16CMatMulRows(w.data(), w.padded_cols(), w.exc_row_ptr(), w.exc_col(), w.exc_value(), a, r0, r1, out);
      break;
  }
}

float QuantizeActivationsInt8Target(const float* x, size_t n, int8_t* q) {
  return QuantizeInt8Row(x, n, q);
}

void TernaryIntDots(const QuantizedMatrix& w, const int8_t* q, int32_t q_sum, int32_t* out) {
  TernaryIntDotsRows(w.data(), w.padded_cols(), w.rows(), q, q_sum, out);
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ternlm {

HWY_EXPORT(MatMulRows);
HWY_EXPORT(TernaryIntDots);
HWY_EXPORT(QuantizeActivationsInt8Target);

float QuantizeActivationsInt8(const float* x, size_t n, int8_t* q) {
  return HWY_DYNAMIC_DISPATCH(QuantizeActivationsInt8Target)(x, n, q);
}

namespace {

// Thread-local scratch, grown on demand and reused across calls.
struct ActivationScratch {
  std::vector<int8_t> q;
  std::vector<int32_t> q_sum;
  std::vector<float> inv_scale, group_sum, xf;
};

PreparedActivations Prepare(const QuantizedMatrix& w, const float* x, size_t n,
                            ActivationScratch& s) {
  PreparedActivations a;
  a.n = n;
  a.stride = w.padded_cols();
  const size_t cols = w.cols(), stride = a.stride;
  switch (w.format()) {
    case WeightFormat::kTernary:
      s.q.assign(n * stride, 0);
      s.q_sum.resize(n);
      s.inv_scale.resize(n);
      for (size_t i = 0; i < n; ++i) {
        int8_t* q = s.q.data() + i * stride;
        s.inv_scale[i] = QuantizeActivationsInt8(x + i * cols, cols, q);
        int32_t sum = 0;
        for (size_t c = 0; c < cols; ++c) sum += q[c];
        s.q_sum[i] = sum;
      }
      a.q = s.q.data();
      a.q_sum = s.q_sum.data();
      a.inv_scale = s.inv_scale.data();
      break;
    case WeightFormat::kInt4: {
      const size_t nb = stride / 32, group = size_t(w.group_size()), ng = stride / group;
      s.q.assign(n * stride, 0);
      s.inv_scale.assign(n * nb, 0.0f);
      s.group_sum.assign(n * ng, 0.0f);
      for (size_t i = 0; i < n; ++i) {
        const float* xr = x + i * cols;
        for (size_t b = 0; b < cols / 32; ++b)  // cols is a multiple of the group, so of 32
          s.inv_scale[i * nb + b] = QuantizeActivationsInt8(xr + 32 * b, 32, s.q.data() + i * stride + 32 * b);
        // The min term uses the sum of the *dequantized* int8 activations (as GGUF's
        // Q8_1 does), not of x: then the whole error is sum(w_c * (x̂_c - x_c)) over
        // centred weights, instead of sum(scale * q_c * (x̂_c - x_c)) over q in 0..15,
        // whose terms all share a sign and do not cancel (2-3x larger on real models).
        const int8_t* qr = s.q.data() + i * stride;
        for (size_t g = 0; g < cols / group; ++g) {
          float sum = 0;
          for (size_t b = g * group / 32; b < (g + 1) * group / 32; ++b) {
            int32_t qs = 0;
            for (size_t c = 0; c < 32; ++c) qs += qr[32 * b + c];
            sum += float(qs) * s.inv_scale[i * nb + b];
          }
          s.group_sum[i * ng + g] = sum;
        }
      }
      a.q = s.q.data();
      a.inv_scale = s.inv_scale.data();
      a.group_sum = s.group_sum.data();
      break;
    }
    case WeightFormat::kBF16:
    case WeightFormat::kBF16C:
    case WeightFormat::kF32:
      s.xf.assign(n * stride, 0.0f);
      for (size_t i = 0; i < n; ++i) std::memcpy(s.xf.data() + i * stride, x + i * cols, cols * 4);
      a.xf = s.xf.data();
      break;
  }
  return a;
}

}  // namespace

void MatMul(const QuantizedMatrix& w, const float* x, size_t n, float* y, ThreadPool& pool) {
  if (n == 0 || w.rows() == 0) return;
  thread_local ActivationScratch scratch;
  const PreparedActivations a = Prepare(w, x, n, scratch);
  const MatMulOutput out{y, w.rows()};
  const size_t rows = w.rows();
  // Enough tasks to balance, each at least 16 rows so the per-task overhead stays small;
  // tasks start on a 16-row tile (every format but f32).
  const size_t unit = w.format() == WeightFormat::kF32 ? 1 : 16;  // 16-row tiles
  const size_t units = (rows + unit - 1) / unit;
  const size_t ntasks = std::max<size_t>(1, std::min(pool.num_threads() * 8, rows / 16));
  const size_t per_task = (units + ntasks - 1) / ntasks * unit;
  pool.Run(ntasks, [&](size_t task, size_t /*thread*/) {
    const size_t r0 = task * per_task, r1 = std::min(rows, r0 + per_task);
    if (r0 >= r1) return;
    HWY_DYNAMIC_DISPATCH(MatMulRows)(w, a, r0, r1, out);
  });
}

void TernaryIntDotsForTest(const QuantizedMatrix& w, const int8_t* q, int32_t* out) {
  if (w.format() != WeightFormat::kTernary)
    throw std::invalid_argument("ternary_int_dots: q is " + std::string(FormatName(w.format())) +
                                ", expected ternary");
  std::vector<int8_t> padded(w.padded_cols(), 0);
  std::memcpy(padded.data(), q, w.cols());
  int32_t sum = 0;
  for (size_t c = 0; c < w.cols(); ++c) sum += q[c];
  HWY_DYNAMIC_DISPATCH(TernaryIntDots)(w, padded.data(), sum, out);
}

}  // namespace ternlm
#endif  // HWY_ONCE
