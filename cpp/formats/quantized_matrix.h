// QuantizedMatrix: a weight matrix W [rows = out, cols = in] stored in one of
// ternlm's formats, ready for MatMul (kernels/matmul.h). The packed layout of
// each format is drawn in its own header under formats/ (ternary.h, int4.h);
// f32 is plain row-major with rows padded (see below).
//
// CONTRACT (shared by kernels/, model/ and python/; keep the names):
//   WeightFormat           kF32, kBF16, kInt4, kTernary, kBF16C
//   QuantizedMatrix        format(), rows(), cols(), group_size(), nbytes(), bits_per_weight()
//   Quantize(...)          f32 [rows, cols] -> any format (DESIGN.md §3 numerics)
//   Dequantize / DequantizeRow
//   FromTernary(...)       int8 {-1,0,1} + per-row output multiplier (already-ternary checkpoints)
//   FromInt4(...)          q uint8 [rows, cols] in [0,15] + fp16 scale/min per group (GGUF Q4_1, lossless)
//   ConcatRows(...)        stack matrices with equal cols and format (fused q/k/v, gate/up)
//   Buffers()/FromBuffers  the raw arrays, for save/load without conversion
//
// Stored buffers (layout version kLayoutVersion = 2; every buffer 64-byte aligned):
//   all formats  "layout_version" uint32 [1]             = 2 (1 is read too: see ternary.h)
//   f32          "weight"  float32 [rows * padded_cols]   padded_cols = round_up(cols, 16)
//   bf16         "weight"  uint16  [round_up(rows, 16) * padded_cols] padded_cols = round_up(cols, 32),
//                                  bf16 bits in 16-row tiles, bf16.h (layout 1: row-major, converted)
//   int4         "q4"      uint8   [round_up(rows, 16) * padded_cols/2] padded_cols = round_up(cols, 32) = cols,
//                                  16-row tiles, int4.h (layout 1: the row codec, converted);
//                                  in memory q4/scale/min are interleaved per group (int4.h, 3)
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
// Padding weights are zero, so padded activations (zero) contribute nothing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ternlm {

enum class WeightFormat : int { kF32 = 0, kBF16 = 1, kInt4 = 2, kTernary = 3, kBF16C = 4 };

const char* FormatName(WeightFormat f);               // "f32", "bf16", "int4", "ternary", "bf16c"
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
struct BufferView {
  std::string name;
  std::string dtype;
  size_t count = 0;           // elements
  const void* data = nullptr;
  std::shared_ptr<const void> owner;  // set when the view is a converted copy (int4)
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
  int group_size() const { return group_size_; }  // int4 group (32/64/128); 0 otherwise
  size_t nbytes() const;                  // all stored bytes incl. scales and padding
  double bits_per_weight() const;         // nbytes*8 / (rows*cols)

  // Columns after padding (see the table above) and bytes per row of data() (ternary, int4
  // and bf16 rows are interleaved in 16-row tiles: a tile holds 16 * row_bytes(); int4 tiles
  // hold their scales and mins too, int4.h layout 3).
  size_t padded_cols() const { return padded_cols_; }
  size_t row_bytes() const;

  // Raw storage for kernels. data(): "weight" / "packed" / int4 tiles with scales and mins.
  const uint8_t* data() const { return data_.data(); }
  const float* row_multiplier() const { return reinterpret_cast<const float*>(aux0_.data()); }
  size_t groups_per_row() const { return group_size_ ? padded_cols_ / group_size_ : 0; }
  // bf16c exceptions (bf16c.h): row r's are entries [exc_row_ptr()[r], exc_row_ptr()[r + 1]).
  const uint32_t* exc_row_ptr() const { return reinterpret_cast<const uint32_t*>(aux0_.data()); }
  size_t num_exceptions() const { return format_ == WeightFormat::kBF16C ? exc_row_ptr()[rows_] : 0; }
  const uint32_t* exc_col() const { return reinterpret_cast<const uint32_t*>(aux1_.data()); }
  const uint16_t* exc_value() const {
    return reinterpret_cast<const uint16_t*>(aux1_.data() + 4 * num_exceptions());
  }
  // bf16c: allocates the exception arrays for n entries (cols then values, in aux1).
  void AllocateExceptions(size_t n) { aux1_ = AlignedBytes(6 * n); }
  uint8_t* mutable_aux1() { return aux1_.data(); }

  // Every stored buffer (names/dtypes in the table above), views into this matrix.
  std::vector<BufferView> Buffers() const;
  // Copies and validates (dtype, element count, values); throws std::invalid_argument
  // naming the buffer and the expected value.
  static QuantizedMatrix FromBuffers(WeightFormat f, size_t rows, size_t cols, int group_size,
                                     const std::vector<BufferView>& buffers);

  // Empty matrix of the given shape with zeroed storage (used by the constructors).
  static QuantizedMatrix Allocate(WeightFormat f, size_t rows, size_t cols, int group_size);
  uint8_t* mutable_data() { return data_.data(); }
  uint8_t* mutable_aux0() { return aux0_.data(); }

 private:
  WeightFormat format_ = WeightFormat::kF32;
  size_t rows_ = 0, cols_ = 0, padded_cols_ = 0;
  int group_size_ = 0;
  AlignedBytes data_;  // "weight" / int4 tiles (q4 + scale + min interleaved) / "packed"
  AlignedBytes aux0_;  // ternary "row_multiplier"; bf16c "exc_row_ptr"
  AlignedBytes aux1_;  // bf16c "exc_col" then "exc_value"
};

// w: f32 [rows, cols]. Ternary: absmean per tensor (DESIGN §3), row_multiplier = 1/s_w.
// INT4: GGUF Q4_1 numerics with fp16 scale/min per group. BF16: round to nearest even.
// Throws std::invalid_argument on NaN/Inf, empty shape, or a group that is not 32/64/128
// or does not divide cols.
QuantizedMatrix Quantize(const float* w, size_t rows, size_t cols, WeightFormat f,
                         int group_size = 32);
void Dequantize(const QuantizedMatrix& w, float* out /*rows*cols*/);
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
// Row r of a bf16 or bf16c matrix as bf16 bits [cols] (bf16c: exceptions applied).
void BF16RowBits(const QuantizedMatrix& m, size_t r, uint16_t* out);
// Stacks matrices of equal cols, format and group row-wise.
QuantizedMatrix ConcatRows(const std::vector<const QuantizedMatrix*>& parts);
// A copy of rows [r0, r1) of m (throws std::invalid_argument on an empty or outside range).
QuantizedMatrix SliceRows(const QuantizedMatrix& m, size_t r0, size_t r1);

// IEEE half <-> float, round to nearest even (scalar; used off the hot path).
uint16_t F16FromF32(float f);
float F32FromF16(uint16_t h);
uint16_t BF16FromF32(float f);
inline float F32FromBF16(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

}  // namespace ternlm
