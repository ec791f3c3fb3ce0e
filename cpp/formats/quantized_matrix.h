// QuantizedMatrix: a weight matrix W [rows = out, cols = in] stored in one of
// ternlm's formats, ready for MatMul (kernels/matmul.h). Each format's layout is drawn
// in its own header under formats/ (ternary.h, int4.h, int8.h, q6.h, bf16.h, bf16c.h, nano.h; f32 is plain
// row-major with rows padded, see below), and everything format-specific lives in its
// codec (formats/<format>.cc) behind the table of formats/format_traits.h; this file and
// quantized_matrix.cc hold only the generic storage.
//
// CONTRACT (shared by kernels/, model/ and python/; keep the names):
//   WeightFormat           kF32, kBF16, kInt4, kTernary, kBF16C, kInt8, kQ6, kNano
//   QuantizedMatrix        format(), rows(), cols(), group_size(), nbytes(), bits_per_weight()
//   Quantize(...)          f32 [rows, cols] -> any format (numerics: see Quantize below;
//                          from bf16 / fp16 bits and over threads: QuantizeWeights, formats/quantize.h)
//   Dequantize / DequantizeRow
//   FromTernary(...)       int8 {-1,0,1} + per-row output multiplier (already-ternary checkpoints)
//   FromInt4(...)          q uint8 [rows, cols] in [0,15] + fp16 scale/min per group (GGUF Q4_1, lossless)
//   FromBF16 / FromBF16C   bf16 bit patterns [rows, cols] (lossless)
//   FromQ6(...)            6-bit codes + int8 sub-block scales + fp16 super-block scales (GGUF Q6_K, lossless)
//   ConcatRows / SliceRows stack matrices with equal cols and format (fused q/k/v, gate/up), cut rows
//   Buffers()/FromBuffers  the raw arrays, for save/load without conversion
//
// Stored buffers (layout version kLayoutVersion = 2, the only one read; every buffer
// 64-byte aligned; tiles are kTileRows = 16 rows, formats/tiles.h):
//   all formats  "layout_version" uint32 [1]             = 2
//   f32          "weight"  float32 [rows * padded_cols]   padded_cols = round_up(cols, 16)
//   bf16         "weight"  uint16  [round_up(rows, 16) * padded_cols] padded_cols = round_up(cols, 32),
//                                  bf16 bits in 16-row tiles, bf16.h
//   int4         "q4"      uint8   [round_up(rows, 16) * padded_cols/2] padded_cols = round_up(cols, 32) = cols,
//                                  16-row tiles, int4.h (stored layout); in memory q4/scale/min
//                                  are interleaved per group (int4.h, in-memory layout)
//                "scale"   uint16  [round_up(rows, 16) * padded_cols/group] fp16 bits, tile order
//                "min"     uint16  [round_up(rows, 16) * padded_cols/group] fp16 bits, tile order;
//                                  padding rows and groups are 0
//   ternary      "packed"  uint8   [round_up(rows, 16) * padded_cols/4] padded_cols = round_up(cols, 64),
//                                  16-row tiles, ternary.h
//                "row_multiplier" float32 [rows]
//   bf16c        "tiles"   uint8   [round_up(rows, 16) / 16 * BF16CTileBytes(padded_cols)]
//                                  padded_cols = round_up(cols, 32), bf16c.h: per-tile tables
//                                  of high bytes, low bytes and 4-bit codes
//                "exc_row_ptr" uint32 [rows + 1]   exceptions of row r: [ptr[r], ptr[r + 1])
//                "exc_col"     uint32 [n]          their columns, increasing within a row
//                "exc_value"   uint16 [n]          their bf16 bits (stored as +0.0 in the tiles)
//   int8         "q8"      uint8   [round_up(rows, 16) * padded_cols] padded_cols = round_up(cols, 32),
//                                  int8 bit patterns in [-127, 127], 16-row tiles, int8.h
//                "row_multiplier" float32 [rows]
//   q6           "tiles"   uint8   [round_up(rows, 16) / 16 * Q6TileBytes(padded_cols)]
//                                  padded_cols = round_up(cols, 32), q6.h: per 256-column
//                                  super-block 6-bit codes, int8 sub-block scales, fp16 scales
//   nano         "v_bits", "u_bits" uint8, "s_in", "s_out" uint16: the sign bits of V and U
//                                  and the fp16 scales of W ~ diag(s_out) U V^T diag(s_in),
//                                  rank r = group_size(); nano.h
// Padding weights are zero, so padded activations (zero) contribute nothing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ternlm {

enum class WeightFormat : int { kF32 = 0, kBF16 = 1, kInt4 = 2, kTernary = 3, kBF16C = 4, kInt8 = 5, kQ6 = 6, kNano = 7 };

