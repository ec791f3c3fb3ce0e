// int8 codec: the 16-row tiles of int8.h ("q8", stored as in memory) plus one f32 scale
// per row ("row_multiplier").
#include "formats/int8.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "formats/codec_util.h"
#include "formats/format_traits.h"

namespace ternlm {
namespace {

size_t Int8RowBytes(size_t padded_cols, int) { return padded_cols; }
size_t Int8DataBytes(size_t rows, size_t padded_cols, int) { return TileCount(rows) * Int8TileBytes(padded_cols); }

int8_t GetQ(const QuantizedMatrix& m, size_t r, size_t c) {
  return int8_t(m.data()[Int8ByteIndex(m.padded_cols(), r, c)]);
}
void SetQ(QuantizedMatrix& m, size_t r, size_t c, int8_t q) {
  m.mutable_data()[Int8ByteIndex(m.padded_cols(), r, c)] = uint8_t(q);
}

void Int8Buffers(const QuantizedMatrix& m, std::vector<BufferView>* out) {
  out->push_back({"q8", "uint8", Int8DataBytes(m.rows(), m.padded_cols(), 0), m.data()});
  out->push_back({"row_multiplier", "float32", m.rows(), m.row_multiplier()});
}

void CheckNoMinus128(const char* what, const uint8_t* q, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (q[i] == 0x80)
      throw std::invalid_argument(std::string(what) + " holds -128 at byte " + std::to_string(i) +
                                  " (int8 weights are in [-127, 127])");
}

QuantizedMatrix Int8FromBuffers(size_t rows, size_t cols, int, StoredBuffers& in) {
  const size_t n = Int8DataBytes(rows, Int8PaddedCols(cols), 0);
  const void* q8 = in.Take("q8", "uint8", n);
  const void* mult = in.Take("row_multiplier", "float32", rows);
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kInt8, rows, cols, 0);
  std::memcpy(m.mutable_data(), q8, n);
  std::memcpy(m.mutable_row_multiplier(), mult, rows * 4);
  CheckNoMinus128("from_buffers: buffer 'q8'", m.data(), n);
  CheckFiniteValues("from_buffers: buffer 'row_multiplier'", m.row_multiplier(), rows);
  return m;
}

// Symmetric per row: scale = max|w| / 127, q = round_half_even(w / scale).
void Int8QuantizeRows(QuantizedMatrix& m, const float* w, size_t r0, size_t r1, const QuantizeScan&) {
  const size_t cols = m.cols();
  for (size_t r = r0; r < r1; ++r) {
    const float* x = w + (r - r0) * cols;
    float amax = 0;
    for (size_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(x[c]));
    const float scale = amax / 127.0f;
    const float inv = scale > 0 ? 1.0f / scale : 0.0f;
    for (size_t c = 0; c < cols; ++c) {
      const float v = std::nearbyint(x[c] * inv);
      SetQ(m, r, c, int8_t(std::min(127.0f, std::max(-127.0f, v))));
    }
    m.mutable_row_multiplier()[r] = scale;
  }
}

void Int8DequantizeRow(const QuantizedMatrix& m, size_t r, float* out) {
  const float s = m.row_multiplier()[r];
  for (size_t c = 0; c < m.cols(); ++c) out[c] = s * float(GetQ(m, r, c));
}

void Int8CopyRow(QuantizedMatrix& dst, size_t d, const QuantizedMatrix& src, size_t s) {
  for (size_t c = 0; c < src.cols(); ++c) SetQ(dst, d, c, GetQ(src, s, c));
}

QuantizedMatrix Int8StackRows(const std::vector<RowRange>& ranges) { return StackRowsByCopy(ranges, Int8CopyRow); }

}  // namespace

extern const FormatTraits kInt8Traits = {
    WeightFormat::kInt8, "int8", nullptr, /*tiled=*/true, /*grouped=*/false,
    Int8PaddedCols, Int8RowBytes, Int8DataBytes, /*has_row_multiplier=*/true, /*has_exceptions=*/false,
    Int8Buffers, Int8FromBuffers,
    ScanKind::kNone, /*quantize_begin=*/nullptr, Int8QuantizeRows, /*quantize_whole=*/nullptr,
    Int8DequantizeRow, Int8StackRows,
};

}  // namespace ternlm
