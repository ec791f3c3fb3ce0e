// nano codec: the bit planes of U and V and the fp16 scales of nano.h, stored as in memory
// (four buffers), FromNano (a factorization computed elsewhere: python/ternlm/nano.py), and
// the row decode. There is no Quantize: the factorization needs calibration activations
// and an iterative solver, which live in Python.
#include "formats/nano.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "formats/codec_util.h"
#include "formats/format_traits.h"
#include "formats/half.h"

namespace ternlm {

void CheckNanoRank(const char* fn, size_t rows, size_t cols, int rank) {
  if (rank < 1 || size_t(rank) > kNanoMaxRank)
    throw std::invalid_argument(std::string(fn) + ": nano rank (group_size) must be in [1, " +
                                std::to_string(kNanoMaxRank) + "], got " + std::to_string(rank));
  if (cols > kNanoMaxCols || rows > kNanoMaxCols)
    throw std::invalid_argument(std::string(fn) + ": nano shape [" + std::to_string(rows) + ", " +
                                std::to_string(cols) + "] is too large (at most " +
                                std::to_string(kNanoMaxCols) + " rows and columns)");
}

namespace {

size_t NanoRowBytes(size_t, int rank) { return NanoPaddedRank(size_t(rank)) / 8; }
size_t NanoDataBytes(size_t rows, size_t padded_cols, int rank) {
  return NanoLayout(rows, padded_cols, size_t(rank)).total;
}

NanoLayout LayoutOf(const QuantizedMatrix& m) {
  return NanoLayout(m.rows(), m.padded_cols(), size_t(m.group_size()));
}

void NanoBuffers(const QuantizedMatrix& m, std::vector<BufferView>* out) {
  const NanoLayout l = LayoutOf(m);
  out->push_back({"v_bits", "uint8", l.v_bytes, m.data() + l.v_off});
  out->push_back({"u_bits", "uint8", l.u_bytes, m.data() + l.u_off});
  out->push_back({"s_in", "uint16", m.cols(), m.data() + l.s_in_off});
  out->push_back({"s_out", "uint16", m.rows(), m.data() + l.s_out_off});
}

// Rows of `bits` (row_bytes each) whose bits at positions >= used are set: the padding must
// be 0 so that a matrix has one stored form (the kernels would read it as -1 times a zero
// activation, so it changes no result, but a file carrying it is damaged).
void CheckPaddingBits(const char* buffer, const uint8_t* bits, size_t nrows, size_t row_bytes, size_t used) {
  if (used == row_bytes * 8) return;
  for (size_t r = 0; r < nrows; ++r) {
    const uint8_t* row = bits + r * row_bytes;
    for (size_t i = used; i < row_bytes * 8; ++i)
      if (NanoBit(row, i))
        throw std::invalid_argument(std::string("from_buffers: buffer '") + buffer + "' row " + std::to_string(r) +
                                    " has padding bit " + std::to_string(i) + " set (only the first " +
                                    std::to_string(used) + " bits of a row may be set)");
  }
}

QuantizedMatrix NanoFromBuffers(size_t rows, size_t cols, int rank, StoredBuffers& in) {
  CheckNanoRank("from_buffers", rows, cols, rank);
  const NanoLayout l(rows, NanoPaddedCols(cols), size_t(rank));
  const void* v = in.Take("v_bits", "uint8", l.v_bytes);
  const void* u = in.Take("u_bits", "uint8", l.u_bytes);
  const void* s_in = in.Take("s_in", "uint16", cols);
  const void* s_out = in.Take("s_out", "uint16", rows);
  CheckHalvesFinite("from_buffers: buffer 's_in'", s_in, cols);
  CheckHalvesFinite("from_buffers: buffer 's_out'", s_out, rows);
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kNano, rows, cols, rank);
  uint8_t* d = m.mutable_data();
  std::memcpy(d + l.v_off, v, l.v_bytes);
  std::memcpy(d + l.u_off, u, l.u_bytes);
  std::memcpy(d + l.s_in_off, s_in, 2 * cols);
  std::memcpy(d + l.s_out_off, s_out, 2 * rows);
  CheckPaddingBits("v_bits", d + l.v_off, size_t(rank), m.padded_cols() / 8, cols);
  CheckPaddingBits("u_bits", d + l.u_off, rows, NanoPaddedRank(size_t(rank)) / 8, size_t(rank));
  return m;
}

void NanoQuantize(QuantizedMatrix&, const WeightRows&) {
  throw std::invalid_argument(
      "quantize: nano weights come from a factorization with a bit budget: use "
      "ternlm.quantize(w, 'nano:0.8') (python/ternlm/nano.py) or ternlm.from_nano");
}

// Row r as f32: s_out[r] * float(sum_k U[r, k] V[c, k]) * s_in[c].
void NanoDequantizeRow(const QuantizedMatrix& m, size_t r, float* out) {
  const NanoLayout l = LayoutOf(m);
  const size_t rank = size_t(m.group_size()), vrow = m.padded_cols() / 8;
  const uint8_t* u = m.data() + l.u_off + r * (NanoPaddedRank(rank) / 8);
  const uint8_t* v = m.data() + l.v_off;
  uint16_t h;
  std::memcpy(&h, m.data() + l.s_out_off + 2 * r, 2);
  const float s_out = F32FromF16(h);
  for (size_t c = 0; c < m.cols(); ++c) {
    int sum = 0;
    for (size_t k = 0; k < rank; ++k) sum += NanoBit(u, k) == NanoBit(v + k * vrow, c) ? 1 : -1;
    std::memcpy(&h, m.data() + l.s_in_off + 2 * c, 2);
    out[c] = s_out * float(sum) * F32FromF16(h);
  }
}

// Only whole-matrix copies (SliceRows(m, 0, rows)): the rows of U V^T share V.
QuantizedMatrix NanoStackRows(const std::vector<RowRange>& ranges) {
  const QuantizedMatrix& a = *ranges[0].m;
  if (ranges.size() != 1 || ranges[0].r0 != 0 || ranges[0].r1 != a.rows())
    throw std::invalid_argument("nano matrices cannot be stacked or cut by rows (U V^T shares V across rows); "
                                "keep them as separate matrices");
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kNano, a.rows(), a.cols(), a.group_size());
  std::memcpy(m.mutable_data(), a.data(), NanoDataBytes(a.rows(), a.padded_cols(), a.group_size()));
  return m;
}

}  // namespace

