// What a weight format provides: one FormatTraits per WeightFormat, defined in the
// format's codec (formats/<format>.cc, beside the header drawing its layout), and one
// table (format_traits.cc) that Traits(WeightFormat) looks up. quantized_matrix.cc keeps only the
// generic storage and calls through this table; the kernels' side is the table of
// kernels/matmul.cc (activation prepare + row kernel per format).
//
// The codecs' rows (k<Format>Traits at the end of each formats/<format>.cc) look alike by
// design: one initializer per format, in the field order below.
//
// Adding a format touches: its WeightFormat value, its codec
// file (and layout header), one row of kFormatTraits, and its row of kernels/matmul.cc.
#pragma once
#include <cstddef>
#include <vector>

#include "formats/quantized_matrix.h"

namespace ternlm {

class StoredBuffers;  // formats/codec_util.h
class WeightRows;     // formats/quantize.h

// What quantize gathers over the whole matrix before it codes any row (FormatTraits::scan).
enum class ScanKind { kNone, kAbsSum, kRange };
struct QuantizeScan {
  double abs_sum = 0;    // kAbsSum: sum of |w| as double, added in flat (row-major) order
  float lo = 0, hi = 0;  // kRange: the smallest and largest weight
  size_t count = 0;      // rows * cols
};

// Rows [r0, r1) of one matrix: a piece of ConcatRows / SliceRows.
struct RowRange {
  const QuantizedMatrix* m;
  size_t r0, r1;
};

struct FormatTraits {
  WeightFormat format;
  const char* name;   // FormatName; ParseFormat accepts it
  const char* alias;  // a second name ParseFormat accepts, or nullptr
  bool tiled;         // rows stored in kTileRows-row tiles (formats/tiles.h); f32 is not
  bool grouped;       // takes a group_size (32, 64 or 128, dividing cols)

  // ---- sizes
  size_t (*padded_cols)(size_t cols);
  // Bytes of data() per row (QuantizedMatrix::row_bytes) and for a whole matrix.
  size_t (*row_bytes)(size_t padded_cols, int group);
  size_t (*data_bytes)(size_t rows, size_t padded_cols, int group);
  // Side storage QuantizedMatrix::Allocate adds: float32 row multipliers [rows] (ternary, int8),
  // exception row pointers [rows + 1] (bf16c).
  bool has_row_multiplier;
  bool has_exceptions;

  // ---- codec. m is always of this format; shapes and groups are checked by the caller.
  // The stored buffers after "layout_version" (views into m, or converted copies).
  void (*buffers)(const QuantizedMatrix& m, std::vector<BufferView>* out);
  // A matrix [rows, cols] (shape and group checked by the caller) from stored buffers,
  // taken by name from `in`. Every buffer is taken, its element count checked against the
  // shape, before the matrix is allocated, so an edited shape that the buffers do not back
  // never allocates; values are then validated with the checks the format's constructors
  // (FromInt4, FromBF16, ...) share. Throws std::invalid_argument naming the buffer.
  QuantizedMatrix (*from_buffers)(size_t rows, size_t cols, int group, StoredBuffers& in);
  // ---- quantize (formats/quantize.h drives these for f32, bf16 and fp16 weights alike).
  // The matrix-wide statistic the rows need, gathered over every weight before any row is
  // coded (QuantizeScan): none, the flat-order sum of |w| (ternary) or the range (int4).
  ScanKind scan;
  // Checks the scan before any row is coded (may throw std::invalid_argument); nullptr: none.
  void (*quantize_begin)(const QuantizeScan& s);
  // Rows [r0, r1) of m (fresh from Allocate) from finite f32 weights w [(r1 - r0) * cols],
  // row r0 first. Rows are coded independently and write only their own bytes, so calls on
  // disjoint row ranges may run at once. nullptr: the format codes the matrix whole.
  void (*quantize_rows)(QuantizedMatrix& m, const float* w, size_t r0, size_t r1, const QuantizeScan& s);
  // The whole matrix from its rows (bf16c: a tile's table depends on all of its rows; nano
  // refuses); nullptr when quantize_rows is set.
  void (*quantize_whole)(QuantizedMatrix& m, const WeightRows& w);
  // Row r < rows as f32 [cols], exactly as the kernels see it; allocates nothing.
  void (*dequantize_row)(const QuantizedMatrix& m, size_t r, float* out);
  // A new matrix holding the given ranges (of matrices of this format, equal cols and
  // group) one after the other.
  QuantizedMatrix (*stack_rows)(const std::vector<RowRange>& ranges);
  // A low-rank format (nano): group_size() holds the rank (checked by the codec, not as an
  // int4 group) and the rows are not independent, so stack_rows only copies a whole matrix
  // and the engine never fuses it with other projections.
  bool low_rank = false;
};

// Throws std::invalid_argument for a value outside WeightFormat.
const FormatTraits& Traits(WeightFormat f);
// Every format, in the table's order (the order messages list them).
const std::vector<const FormatTraits*>& AllFormats();

}  // namespace ternlm
