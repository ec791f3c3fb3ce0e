// bf16 codec: the 16-row tiles of bf16.h, stored as they are in memory ("weight").
#include "formats/bf16.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "formats/codec_util.h"
#include "formats/format_traits.h"
#include "formats/half.h"

namespace ternlm {

void CheckBF16Finite(const char* what, const uint16_t* bits, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if ((bits[i] & 0x7F80u) == 0x7F80u)
      throw std::invalid_argument(std::string(what) + " Inf or NaN at flat index " + std::to_string(i));
}

namespace {

size_t BF16RowBytes(size_t padded_cols, int) { return padded_cols * 2; }
size_t BF16DataBytes(size_t rows, size_t padded_cols, int) { return TileCount(rows) * BF16TileBytes(padded_cols); }

uint16_t* Words(QuantizedMatrix& m) { return reinterpret_cast<uint16_t*>(m.mutable_data()); }
const uint16_t* Words(const QuantizedMatrix& m) { return reinterpret_cast<const uint16_t*>(m.data()); }

void BF16Buffers(const QuantizedMatrix& m, std::vector<BufferView>* out) {
  out->push_back({"weight", "uint16", BF16DataBytes(m.rows(), m.padded_cols(), 0) / 2, m.data()});
}

// The same Inf/NaN check as FromBF16, over every stored word (padding included: a NaN
// there would reach the sums through a zero activation).
QuantizedMatrix BF16FromBuffers(size_t rows, size_t cols, int, StoredBuffers& in) {
  const size_t n = BF16DataBytes(rows, BF16PaddedCols(cols), 0) / 2;
  const void* weight = in.Take("weight", "uint16", n);
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kBF16, rows, cols, 0);
  std::memcpy(m.mutable_data(), weight, n * 2);
  CheckBF16Finite("from_buffers: buffer 'weight' holds", Words(m), n);
  return m;
}

void BF16QuantizeRows(QuantizedMatrix& m, const float* w, size_t r0, size_t r1, const QuantizeScan&) {
  uint16_t* o = Words(m);
  for (size_t r = r0; r < r1; ++r)
    for (size_t c = 0; c < m.cols(); ++c) o[BF16Index(m.padded_cols(), r, c)] = BF16FromF32(w[(r - r0) * m.cols() + c]);
}

void BF16DequantizeRow(const QuantizedMatrix& m, size_t r, float* out) {
  const uint16_t* b = Words(m);
  for (size_t c = 0; c < m.cols(); ++c) out[c] = F32FromBF16(b[BF16Index(m.padded_cols(), r, c)]);
}

void BF16CopyRow(QuantizedMatrix& dst, size_t d, const QuantizedMatrix& src, size_t s) {
  const uint16_t* a = Words(src);
  uint16_t* b = Words(dst);
  for (size_t c = 0; c < src.cols(); ++c) b[BF16Index(dst.padded_cols(), d, c)] = a[BF16Index(src.padded_cols(), s, c)];
}

QuantizedMatrix BF16StackRows(const std::vector<RowRange>& ranges) { return StackRowsByCopy(ranges, BF16CopyRow); }

}  // namespace

extern const FormatTraits kBF16Traits = {
    WeightFormat::kBF16, "bf16", "bfloat16", /*tiled=*/true, /*grouped=*/false,
    BF16PaddedCols, BF16RowBytes, BF16DataBytes, /*has_row_multiplier=*/false, /*has_exceptions=*/false,
    BF16Buffers, BF16FromBuffers,
    ScanKind::kNone, /*quantize_begin=*/nullptr, BF16QuantizeRows, /*quantize_whole=*/nullptr,
    BF16DequantizeRow, BF16StackRows,
};

QuantizedMatrix AllocateForBF16Bits(const char* fn, WeightFormat f, const uint16_t* bits, size_t rows,
                                    size_t cols) {
  CheckShape(fn, rows, cols);
  CheckBF16Finite((std::string(fn) + ": bits hold").c_str(), bits, rows * cols);
  return QuantizedMatrix::Allocate(f, rows, cols, 0);
}

QuantizedMatrix FromBF16(const uint16_t* bits, size_t rows, size_t cols) {
  QuantizedMatrix m = AllocateForBF16Bits("from_bf16", WeightFormat::kBF16, bits, rows, cols);
  uint16_t* o = Words(m);
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) o[BF16Index(m.padded_cols(), r, c)] = bits[r * cols + c];
  return m;
}

}  // namespace ternlm
