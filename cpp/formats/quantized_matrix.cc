// QuantizedMatrix's generic storage and the format-independent entry points (FromBuffers,
// ConcatRows, SliceRows, DequantizeRow; Quantize is in formats/quantize.cc). Everything
// that depends on the format goes through its row of the table in formats/format_traits.h.
#include "formats/quantized_matrix.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "formats/codec_util.h"
#include "formats/format_traits.h"
#include "formats/weight_arena.h"

namespace ternlm {

// ---------------------------------------------------------------- names

const char* FormatName(WeightFormat f) { return Traits(f).name; }

WeightFormat ParseFormat(const std::string& name) {
  std::string names, low_rank;
  for (const FormatTraits* t : AllFormats()) {
    if (name == t->name || (t->alias && name == t->alias)) return t->format;
    std::string& list = t->low_rank ? low_rank : names;
    list += std::string(list.empty() ? "" : ", ") + "'" + t->name + "'";
  }
  // The low-rank formats (nano) are named apart: quantize() cannot make them alone (they
  // need a bit budget: ternlm.quantize(w, 'nano:0.8')).
  throw std::invalid_argument("format must be one of " + names + ", got '" + name + "'" +
                              (low_rank.empty() ? "" : "; or the low-rank " + low_rank + " (from a bit budget)"));
}

// ---------------------------------------------------------------- storage

AlignedBytes::AlignedBytes(size_t size) : size_(size) { data_ = ArenaAllocate(size, &chunk_); }

AlignedBytes& AlignedBytes::operator=(AlignedBytes&& o) noexcept {
  if (this != &o) {
    ArenaFree(data_, size_, chunk_);
    data_ = o.data_;
    size_ = o.size_;
    chunk_ = o.chunk_;
    o.data_ = nullptr;
    o.size_ = 0;
    o.chunk_ = nullptr;
  }
  return *this;
}

AlignedBytes::~AlignedBytes() { ArenaFree(data_, size_, chunk_); }

size_t QuantizedMatrix::row_bytes() const { return Traits(format_).row_bytes(padded_cols_, group_size_); }

size_t QuantizedMatrix::nbytes() const {
  return data_.size() + row_multiplier_.size() + exceptions_.row_ptr.size() + exceptions_.col.size() +
         exceptions_.value.size();
}

double QuantizedMatrix::bits_per_weight() const {
  return double(nbytes()) * 8.0 / (double(rows_) * double(cols_));
}

QuantizedMatrix QuantizedMatrix::Allocate(WeightFormat f, size_t rows, size_t cols, int group) {
  const FormatTraits& t = Traits(f);
  QuantizedMatrix m;
  m.format_ = f;
  m.rows_ = rows;
  m.cols_ = cols;
  m.group_size_ = t.grouped || t.low_rank ? group : 0;
  m.padded_cols_ = t.padded_cols(cols);
  m.data_ = AlignedBytes(t.data_bytes(rows, m.padded_cols_, m.group_size_));
  if (t.has_row_multiplier) m.row_multiplier_ = AlignedBytes(rows * 4);
  if (t.has_exceptions) m.exceptions_.row_ptr = AlignedBytes((rows + 1) * 4);  // all 0: no exceptions
  return m;
}

void QuantizedMatrix::AllocateExceptions(size_t n) {
  exceptions_.col = AlignedBytes(4 * n);
  exceptions_.value = AlignedBytes(2 * n);
}

static const uint32_t kLayoutVersionValue = kLayoutVersion;

std::vector<BufferView> QuantizedMatrix::Buffers() const {
  std::vector<BufferView> b;
  b.push_back({"layout_version", "uint32", 1, &kLayoutVersionValue});
  Traits(format_).buffers(*this, &b);
  return b;
}

QuantizedMatrix QuantizedMatrix::FromBuffers(WeightFormat f, size_t rows, size_t cols, int group,
                                             const std::vector<BufferView>& buffers) {
  const FormatTraits& t = Traits(f);
  CheckShape("from_buffers", rows, cols);
  if (t.grouped) CheckGroup("from_buffers", cols, group);
  if (t.low_rank) CheckNanoRank("from_buffers", rows, cols, group);
  StoredBuffers in(buffers, t.name);
  uint32_t version;
  std::memcpy(&version, in.Take("layout_version", "uint32", 1), 4);
  if (version == 1)
    throw std::invalid_argument("from_buffers: layout_version is 1, a layout this ternlm no longer reads "
                                "(expected " + std::to_string(kLayoutVersion) +
                                "); convert the model again from its source checkpoint");
  if (version != kLayoutVersion)
    throw std::invalid_argument("from_buffers: layout_version is " + std::to_string(version) + ", expected " +
                                std::to_string(kLayoutVersion));
  QuantizedMatrix m = t.from_buffers(rows, cols, t.grouped || t.low_rank ? group : 0, in);
  in.RejectUnknown();
  return m;
}

// ---------------------------------------------------------------- constructors

QuantizedMatrix SliceRows(const QuantizedMatrix& m, size_t r0, size_t r1) {
  if (r0 >= r1 || r1 > m.rows())
    throw std::invalid_argument("slice_rows: rows [" + std::to_string(r0) + ", " + std::to_string(r1) +
                                ") are not a non-empty range inside [0, " + std::to_string(m.rows()) + ")");
  return Traits(m.format()).stack_rows({{&m, r0, r1}});
}

QuantizedMatrix ConcatRows(const std::vector<const QuantizedMatrix*>& parts) {
  if (parts.empty()) throw std::invalid_argument("concat_rows: parts is empty");
  const QuantizedMatrix& a = *parts[0];
  std::vector<RowRange> ranges;
  for (size_t i = 0; i < parts.size(); ++i) {
    const QuantizedMatrix& p = *parts[i];
    if (p.format() != a.format() || p.cols() != a.cols() || p.group_size() != a.group_size())
      throw std::invalid_argument(
          "concat_rows: parts[" + std::to_string(i) + "] is " + FormatName(p.format()) + " [" +
          std::to_string(p.rows()) + ", " + std::to_string(p.cols()) + "] group " + std::to_string(p.group_size()) +
          ", expected " + FormatName(a.format()) + " [*, " + std::to_string(a.cols()) + "] group " +
          std::to_string(a.group_size()));
    ranges.push_back({&p, 0, p.rows()});
  }
  return Traits(a.format()).stack_rows(ranges);
}

// ---------------------------------------------------------------- dequantize

void DequantizeRow(const QuantizedMatrix& m, size_t r, float* out) {
  if (r >= m.rows())
    throw std::out_of_range("dequantize_row: row " + std::to_string(r) + " out of range [0, " +
                            std::to_string(m.rows()) + ")");
  Traits(m.format()).dequantize_row(m, r, out);
}

void Dequantize(const QuantizedMatrix& m, float* out) {
  const FormatTraits& t = Traits(m.format());
  for (size_t r = 0; r < m.rows(); ++r) t.dequantize_row(m, r, out + r * m.cols());
}

}  // namespace ternlm