const char* FormatName(WeightFormat f);  // "f32", "bf16", "int4", "ternary", "bf16c", "int8", "q6"
WeightFormat ParseFormat(const std::string& name);    // throws std::invalid_argument

constexpr uint32_t kLayoutVersion = 2;

// Owned, 64-byte aligned, zero-initialised bytes; large buffers come from the huge-page
// arena of formats/weight_arena.h.
class AlignedBytes {
 public:
  AlignedBytes() = default;
  explicit AlignedBytes(size_t size);
  AlignedBytes(AlignedBytes&& o) noexcept { *this = std::move(o); }
  AlignedBytes& operator=(AlignedBytes&& o) noexcept;
  AlignedBytes(const AlignedBytes&) = delete;
  AlignedBytes& operator=(const AlignedBytes&) = delete;
  ~AlignedBytes();
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  void* chunk_ = nullptr;  // the arena chunk, or nullptr for a heap allocation
};

// A read-only view of one stored buffer. dtype: "uint8", "uint16", "uint32", "float32".
// data may be unaligned (a memory-mapped file): read it with memcpy.
struct BufferView {
  std::string name;
  std::string dtype;
  size_t count = 0;           // elements
  const void* data = nullptr;
  std::shared_ptr<const void> owner;  // set when the view is a converted copy (int4)
};

// bf16c's exception lists (bf16c.h) in compressed-row form: row r's exceptions are entries
// [row_ptr[r], row_ptr[r + 1]) of col (increasing within a row) and value (bf16 bits).
struct BF16CExceptions {
  AlignedBytes row_ptr;  // uint32 [rows + 1]
  AlignedBytes col;      // uint32 [n]
  AlignedBytes value;    // uint16 [n]
};

class QuantizedMatrix {
 public:
  QuantizedMatrix() = default;
  QuantizedMatrix(QuantizedMatrix&&) = default;
  QuantizedMatrix& operator=(QuantizedMatrix&&) = default;
  QuantizedMatrix(const QuantizedMatrix&) = delete;
  QuantizedMatrix& operator=(const QuantizedMatrix&) = delete;

  WeightFormat format() const { return format_; }
  size_t rows() const { return rows_; }   // out
  size_t cols() const { return cols_; }   // in
  int group_size() const { return group_size_; }  // int4 group (32/64/128); nano: the rank; 0 otherwise
  size_t nbytes() const;                  // all stored bytes incl. scales and padding
  double bits_per_weight() const;         // nbytes*8 / (rows*cols)

  // Columns after padding (see the table above) and bytes per row of data() (tiled
  // formats interleave 16 rows per tile: a tile holds 16 * row_bytes(), bf16c plus its
  // table; int4 tiles hold their scales and mins too, int4.h in-memory layout).
  size_t padded_cols() const { return padded_cols_; }
  size_t row_bytes() const;
  size_t groups_per_row() const { return group_size_ ? padded_cols_ / size_t(group_size_) : 0; }

  // Raw storage for kernels. data(): "weight" / "packed" / int4 tiles with scales and mins
  // / bf16c tiles.
  const uint8_t* data() const { return data_.data(); }
  // ternary: the output multiplier of each row, float32 [rows] (1 / s_w after Quantize);
  // int8: the scale of each row.
  const float* row_multiplier() const { return reinterpret_cast<const float*>(row_multiplier_.data()); }
  // bf16c: the exception lists (see BF16CExceptions).
  const uint32_t* exc_row_ptr() const { return reinterpret_cast<const uint32_t*>(exceptions_.row_ptr.data()); }
  const uint32_t* exc_col() const { return reinterpret_cast<const uint32_t*>(exceptions_.col.data()); }
  const uint16_t* exc_value() const { return reinterpret_cast<const uint16_t*>(exceptions_.value.data()); }
  size_t num_exceptions() const { return exceptions_.row_ptr.size() ? exc_row_ptr()[rows_] : 0; }

  // Every stored buffer (names/dtypes in the table above), views into this matrix.
  std::vector<BufferView> Buffers() const;
  // Copies and validates (dtype, element count, values); throws std::invalid_argument
  // naming the buffer and the expected value.
  static QuantizedMatrix FromBuffers(WeightFormat f, size_t rows, size_t cols, int group_size,
                                     const std::vector<BufferView>& buffers);