extern const FormatTraits kNanoTraits = {
    WeightFormat::kNano, "nano", nullptr, /*tiled=*/false, /*grouped=*/false,
    NanoPaddedCols, NanoRowBytes, NanoDataBytes, /*has_row_multiplier=*/false, /*has_exceptions=*/false,
    NanoBuffers, NanoFromBuffers,
    ScanKind::kNone, /*quantize_begin=*/nullptr, /*quantize_rows=*/nullptr, NanoQuantize,
    NanoDequantizeRow, NanoStackRows, /*low_rank=*/true,
};

QuantizedMatrix FromNano(const int8_t* u, const int8_t* v, const float* s_out, const float* s_in, size_t rows,
                         size_t cols, size_t rank) {
  CheckShape("from_nano", rows, cols);
  CheckNanoRank("from_nano", rows, cols, rank > kNanoMaxRank ? 0 : int(rank));
  CheckFiniteValues("from_nano: s_out", s_out, rows);
  CheckFiniteValues("from_nano: s_in", s_in, cols);
  for (size_t i = 0; i < rows * rank; ++i)
    if (u[i] != 1 && u[i] != -1)
      throw std::invalid_argument("from_nano: u must hold only -1 and 1; got " + std::to_string(int(u[i])) +
                                  " at flat index " + std::to_string(i));
  for (size_t i = 0; i < cols * rank; ++i)
    if (v[i] != 1 && v[i] != -1)
      throw std::invalid_argument("from_nano: v must hold only -1 and 1; got " + std::to_string(int(v[i])) +
                                  " at flat index " + std::to_string(i));
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kNano, rows, cols, int(rank));
  const NanoLayout l = LayoutOf(m);
  uint8_t* d = m.mutable_data();
  const size_t vrow = m.padded_cols() / 8, urow = NanoPaddedRank(rank) / 8;
  for (size_t c = 0; c < cols; ++c)
    for (size_t k = 0; k < rank; ++k) NanoSetBit(d + l.v_off + k * vrow, c, v[c * rank + k] > 0);
  for (size_t r = 0; r < rows; ++r)
    for (size_t k = 0; k < rank; ++k) NanoSetBit(d + l.u_off + r * urow, k, u[r * rank + k] > 0);
  auto put_halves = [](const char* what, const float* s, size_t n, uint8_t* dst) {
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = F16FromF32(s[i]);
      if ((h & 0x7C00u) == 0x7C00u)
        throw std::invalid_argument(std::string("from_nano: ") + what + "[" + std::to_string(i) + "] = " +
                                    std::to_string(s[i]) + " overflows fp16");
      std::memcpy(dst + 2 * i, &h, 2);
    }
  };
  put_halves("s_out", s_out, rows, d + l.s_out_off);
  put_halves("s_in", s_in, cols, d + l.s_in_off);
  return m;
}

}  // namespace ternlm
