// MatMul: prepares the activations once (kernels/activations.h), splits the output
// rows into tasks for the thread pool, and runs the best kernel for this CPU
// (Highway dynamic dispatch over ternary_matmul-inl.h, int4_matmul-inl.h,
// int8_matmul-inl.h, q6_matmul-inl.h, float_matmul-inl.h). What runs for each weight format is one row of kFormatKernels;
// nano (two dependent binary products) has its own driver, kernels/nano_matmul.cc.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "formats/bf16.h"
#include "formats/format_traits.h"
#include "formats/int8.h"
#include "formats/q6.h"
#include "formats/quantized_matrix.h"
#include "formats/ternary.h"
#include "formats/tiles.h"
#include "kernels/activations.h"
#include "kernels/matmul.h"
#include "kernels/matmul_testing.h"
#include "kernels/nano_matmul.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/matmul.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include "kernels/activations-inl.h"
#include "kernels/float_matmul-inl.h"
#include "kernels/int4_matmul-inl.h"
#include "kernels/int8_matmul-inl.h"
#include "kernels/q6_matmul-inl.h"
#include "kernels/ternary_matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {

// The row kernels, one per format: rows [r0, r1) of w for every activation row.
void F32Rows(const QuantizedMatrix& w, const PreparedActivations& a, size_t r0, size_t r1,
             const MatMulOutput& out) {
  F32MatMulRows(w.data(), w.padded_cols(), a, r0, r1, out);
}
void BF16Rows(const QuantizedMatrix& w, const PreparedActivations& a, size_t r0, size_t r1,
              const MatMulOutput& out) {
  BF16MatMulRows(w.data(), w.padded_cols(), a, r0, r1, out);
}
void Int4Rows(const QuantizedMatrix& w, const PreparedActivations& a, size_t r0, size_t r1,
              const MatMulOutput& out) {
  Int4MatMulRows(w.data(), w.padded_cols(), w.group_size(), a, r0, r1, out);
}
void TernaryRows(const QuantizedMatrix& w, const PreparedActivations& a, size_t r0, size_t r1,
                 const MatMulOutput& out) {
  TernaryMatMulRows(w.data(), w.padded_cols(), w.row_multiplier(), a, r0, r1, out);
}
void BF16CRows(const QuantizedMatrix& w, const PreparedActivations& a, size_t r0, size_t r1,
               const MatMulOutput& out) {
  BF16CMatMulRows(w.data(), w.padded_cols(), w.exc_row_ptr(), w.exc_col(), w.exc_value(), a, r0, r1, out);
}

void Int8Rows(const QuantizedMatrix& w, const PreparedActivations& a, size_t r0, size_t r1,
              const MatMulOutput& out) {
  Int8MatMulRows(w.data(), w.padded_cols(), w.row_multiplier(), w.rows(), a, r0, r1, out);
}
void Q6Rows(const QuantizedMatrix& w, const PreparedActivations& a, size_t r0, size_t r1,
            const MatMulOutput& out) {
  Q6MatMulRows(w.data(), w.padded_cols(), a, r0, r1, out);
}

// The block sums I[r, b] (int8.h, q6.h) of the dispatched kernel for one activation row:
// out [round_up(rows, 16) / 16][padded_cols / 32][16 rows].
void HeadBlockDots(const QuantizedMatrix& w, const int8_t* q, const int32_t* sub_sum, int32_t* out) {
  const size_t nb32 = w.padded_cols() / 32;
  std::vector<float> inv(nb32, 1.0f), mult(kTileRows, 1.0f);
  HWY_ALIGN float y[kTileRows];
  const int8_t* xs[1] = {q};
  const float* invs[1] = {inv.data()};
  const int32_t* sums[1] = {sub_sum};
  for (size_t t = 0; t < TileCount(w.rows()); ++t) {
    int32_t* o = out + t * nb32 * kTileRows;
    if (w.format() == WeightFormat::kInt8)
      Int8TileBest<1>(w.data() + t * Int8TileBytes(w.padded_cols()), mult.data(), nb32, xs, invs, sums, y, o);
    else
      Q6TileBest<1>(w.data() + t * Q6TileBytes(w.padded_cols()), w.padded_cols(), xs, invs, sums, y, o);
  }
}

float QuantizeActivationsInt8Target(const float* x, size_t n, int8_t* q) {
  return QuantizeInt8Row(x, n, q);
}
float QuantizeActivationsInt4Target(const float* x, size_t n, bool gaussian, int8_t* q) {
  return QuantizeInt4Row(x, n, gaussian, q);
}