  // Empty matrix of the given shape with zeroed storage (used by the constructors): data(),
  // and the row multipliers (ternary) or exception row pointers (bf16c, no exceptions).
  static QuantizedMatrix Allocate(WeightFormat f, size_t rows, size_t cols, int group_size);
  // Writable storage, for the codecs (formats/<format>.cc) filling a matrix they allocated.
  uint8_t* mutable_data() { return data_.data(); }
  float* mutable_row_multiplier() { return reinterpret_cast<float*>(row_multiplier_.data()); }
  uint32_t* mutable_exc_row_ptr() { return reinterpret_cast<uint32_t*>(exceptions_.row_ptr.data()); }
  // bf16c: allocates room for n exceptions (columns and values, zeroed).
  void AllocateExceptions(size_t n);
  uint32_t* mutable_exc_col() { return reinterpret_cast<uint32_t*>(exceptions_.col.data()); }
  uint16_t* mutable_exc_value() { return reinterpret_cast<uint16_t*>(exceptions_.value.data()); }

 private:
  WeightFormat format_ = WeightFormat::kF32;
  size_t rows_ = 0, cols_ = 0, padded_cols_ = 0;
  int group_size_ = 0;
  AlignedBytes data_;            // "weight" / int4 tiles (q4 + scale + min interleaved) / "packed" / "tiles"
  AlignedBytes row_multiplier_;  // ternary "row_multiplier"; empty otherwise
  BF16CExceptions exceptions_;   // bf16c "exc_row_ptr", "exc_col", "exc_value"; empty otherwise
};

// w: f32 [rows, cols].
//   ternary: absmean per tensor, s_w = 1 / max(mean|W|, 1e-5), T = clamp(round_half_even(W s_w),
//            -1, 1), row_multiplier = 1/s_w (the matmul numerics: ternary.h).
//   int4:    GGUF Q4_1 numerics with fp16 scale/min per group (int4.h).
//   int8:    symmetric per row, scale = max|w| / 127 (int8.h).
//   q6:      least-squares scale per 16 weights, coded as int8 x fp16 per 256 (q6.h).
//   bf16, bf16c: round to nearest even.  f32: exact.
// Throws std::invalid_argument on NaN/Inf, empty shape, or a group that is not 32/64/128
// or does not divide cols.
QuantizedMatrix Quantize(const float* w, size_t rows, size_t cols, WeightFormat f,
                         int group_size = 32);
void Dequantize(const QuantizedMatrix& w, float* out /*rows*cols*/);
// Allocates nothing (the embedding lookup calls it per token).
void DequantizeRow(const QuantizedMatrix& w, size_t row, float* out /*cols*/);

// Already-ternary weights: t int8 in {-1,0,1} [rows, cols];
// y[r] = int_dot(q, t[r]) / s_x * row_multiplier[r].
QuantizedMatrix FromTernary(const int8_t* t, size_t rows, size_t cols,
                            const float* row_multiplier /*rows*/);
// Lossless int4: q uint8 [rows, cols] in [0,15]; scale/min fp16 bits [rows, cols/group];
// w = scale*q + min.
QuantizedMatrix FromInt4(const uint8_t* q, const uint16_t* scale_f16, const uint16_t* min_f16,
                         size_t rows, size_t cols, int group_size);
// Lossless bf16: bits [rows, cols] (bf16 bit patterns, e.g. a checkpoint's BF16 tensor);
// throws std::invalid_argument on Inf/NaN.
QuantizedMatrix FromBF16(const uint16_t* bits, size_t rows, size_t cols);
// Lossless bf16c (bf16c.h) from bf16 bit patterns [rows, cols]; throws on Inf/NaN.
QuantizedMatrix FromBF16C(const uint16_t* bits, size_t rows, size_t cols);
// Lossless q6 (q6.h; GGUF Q6_K's numerics): u uint8 [rows, cols] in [0, 63], sc int8
// [rows, cols/16], d fp16 bits [rows, ceil(cols/256)]; w = d * sc * (u - 32). cols must be
// a multiple of 16; throws std::invalid_argument on u > 63 or a non-finite d.
QuantizedMatrix FromQ6(const uint8_t* u, const int8_t* sc, const uint16_t* d, size_t rows, size_t cols);
// nano (nano.h) from its factors: u int8 {-1, 1} [rows, rank], v int8 {-1, 1} [cols, rank],
// s_out [rows] and s_in [cols] finite float32, stored as fp16 (rounded to nearest even;
// a value that overflows fp16 is an error).
QuantizedMatrix FromNano(const int8_t* u, const int8_t* v, const float* s_out, const float* s_in, size_t rows,
                         size_t cols, size_t rank);
// Stacks matrices of equal cols, format and group row-wise (not nano: throws).
QuantizedMatrix ConcatRows(const std::vector<const QuantizedMatrix*>& parts);
// A copy of rows [r0, r1) of m (throws std::invalid_argument on an empty or outside range).
QuantizedMatrix SliceRows(const QuantizedMatrix& m, size_t r0, size_t r1);

}  // namespace ternlm
