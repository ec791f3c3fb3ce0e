// f32 codec: plain row-major float32, each row padded with zeros to a multiple of 16
// columns (one 64-byte line); rows are not tiled. Stored as "weight" float32
// [rows * padded_cols].
#include <cstring>

#include "formats/codec_util.h"
#include "formats/format_traits.h"

namespace ternlm {
namespace {

size_t F32PaddedCols(size_t cols) { return (cols + 15) / 16 * 16; }
size_t F32RowBytes(size_t padded_cols, int) { return padded_cols * 4; }
size_t F32DataBytes(size_t rows, size_t padded_cols, int) { return rows * padded_cols * 4; }

void F32Buffers(const QuantizedMatrix& m, std::vector<BufferView>* out) {
  out->push_back({"weight", "float32", m.rows() * m.padded_cols(), m.data()});
}

QuantizedMatrix F32FromBuffers(size_t rows, size_t cols, int, StoredBuffers& in) {
  const size_t n = rows * F32PaddedCols(cols);
  const void* weight = in.Take("weight", "float32", n);
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kF32, rows, cols, 0);
  std::memcpy(m.mutable_data(), weight, n * 4);
  CheckFiniteValues("from_buffers: buffer 'weight'", reinterpret_cast<const float*>(m.data()), n);
  return m;
}

void F32QuantizeRows(QuantizedMatrix& m, const float* w, size_t r0, size_t r1, const QuantizeScan&) {
  for (size_t r = r0; r < r1; ++r)
    std::memcpy(m.mutable_data() + r * m.row_bytes(), w + (r - r0) * m.cols(), m.cols() * 4);
}

void F32DequantizeRow(const QuantizedMatrix& m, size_t r, float* out) {
  std::memcpy(out, m.data() + r * m.row_bytes(), m.cols() * 4);
}

// Untiled: StackRowsByCopy copies every row with one memcpy per range.
void F32CopyRow(QuantizedMatrix&, size_t, const QuantizedMatrix&, size_t) {}
QuantizedMatrix F32StackRows(const std::vector<RowRange>& ranges) { return StackRowsByCopy(ranges, F32CopyRow); }

}  // namespace

extern const FormatTraits kF32Traits = {
    WeightFormat::kF32, "f32", "float32", /*tiled=*/false, /*grouped=*/false,
    F32PaddedCols, F32RowBytes, F32DataBytes, /*has_row_multiplier=*/false, /*has_exceptions=*/false,
    F32Buffers, F32FromBuffers,
    ScanKind::kNone, /*quantize_begin=*/nullptr, F32QuantizeRows, /*quantize_whole=*/nullptr,
    F32DequantizeRow, F32StackRows,
};

}  // namespace ternlm
