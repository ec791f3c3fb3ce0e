// ternary codec: the 16-row tiles of ternary.h ("packed", stored as in memory) plus the
// per-row output multipliers ("row_multiplier"); and the plain pack_ternary layout.
#include "formats/ternary.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "formats/codec_util.h"
#include "formats/format_traits.h"

namespace ternlm {

void TernarySetRow(uint8_t* data, size_t padded_cols, size_t r, const int8_t* t, size_t n) {
  for (size_t c = 0; c < n; ++c) TernarySetCode(data, padded_cols, r, c, unsigned(t[c] + 1));
}

bool TernaryGetRow(const uint8_t* data, size_t padded_cols, size_t r, size_t n, int8_t* out) {
  bool ok = true;
  for (size_t c = 0; c < n; ++c) {
    const unsigned v = TernaryCode(data, padded_cols, r, c);
    ok &= v != 3;
    out[c] = int8_t(int(v) - 1);
  }
  return ok;
}

void PackTernary(const int8_t* t, size_t n, uint8_t* out) {
  for (size_t j = 0; j < PackedTernaryBytes(n); ++j) {
    unsigned byte = 0;
    for (size_t k = 0; k < 4; ++k) {
      const size_t i = 4 * j + k;
      const unsigned code = i < n ? unsigned(t[i] + 1) & 3u : 1u;  // padding: a zero weight
      byte |= code << (2 * k);
    }
    out[j] = uint8_t(byte);
  }
}

size_t UnpackTernary(const uint8_t* packed, size_t n, int8_t* out) {
  size_t first_bad = n;
  for (size_t i = 0; i < n; ++i) {
    const unsigned code = (packed[i / 4] >> (2 * (i % 4))) & 3u;
    if (code == 3 && first_bad == n) first_bad = i;
    out[i] = int8_t(int(code) - 1);
  }
  return first_bad;
}

namespace {

size_t TernaryRowBytes(size_t padded_cols, int) { return padded_cols / 4; }
size_t TernaryDataBytes(size_t rows, size_t padded_cols, int) { return TileCount(rows) * TernaryTileBytes(padded_cols); }

void TernaryBuffers(const QuantizedMatrix& m, std::vector<BufferView>* out) {
  out->push_back({"packed", "uint8", TernaryDataBytes(m.rows(), m.padded_cols(), 0), m.data()});
  out->push_back({"row_multiplier", "float32", m.rows(), m.row_multiplier()});
}

QuantizedMatrix TernaryFromBuffers(size_t rows, size_t cols, int, StoredBuffers& in) {
  const size_t n = TernaryDataBytes(rows, TernaryPaddedCols(cols), 0);
  const void* packed = in.Take("packed", "uint8", n);
  const void* mult = in.Take("row_multiplier", "float32", rows);
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kTernary, rows, cols, 0);
  std::memcpy(m.mutable_data(), packed, n);
  std::memcpy(m.mutable_row_multiplier(), mult, rows * 4);
  // One pass over the bytes finds any 2-bit field 3 (both bits set); only then are rows
  // decoded, to name the first bad one. Padding bytes are 0.
  uint8_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad |= uint8_t(m.data()[i] & (m.data()[i] >> 1));
  if (bad & 0x55) {
    std::vector<int8_t> row(m.cols());
    for (size_t r = 0; r < rows; ++r)
      if (!TernaryGetRow(m.data(), m.padded_cols(), r, m.cols(), row.data()))
        throw std::invalid_argument("from_buffers: buffer 'packed' row " + std::to_string(r) +
                                    " holds the invalid 2-bit code 3");
  }
  CheckFiniteValues("from_buffers: buffer 'row_multiplier'", m.row_multiplier(), rows);
  return m;
}

// Absmean per tensor: s_w from the scan's sum of |w| (the same float for every row range).
void TernaryQuantizeRows(QuantizedMatrix& m, const float* w, size_t r0, size_t r1, const QuantizeScan& s) {
  const size_t cols = m.cols();
  const float mean = float(s.abs_sum / double(s.count));
  const float s_w = 1.0f / std::max(mean, 1e-5f);
  std::vector<int8_t> t(cols);
  for (size_t r = r0; r < r1; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      const float v = std::nearbyint(w[(r - r0) * cols + c] * s_w);
      t[c] = int8_t(std::min(1.0f, std::max(-1.0f, v)));
    }
    TernarySetRow(m.mutable_data(), m.padded_cols(), r, t.data(), cols);
    m.mutable_row_multiplier()[r] = 1.0f / s_w;
  }
}

void TernaryDequantizeRow(const QuantizedMatrix& m, size_t r, float* out) {
  const float mult = m.row_multiplier()[r];
  for (size_t c = 0; c < m.cols(); ++c) out[c] = float(int(TernaryCode(m.data(), m.padded_cols(), r, c)) - 1) * mult;
}

void TernaryCopyRow(QuantizedMatrix& dst, size_t d, const QuantizedMatrix& src, size_t s) {
  for (size_t c = 0; c < src.cols(); ++c)
    TernarySetCode(dst.mutable_data(), dst.padded_cols(), d, c, TernaryCode(src.data(), src.padded_cols(), s, c));
}

QuantizedMatrix TernaryStackRows(const std::vector<RowRange>& ranges) { return StackRowsByCopy(ranges, TernaryCopyRow); }

}  // namespace

extern const FormatTraits kTernaryTraits = {
    WeightFormat::kTernary, "ternary", nullptr, /*tiled=*/true, /*grouped=*/false,
    TernaryPaddedCols, TernaryRowBytes, TernaryDataBytes, /*has_row_multiplier=*/true, /*has_exceptions=*/false,
    TernaryBuffers, TernaryFromBuffers,
    ScanKind::kAbsSum, /*quantize_begin=*/nullptr, TernaryQuantizeRows, /*quantize_whole=*/nullptr,
    TernaryDequantizeRow, TernaryStackRows,
};

QuantizedMatrix FromTernary(const int8_t* t, size_t rows, size_t cols, const float* mult) {
  CheckShape("from_ternary", rows, cols);
  for (size_t i = 0; i < rows * cols; ++i)
    if (t[i] < -1 || t[i] > 1)
      throw std::invalid_argument("from_ternary: t must hold only -1, 0, 1; got " + std::to_string(int(t[i])) +
                                  " at flat index " + std::to_string(i));
  CheckFiniteValues("from_ternary: row_multiplier", mult, rows);
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kTernary, rows, cols, 0);
  for (size_t r = 0; r < rows; ++r) TernarySetRow(m.mutable_data(), m.padded_cols(), r, t + r * cols, cols);
  std::memcpy(m.mutable_row_multiplier(), mult, rows * 4);
  return m;
}

}  // namespace ternlm