void TernaryIntDots(const QuantizedMatrix& w, const int8_t* q, int32_t q_sum, int32_t* out) {
  TernaryIntDotsRows(w.data(), w.padded_cols(), w.rows(), q, q_sum, out);
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ternlm {

HWY_EXPORT(F32Rows);
HWY_EXPORT(BF16Rows);
HWY_EXPORT(Int4Rows);
HWY_EXPORT(TernaryRows);
HWY_EXPORT(BF16CRows);
HWY_EXPORT(TernaryIntDots);
HWY_EXPORT(Int8Rows);
HWY_EXPORT(Q6Rows);
HWY_EXPORT(HeadBlockDots);
HWY_EXPORT(QuantizeActivationsInt8Target);
HWY_EXPORT(QuantizeActivationsInt4Target);

float QuantizeActivationsInt8(const float* x, size_t n, int8_t* q) {
  return HWY_DYNAMIC_DISPATCH(QuantizeActivationsInt8Target)(x, n, q);
}
float QuantizeActivationsInt4(const float* x, size_t n, bool gaussian, int8_t* q) {
  return HWY_DYNAMIC_DISPATCH(QuantizeActivationsInt4Target)(x, n, gaussian, q);
}

namespace {

// Thread-local scratch, grown on demand and reused across calls.
struct ActivationScratch {
  std::vector<int8_t> q;
  std::vector<int32_t> q_sum, sub_sum;
  std::vector<float> inv_scale, group_sum, xf;
};

// ---- activation prepares (a.n and a.stride are set by the caller)

// ternary: int8 per row, with sum(q) and 1/s_x per row.
void PrepareInt8Rows(const QuantizedMatrix& w, const float* x, ActivationScratch& s, PreparedActivations& a) {
  const size_t n = a.n, cols = w.cols(), stride = a.stride;
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
}

// int4's min term: the f32 sum per group of the dequantized activations (q, inv_scale set).
// It uses the sum of the *dequantized* int8 activations (as GGUF's Q8_1 does), not of x:
// then the whole error is sum(w_c * (x̂_c - x_c)) over centred weights, instead of
// sum(scale * q_c * (x̂_c - x_c)) over q in 0..15, whose terms all share a sign and do not
// cancel (2-3x larger on real models).
void FillGroupSums(const QuantizedMatrix& w, ActivationScratch& s, PreparedActivations& a) {
  const size_t cols = w.cols(), stride = a.stride, nb = stride / 32;
  const size_t group = size_t(w.group_size()), ng = stride / group;
  s.group_sum.assign(a.n * ng, 0.0f);
  for (size_t i = 0; i < a.n; ++i) {
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
  a.group_sum = s.group_sum.data();
}

// sum(q) per 16 inputs (q6's sub-blocks; the VNNI int8 kernel's offset correction).
void FillSubSums(ActivationScratch& s, PreparedActivations& a) {
  const size_t nsub = a.stride / kQ6SubCols;
  s.sub_sum.resize(a.n * nsub);
  for (size_t i = 0; i < a.n; ++i)
    for (size_t j = 0; j < nsub; ++j) {
      int32_t sum = 0;
      for (size_t c = 0; c < kQ6SubCols; ++c) sum += s.q[i * a.stride + j * kQ6SubCols + c];
      s.sub_sum[i * nsub + j] = sum;
    }
  a.sub_sum = s.sub_sum.data();
}

// int4: int8 per block of 32, with 1/s_b per block and the f32 sum per group.
void PrepareInt8Blocks(const QuantizedMatrix& w, const float* x, ActivationScratch& s, PreparedActivations& a) {
  const size_t n = a.n, cols = w.cols(), stride = a.stride;
  const size_t nb = stride / 32;
  s.q.assign(n * stride, 0);
  s.inv_scale.assign(n * nb, 0.0f);
  for (size_t i = 0; i < n; ++i) {
    const float* xr = x + i * cols;
    for (size_t b = 0; b < cols / 32; ++b)  // cols is a multiple of the group, so of 32
      s.inv_scale[i * nb + b] = QuantizeActivationsInt8(xr + 32 * b, 32, s.q.data() + i * stride + 32 * b);
  }
  a.q = s.q.data();
  a.inv_scale = s.inv_scale.data();
  FillGroupSums(w, s, a);
}

// int8, q6: int8 per block of 32 with 1/s_b per block, and sum(q) per 16 (q6's sub-blocks;
// the VNNI int8 kernel's offset correction).
void PrepareInt8Blocks32(const QuantizedMatrix& w, const float* x, ActivationScratch& s, PreparedActivations& a) {
  const size_t n = a.n, cols = w.cols(), stride = a.stride, nb = stride / 32;
  s.q.assign(n * stride, 0);
  s.inv_scale.assign(n * nb, 0.0f);
  for (size_t i = 0; i < n; ++i) {
    const float* xr = x + i * cols;
    for (size_t b = 0; b < nb; ++b)  // the last block may be partly padding (zeros)
      s.inv_scale[i * nb + b] = QuantizeActivationsInt8(xr + 32 * b, std::min<size_t>(32, cols - 32 * b),
                                                        s.q.data() + i * stride + 32 * b);
  }
  a.q = s.q.data();
  a.inv_scale = s.inv_scale.data();
}
void PrepareInt8Sums(const QuantizedMatrix& w, const float* x, ActivationScratch& s, PreparedActivations& a) {
  PrepareInt8Blocks32(w, x, s, a);
  FillSubSums(s, a);
}

// f32, bf16, bf16c: x copied to rows of padded_cols floats, zero padded.
void PrepareFloat(const QuantizedMatrix& w, const float* x, ActivationScratch& s, PreparedActivations& a) {
  s.xf.assign(a.n * a.stride, 0.0f);
  for (size_t i = 0; i < a.n; ++i) std::memcpy(s.xf.data() + i * a.stride, x + i * w.cols(), w.cols() * 4);
  a.xf = s.xf.data();
}

// 4-bit activations (activations.h QuantizeActivationsInt4): the codes of each row with
// one unit u per row, in the form the format's kernel reads: ternary per row (1/s_x = u,
// sum q); int4, int8 and q6 per block of 32 (every block's 1/s_b = u) with their sums;
// the float formats the values q * u. The integer dots stay exact (|q| <= 15).
void PrepareInt4Activations(const QuantizedMatrix& w, const float* x, bool gaussian, ActivationScratch& s,
                            PreparedActivations& a) {
  const size_t n = a.n, cols = w.cols(), stride = a.stride, nb = stride / 32;
  s.q.assign(n * stride, 0);
  s.inv_scale.resize(n * nb + n);  // per block, then per row
  float* unit = s.inv_scale.data() + n * nb;
  for (size_t i = 0; i < n; ++i) unit[i] = QuantizeActivationsInt4(x + i * cols, cols, gaussian, s.q.data() + i * stride);
  a.q = s.q.data();
  switch (w.format()) {
    case WeightFormat::kTernary:
      s.q_sum.resize(n);
      for (size_t i = 0; i < n; ++i) {
        int32_t sum = 0;
        for (size_t c = 0; c < cols; ++c) sum += s.q[i * stride + c];
        s.q_sum[i] = sum;
      }
      a.q_sum = s.q_sum.data();
      a.inv_scale = unit;
      return;
    case WeightFormat::kInt4:
    case WeightFormat::kInt8:
    case WeightFormat::kQ6:
      for (size_t i = 0; i < n; ++i) std::fill(s.inv_scale.begin() + i * nb, s.inv_scale.begin() + (i + 1) * nb, unit[i]);
      a.inv_scale = s.inv_scale.data();
      if (w.format() == WeightFormat::kInt4)
        FillGroupSums(w, s, a);
      else
        FillSubSums(s, a);
      return;
    default:
      s.xf.assign(n * stride, 0.0f);
      for (size_t i = 0; i < n; ++i)
        for (size_t c = 0; c < cols; ++c) s.xf[i * stride + c] = float(s.q[i * stride + c]) * unit[i];
      a.xf = s.xf.data();
  }
}

using RowKernel = void (*)(const QuantizedMatrix&, const PreparedActivations&, size_t, size_t,
                           const MatMulOutput&);

// What MatMul runs for one weight format: the activation form its kernel reads, and its
// row kernel for the target Highway chose for this CPU (looked up once per MatMul).
struct FormatKernel {
  WeightFormat format;
  void (*prepare)(const QuantizedMatrix& w, const float* x, ActivationScratch& s, PreparedActivations& a);
  RowKernel (*rows)();
};

// The kernels' side of the format table (formats/format_traits.h): one row per format.
// Adding a format adds its row kernel above (exported per target) and its row here.
const FormatKernel kFormatKernels[] = {
    {WeightFormat::kTernary, PrepareInt8Rows, [] { return RowKernel(&HWY_DYNAMIC_DISPATCH(TernaryRows)); }},
    {WeightFormat::kInt4, PrepareInt8Blocks, [] { return RowKernel(&HWY_DYNAMIC_DISPATCH(Int4Rows)); }},
    {WeightFormat::kQ6, PrepareInt8Sums, [] { return RowKernel(&HWY_DYNAMIC_DISPATCH(Q6Rows)); }},
    {WeightFormat::kInt8, PrepareInt8Sums, [] { return RowKernel(&HWY_DYNAMIC_DISPATCH(Int8Rows)); }},
    {WeightFormat::kBF16, PrepareFloat, [] { return RowKernel(&HWY_DYNAMIC_DISPATCH(BF16Rows)); }},
    {WeightFormat::kBF16C, PrepareFloat, [] { return RowKernel(&HWY_DYNAMIC_DISPATCH(BF16CRows)); }},
    {WeightFormat::kF32, PrepareFloat, [] { return RowKernel(&HWY_DYNAMIC_DISPATCH(F32Rows)); }},
};

const FormatKernel& KernelFor(WeightFormat f) {
  for (const FormatKernel& k : kFormatKernels)
    if (k.format == f) return k;
  throw std::invalid_argument(std::string("matmul: no kernel for format ") + FormatName(f));
}

}  // namespace

void MatMul(const QuantizedMatrix& w, const float* x, size_t n, float* y, ThreadPool& pool, ActivationQuant aq) {
  if (n == 0 || w.rows() == 0) return;
  thread_local ActivationScratch scratch;
  // nano is two dependent products (V^T, then U), each split over the pool: its own driver,
  // on float inputs (a 4-bit-activation model's: the dequantized codes).
  if (w.format() == WeightFormat::kNano) {
    if (aq == ActivationQuant::kFormat) return NanoMatMul(w, x, n, y, pool);
    const size_t cols = w.cols();
    scratch.q.resize(cols);
    scratch.xf.resize(n * cols);
    for (size_t i = 0; i < n; ++i) {
      const float u = QuantizeActivationsInt4(x + i * cols, cols, aq == ActivationQuant::kInt4Gaussian, scratch.q.data());
      for (size_t c = 0; c < cols; ++c) scratch.xf[i * cols + c] = float(scratch.q[c]) * u;
    }
    return NanoMatMul(w, scratch.xf.data(), n, y, pool);
  }
  const FormatKernel& kernel = KernelFor(w.format());
  PreparedActivations a;
  a.n = n;
  a.stride = w.padded_cols();
  if (aq == ActivationQuant::kFormat)
    kernel.prepare(w, x, scratch, a);
  else
    PrepareInt4Activations(w, x, aq == ActivationQuant::kInt4Gaussian, scratch, a);
  const RowKernel rows_kernel = kernel.rows();
  const MatMulOutput out{y, w.rows()};
  const size_t rows = w.rows();
  // Enough tasks to balance, each at least 16 rows so the per-task overhead stays small;
  // tasks of a tiled format start on a tile.
  const size_t unit = Traits(w.format()).tiled ? kTileRows : 1;
  const size_t units = (rows + unit - 1) / unit;
  const size_t ntasks = std::max<size_t>(1, std::min(pool.num_threads() * 8, rows / 16));
  const size_t per_task = (units + ntasks - 1) / ntasks * unit;
  pool.Run(ntasks, [&](size_t task, size_t /*thread*/) {
    const size_t r0 = task * per_task, r1 = std::min(rows, r0 + per_task);
    if (r0 >= r1) return;
    rows_kernel(w, a, r0, r1, out);
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

void HeadBlockDotsForTest(const QuantizedMatrix& w, const int8_t* q, int32_t* out) {
  if (w.format() != WeightFormat::kInt8 && w.format() != WeightFormat::kQ6)
    throw std::invalid_argument("head_block_dots: q is " + std::string(FormatName(w.format())) +
                                ", expected int8 or q6");
  std::vector<int8_t> padded(w.padded_cols(), 0);
  std::memcpy(padded.data(), q, w.cols());
  std::vector<int32_t> sums(w.padded_cols() / kQ6SubCols, 0);
  for (size_t c = 0; c < w.cols(); ++c) sums[c / kQ6SubCols] += q[c];
  const size_t nb32 = w.padded_cols() / 32;
  std::vector<int32_t> tiled(TileCount(w.rows()) * nb32 * kTileRows);
  HWY_DYNAMIC_DISPATCH(HeadBlockDots)(w, padded.data(), sums.data(), tiled.data());
  for (size_t r = 0; r < w.rows(); ++r)
    for (size_t b = 0; b < nb32; ++b) out[r * nb32 + b] = tiled[(r / kTileRows * nb32 + b) * kTileRows + r % kTileRows];
}

}  // namespace ternlm
#endif  // HWY_ONCE
