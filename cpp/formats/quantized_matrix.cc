// QuantizedMatrix storage, constructors (Quantize, FromTernary, FromInt4,
// ConcatRows, FromBuffers) and dequantization. Layouts: quantized_matrix.h.
#include "formats/quantized_matrix.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <thread>

#include "formats/bf16.h"
#include "formats/bf16c.h"
#include "formats/int4.h"
#include "formats/ternary.h"
#include "formats/weight_arena.h"

namespace ternlm {
namespace {

std::string Str(size_t v) { return std::to_string(v); }

size_t PaddedCols(WeightFormat f, size_t cols) {
  switch (f) {
    case WeightFormat::kF32: return (cols + 15) / 16 * 16;
    case WeightFormat::kBF16: return BF16PaddedCols(cols);
    case WeightFormat::kInt4: return Int4PaddedCols(cols);
    case WeightFormat::kTernary: return TernaryMatrixPaddedCols(cols);
    case WeightFormat::kBF16C: return BF16CPaddedCols(cols);
  }
  return cols;
}

void CheckShape(const char* fn, size_t rows, size_t cols) {
  if (rows == 0 || cols == 0)
    throw std::invalid_argument(std::string(fn) + ": shape must be non-empty, got [" + Str(rows) +
                                ", " + Str(cols) + "]");
  // Every stored size below is then far from overflowing size_t (and the uint32 counts of
  // bf16c exceptions from overflowing: see PackBF16C).
  if (rows > (size_t(1) << 31) || cols > (size_t(1) << 31) || rows * cols > (size_t(1) << 40))
    throw std::invalid_argument(std::string(fn) + ": shape [" + Str(rows) + ", " + Str(cols) +
                                "] is too large (at most 2^31 rows or columns and 2^40 weights)");
}

// memcpy that accepts an empty (possibly null) source.
void CopyBytes(void* dst, const void* src, size_t n) {
  if (n) std::memcpy(dst, src, n);
}

void CheckGroup(const char* fn, size_t cols, int group) {
  if (group != 32 && group != 64 && group != 128)
    throw std::invalid_argument(std::string(fn) + ": group_size must be 32, 64 or 128, got " +
                                std::to_string(group));
  if (cols % size_t(group) != 0)
    throw std::invalid_argument(std::string(fn) + ": group_size " + std::to_string(group) +
                                " does not divide cols = " + Str(cols));
}

void CheckFinite(const float* w, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(w[i]))
      throw std::invalid_argument("quantize: w has a non-finite value (" + std::to_string(w[i]) +
                                  ") at flat index " + Str(i));
  }
}

}  // namespace

// INT4 row r <-> the in-memory layout of int4.h: codes [cols], fp16 scale/min [cols / group].
static void SetInt4Row(QuantizedMatrix& m, size_t r, const uint8_t* q, const uint16_t* sc,
                       const uint16_t* mn) {
  const size_t pc = m.padded_cols(), group = size_t(m.group_size()), ng = m.cols() / group;
  uint8_t* d = m.mutable_data();
  for (size_t c = 0; c < m.cols(); ++c) {
    unsigned shift;
    uint8_t& byte = d[Int4ByteIndex(pc, group, r, c, &shift)];
    byte = uint8_t((byte & ~(15u << shift)) | (unsigned(q[c] & 15) << shift));
  }
  for (size_t g = 0; g < ng; ++g) {
    const size_t o = Int4ScaleByte(pc, group, r, g);
    std::memcpy(d + o, &sc[g], 2);
    std::memcpy(d + o + 32, &mn[g], 2);
  }
}

static void GetInt4Row(const QuantizedMatrix& m, size_t r, uint8_t* q, uint16_t* sc, uint16_t* mn) {
  const size_t pc = m.padded_cols(), group = size_t(m.group_size()), ng = m.cols() / group;
  const uint8_t* d = m.data();
  for (size_t c = 0; c < m.cols(); ++c) {
    unsigned shift;
    q[c] = (d[Int4ByteIndex(pc, group, r, c, &shift)] >> shift) & 15;
  }
  for (size_t g = 0; g < ng; ++g) {
    const size_t o = Int4ScaleByte(pc, group, r, g);
    std::memcpy(&sc[g], d + o, 2);
    std::memcpy(&mn[g], d + o + 32, 2);
  }
}

// INT4 stored buffers (layout 2: "q4" codes, "scale", "min" in tile order) <-> the
// in-memory tiles (layout 3), one group of one tile at a time.
static void Int4Interleave(QuantizedMatrix& m, const uint8_t* q4, const uint16_t* sc, const uint16_t* mn) {
  const size_t group = size_t(m.group_size()), gpr = m.groups_per_row(), gb = Int4GroupBytes(group);
  const size_t tiles = (m.rows() + kInt4TileRows - 1) / kInt4TileRows;
  uint8_t* d = m.mutable_data();
  for (size_t t = 0; t < tiles; ++t)
    for (size_t g = 0; g < gpr; ++g) {
      uint8_t* o = d + (t * gpr + g) * gb;
      std::memcpy(o, q4 + t * Int4CodeTileBytes(m.padded_cols()) + g * 8 * group, 8 * group);
      std::memcpy(o + 8 * group, sc + (t * gpr + g) * 16, 32);
      std::memcpy(o + 8 * group + 32, mn + (t * gpr + g) * 16, 32);
    }
}

static void Int4Deinterleave(const QuantizedMatrix& m, uint8_t* q4, uint16_t* sc, uint16_t* mn) {
  const size_t group = size_t(m.group_size()), gpr = m.groups_per_row(), gb = Int4GroupBytes(group);
  const size_t tiles = (m.rows() + kInt4TileRows - 1) / kInt4TileRows;
  const uint8_t* d = m.data();
  for (size_t t = 0; t < tiles; ++t)
    for (size_t g = 0; g < gpr; ++g) {
      const uint8_t* o = d + (t * gpr + g) * gb;
      std::memcpy(q4 + t * Int4CodeTileBytes(m.padded_cols()) + g * 8 * group, o, 8 * group);
      std::memcpy(sc + (t * gpr + g) * 16, o + 8 * group, 32);
      std::memcpy(mn + (t * gpr + g) * 16, o + 8 * group + 32, 32);
    }
}

// Tiles [t0, t1) of m from bits; their exceptions appended to exc_col / exc_value in row
// order, counts[r] = row r's number of exceptions.
static void PackBF16CTiles(QuantizedMatrix& m, const uint16_t* bits, size_t t0, size_t t1,
                           std::vector<uint32_t>& exc_col, std::vector<uint16_t>& exc_value, uint32_t* counts) {
  const size_t rows = m.rows(), cols = m.cols(), tb = BF16CTileBytes(m.padded_cols());
  for (size_t t = t0; t < t1; ++t) {
    uint8_t* tile = m.mutable_data() + t * tb;
    const size_t rb = 16 * t, re = std::min(rows, rb + 16);
    for (size_t k = 0; k < m.padded_cols() / 8; ++k)  // all codes 15: padding decodes to +0
      std::memset(tile + kBF16CTableBytes + 192 * k + 128, 0xFF, 64);
    size_t count[256] = {0};
    for (size_t r = rb; r < re; ++r)
      for (size_t c = 0; c < cols; ++c) ++count[bits[r * cols + c] >> 8];
    count[0x00] = count[0x7F] = count[0xFF] = 0;
    int code_of[256];
    std::fill(code_of, code_of + 256, -1);
    code_of[0] = kBF16CZeroCode;
    for (int k = 0; k < int(kBF16CZeroCode); ++k) {
      int best = -1;
      for (int b = 0; b < 256; ++b)
        if (count[b] > 0 && code_of[b] < 0 && (best < 0 || count[b] > count[best])) best = b;
      if (best < 0) break;
      tile[k] = uint8_t(best);
      code_of[best] = k;
    }
    for (size_t r = rb; r < re; ++r) {
      const size_t before = exc_col.size();
      for (size_t c = 0; c < cols; ++c) {
        const uint16_t v = bits[r * cols + c];
        int code = code_of[v >> 8];
        uint8_t lo = uint8_t(v & 0xFF);
        if (code < 0) {  // stored as +0.0, kept exactly in the exception list
          code = kBF16CZeroCode;
          lo = 0;
          exc_col.push_back(uint32_t(c));
          exc_value.push_back(v);
        }
        tile[BF16CLowByte(r - rb, c)] = lo;
        BF16CSetCode(tile, r - rb, c, unsigned(code));
      }
      counts[r] = uint32_t(exc_col.size() - before);
    }
  }
}

// BF16C (bf16c.h) from bf16 bits [rows, cols]: per tile, the 15 most frequent high bytes
// (ties: the smaller byte) get codes 0..14, code 15 is high byte 0x00; any other weight is
// an exception. High bytes 0x7F / 0xFF (|w| >= 2^127) never enter a table, so a table
// never decodes to Inf or NaN (checked by from_buffers). Tiles are packed in parallel
// (up to 8 threads) for large matrices.
static QuantizedMatrix PackBF16C(const uint16_t* bits, size_t rows, size_t cols) {
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kBF16C, rows, cols, 0);
  const size_t tiles = (rows + 15) / 16;
  const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t nthreads = std::min<size_t>({hw, 8, std::max<size_t>(1, rows * cols / (1u << 22)), tiles});
  std::vector<std::vector<uint32_t>> cols_of(nthreads);
  std::vector<std::vector<uint16_t>> values_of(nthreads);
  std::vector<uint32_t> counts(rows, 0);
  std::vector<std::exception_ptr> errors(nthreads);
  const auto part = [&](size_t i) {
    try {
      PackBF16CTiles(m, bits, tiles * i / nthreads, tiles * (i + 1) / nthreads, cols_of[i], values_of[i],
                     counts.data());
    } catch (...) {
      errors[i] = std::current_exception();
    }
  };
  std::vector<std::thread> workers;
  size_t inline_from = nthreads;
  for (size_t i = 1; i < nthreads && inline_from == nthreads; ++i) {
    try {
      workers.emplace_back(part, i);
    } catch (...) {  // no thread: pack the remaining parts here
      inline_from = i;
    }
  }
  part(0);
  for (size_t i = inline_from; i < nthreads; ++i) part(i);
  for (std::thread& w : workers) w.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
  size_t total = 0;
  for (size_t r = 0; r < rows; ++r) total += counts[r];
  if (total > UINT32_MAX) throw std::invalid_argument("bf16c: more than 2^32 exceptions; use bf16");
  uint32_t* row_ptr = reinterpret_cast<uint32_t*>(m.mutable_aux0());
  for (size_t r = 0; r < rows; ++r) row_ptr[r + 1] = row_ptr[r] + counts[r];
  m.AllocateExceptions(total);
  size_t o = 0;
  for (size_t i = 0; i < nthreads; ++i) {  // parts cover increasing rows
    CopyBytes(m.mutable_aux1() + 4 * o, cols_of[i].data(), cols_of[i].size() * 4);
    CopyBytes(m.mutable_aux1() + 4 * total + 2 * o, values_of[i].data(), values_of[i].size() * 2);
    o += cols_of[i].size();
  }
  return m;
}

void BF16RowBits(const QuantizedMatrix& m, size_t r, uint16_t* out) {
  if (r >= m.rows())
    throw std::out_of_range("bf16_row_bits: row " + std::to_string(r) + " out of range");
  const size_t cols = m.cols();
  if (m.format() == WeightFormat::kBF16) {
    const uint16_t* b = reinterpret_cast<const uint16_t*>(m.data());
    for (size_t c = 0; c < cols; ++c) out[c] = b[BF16Index(m.padded_cols(), r, c)];
    return;
  }
  if (m.format() != WeightFormat::kBF16C)
    throw std::invalid_argument(std::string("bf16_row_bits: format is ") + FormatName(m.format()));
  const uint8_t* tile = m.data() + (r / 16) * BF16CTileBytes(m.padded_cols());
  for (size_t c = 0; c < cols; ++c) out[c] = BF16CTileBits(tile, r % 16, c);
  for (uint32_t e = m.exc_row_ptr()[r]; e < m.exc_row_ptr()[r + 1]; ++e) out[m.exc_col()[e]] = m.exc_value()[e];
}

// from_buffers for bf16c: the exception arrays have a length of their own, and every
// value is checked (tables free of the Inf/NaN exponent range, exceptions sorted, inside
// the row, finite, and at positions the tiles store as zero).
static QuantizedMatrix BF16CFromBuffers(size_t rows, size_t cols, const std::vector<BufferView>& buffers) {
  const char* names[] = {"layout_version", "tiles", "exc_row_ptr", "exc_col", "exc_value"};
  const char* dtypes[] = {"uint32", "uint8", "uint32", "uint32", "uint16"};
  const BufferView* got[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  for (const BufferView& b : buffers) {
    int k = -1;
    for (int i = 0; i < 5; ++i)
      if (b.name == names[i]) k = i;
    if (k < 0) throw std::invalid_argument("from_buffers: unexpected buffer '" + b.name + "' for format bf16c");
    if (b.dtype != dtypes[k])
      throw std::invalid_argument("from_buffers: buffer '" + b.name + "' has dtype " + b.dtype + ", expected " +
                                  dtypes[k]);
    got[k] = &b;
  }
  for (int i = 0; i < 5; ++i)
    if (!got[i]) throw std::invalid_argument(std::string("from_buffers: missing buffer '") + names[i] + "'");
  const auto expect_count = [&](int i, size_t n) {
    if (got[i]->count != n)
      throw std::invalid_argument(std::string("from_buffers: buffer '") + names[i] + "' has " +
                                  Str(got[i]->count) + " elements, expected " + Str(n));
  };
  expect_count(0, 1);
  const uint32_t version = *static_cast<const uint32_t*>(got[0]->data);
  if (version != kLayoutVersion)
    throw std::invalid_argument("from_buffers: layout_version is " + std::to_string(version) +
                                ", expected " + std::to_string(kLayoutVersion) + " for bf16c");
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kBF16C, rows, cols, 0);
  const size_t tb = BF16CTileBytes(m.padded_cols()), tiles = (rows + 15) / 16;
  expect_count(1, tiles * tb);
  std::memcpy(m.mutable_data(), got[1]->data, tiles * tb);
  for (size_t t = 0; t < tiles; ++t)
    for (size_t k = 0; k < 16; ++k)
      if ((m.data()[t * tb + k] & 0x7F) == 0x7F)
        throw std::invalid_argument("from_buffers: buffer 'tiles': tile " + Str(t) + " table entry " + Str(k) +
                                    " is " + std::to_string(m.data()[t * tb + k]) +
                                    " (0x7F / 0xFF may not be table entries)");
  expect_count(2, rows + 1);
  const uint32_t* ptr = static_cast<const uint32_t*>(got[2]->data);
  if (ptr[0] != 0) throw std::invalid_argument("from_buffers: buffer 'exc_row_ptr'[0] is " + Str(ptr[0]) + ", expected 0");
  for (size_t r = 0; r < rows; ++r)
    if (ptr[r + 1] < ptr[r])
      throw std::invalid_argument("from_buffers: buffer 'exc_row_ptr' decreases at row " + Str(r));
  const size_t n = ptr[rows];
  expect_count(3, n);
  expect_count(4, n);
  const uint32_t* col = static_cast<const uint32_t*>(got[3]->data);
  const uint16_t* val = static_cast<const uint16_t*>(got[4]->data);
  for (size_t r = 0; r < rows; ++r) {
    const uint8_t* tile = m.data() + (r / 16) * tb;
    for (size_t e = ptr[r]; e < ptr[r + 1]; ++e) {
      const std::string at = " entry " + Str(e) + " (row " + Str(r) + ")";
      if (col[e] >= cols || (e > ptr[r] && col[e] <= col[e - 1]))
        throw std::invalid_argument("from_buffers: buffer 'exc_col'" + at + " is " + Str(col[e]) +
                                    ": columns must increase within a row and be < " + Str(cols));
      if ((val[e] & 0x7F80u) == 0x7F80u)
        throw std::invalid_argument("from_buffers: buffer 'exc_value'" + at + " is Inf or NaN");
      if ((BF16CTileBits(tile, r % 16, col[e]) & 0x7FFFu) != 0)
        throw std::invalid_argument("from_buffers: buffer 'tiles' stores a nonzero weight at exception" + at);
    }
  }
  std::memcpy(m.mutable_aux0(), ptr, (rows + 1) * 4);
  m.AllocateExceptions(n);
  CopyBytes(m.mutable_aux1(), col, n * 4);
  CopyBytes(m.mutable_aux1() + 4 * n, val, n * 2);
  return m;
}

// ---------------------------------------------------------------- names

const char* FormatName(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32: return "f32";
    case WeightFormat::kBF16: return "bf16";
    case WeightFormat::kInt4: return "int4";
    case WeightFormat::kTernary: return "ternary";
    case WeightFormat::kBF16C: return "bf16c";
  }
  return "?";
}

WeightFormat ParseFormat(const std::string& name) {
  if (name == "f32" || name == "float32") return WeightFormat::kF32;
  if (name == "bf16" || name == "bfloat16") return WeightFormat::kBF16;
  if (name == "int4") return WeightFormat::kInt4;
  if (name == "ternary") return WeightFormat::kTernary;
  if (name == "bf16c") return WeightFormat::kBF16C;
  throw std::invalid_argument("format must be one of 'ternary', 'int4', 'bf16', 'bf16c', 'f32', got '" +
                              name + "'");
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

size_t QuantizedMatrix::row_bytes() const {
  switch (format_) {
    case WeightFormat::kF32: return padded_cols_ * 4;
    case WeightFormat::kBF16: return padded_cols_ * 2;
    case WeightFormat::kInt4: return padded_cols_ / 2 + groups_per_row() * 4;  // codes, scales, mins
    case WeightFormat::kTernary: return padded_cols_ / 4;
    case WeightFormat::kBF16C: return padded_cols_ * 3 / 2;  // plus the tile's table
  }
  return 0;
}

size_t QuantizedMatrix::nbytes() const { return data_.size() + aux0_.size() + aux1_.size(); }

double QuantizedMatrix::bits_per_weight() const {
  return double(nbytes()) * 8.0 / (double(rows_) * double(cols_));
}

QuantizedMatrix QuantizedMatrix::Allocate(WeightFormat f, size_t rows, size_t cols, int group) {
  QuantizedMatrix m;
  m.format_ = f;
  m.rows_ = rows;
  m.cols_ = cols;
  m.group_size_ = f == WeightFormat::kInt4 ? group : 0;
  m.padded_cols_ = PaddedCols(f, cols);
  const size_t stored_rows = f == WeightFormat::kF32 ? rows : (rows + 15) / 16 * 16;  // 16-row tiles
  if (f == WeightFormat::kBF16C) {
    m.data_ = AlignedBytes(stored_rows / kBF16CTileRows * BF16CTileBytes(m.padded_cols_));
    m.aux0_ = AlignedBytes((rows + 1) * 4);  // exc_row_ptr, all 0: no exceptions
  } else {
    m.data_ = AlignedBytes(stored_rows * m.row_bytes());
  }
  if (f == WeightFormat::kTernary) m.aux0_ = AlignedBytes(rows * 4);
  return m;
}

static const uint32_t kLayoutVersionValue = kLayoutVersion;

std::vector<BufferView> QuantizedMatrix::Buffers() const {
  std::vector<BufferView> b;
  b.push_back({"layout_version", "uint32", 1, &kLayoutVersionValue});
  switch (format_) {
    case WeightFormat::kF32:
      b.push_back({"weight", "float32", rows_ * padded_cols_, data_.data()});
      break;
    case WeightFormat::kBF16:
      b.push_back({"weight", "uint16", data_.size() / 2, data_.data()});
      break;
    case WeightFormat::kInt4: {  // stored as layout 2: codes, scales, mins apart
      const size_t tiles = (rows_ + kInt4TileRows - 1) / kInt4TileRows, ns = tiles * 16 * groups_per_row();
      const size_t nq = tiles * Int4CodeTileBytes(padded_cols_);
      auto q4 = std::make_shared<std::vector<uint8_t>>(nq);
      auto sc = std::make_shared<std::vector<uint16_t>>(ns);
      auto mn = std::make_shared<std::vector<uint16_t>>(ns);
      Int4Deinterleave(*this, q4->data(), sc->data(), mn->data());
      b.push_back({"q4", "uint8", nq, q4->data(), q4});
      b.push_back({"scale", "uint16", ns, sc->data(), sc});
      b.push_back({"min", "uint16", ns, mn->data(), mn});
      break;
    }
    case WeightFormat::kTernary:
      b.push_back({"packed", "uint8", data_.size(), data_.data()});
      b.push_back({"row_multiplier", "float32", rows_, aux0_.data()});
      break;
    case WeightFormat::kBF16C:
      b.push_back({"tiles", "uint8", data_.size(), data_.data()});
      b.push_back({"exc_row_ptr", "uint32", rows_ + 1, aux0_.data()});
      b.push_back({"exc_col", "uint32", num_exceptions(), exc_col()});
      b.push_back({"exc_value", "uint16", num_exceptions(), exc_value()});
      break;
  }
  return b;
}

QuantizedMatrix QuantizedMatrix::FromBuffers(WeightFormat f, size_t rows, size_t cols, int group,
                                             const std::vector<BufferView>& buffers) {
  CheckShape("from_buffers", rows, cols);
  if (f == WeightFormat::kInt4) CheckGroup("from_buffers", cols, group);
  if (f == WeightFormat::kBF16C) return BF16CFromBuffers(rows, cols, buffers);
  QuantizedMatrix m = Allocate(f, rows, cols, group);
  const std::vector<BufferView> expected = m.Buffers();
  // Layout 1 differs from 2 only in the ternary "packed" buffer (rows in the row codec
  // of ternary.h instead of 16-row tiles): it is read and converted.
  uint32_t version = kLayoutVersion;
  for (const BufferView& b : buffers)
    if (b.name == "layout_version" && b.dtype == "uint32" && b.count == 1)
      version = *static_cast<const uint32_t*>(b.data);
  if (version != kLayoutVersion && version != 1)
    throw std::invalid_argument("from_buffers: layout_version is " + std::to_string(version) +
                                ", expected 1 or " + std::to_string(kLayoutVersion));
  std::vector<uint8_t> v1_packed;  // ternary layout 1
  std::vector<uint16_t> v1_bf16;   // bf16 layout 1: row-major [rows, padded_cols]
  std::vector<uint8_t> v1_q4;      // int4 layout 1: row codec [rows, padded_cols / 2]
  std::vector<uint16_t> v1_scale, v1_min;  // int4 layout 1: [rows, groups_per_row]
  const void* int4_src[3] = {nullptr, nullptr, nullptr};  // int4 layout 2: q4, scale, min
  for (const BufferView& want : expected) {
    const BufferView* got = nullptr;
    for (const BufferView& b : buffers)
      if (b.name == want.name) got = &b;
    if (!got) throw std::invalid_argument("from_buffers: missing buffer '" + want.name + "'");
    if (got->dtype != want.dtype)
      throw std::invalid_argument("from_buffers: buffer '" + want.name + "' has dtype " +
                                  got->dtype + ", expected " + want.dtype);
    if (want.name == "layout_version") continue;
    if (version == 1 && f == WeightFormat::kTernary && want.name == "packed") {
      if (got->count != rows * TernaryPackedBytes(cols))
        throw std::invalid_argument("from_buffers: buffer 'packed' (layout 1) has " +
                                    Str(got->count) + " elements, expected " +
                                    Str(rows * TernaryPackedBytes(cols)));
      const uint8_t* p = static_cast<const uint8_t*>(got->data);
      v1_packed.assign(p, p + got->count);
      continue;
    }
    if (version == 1 && f == WeightFormat::kBF16 && want.name == "weight" &&
        got->count == rows * m.padded_cols()) {
      const uint16_t* p = static_cast<const uint16_t*>(got->data);
      v1_bf16.assign(p, p + got->count);
      for (size_t r = 0; r < rows; ++r)
        for (size_t c = 0; c < cols; ++c)
          reinterpret_cast<uint16_t*>(m.mutable_data())[BF16Index(m.padded_cols(), r, c)] =
              v1_bf16[r * m.padded_cols() + c];
      continue;
    }
    if (version == 1 && f == WeightFormat::kInt4) {
      const bool q4 = want.name == "q4";
      const size_t codec_cols = Int4CodecPaddedCols(cols);  // layout 1 rows: 128-padded
      const size_t n1 = q4 ? rows * codec_cols / 2 : rows * (codec_cols / size_t(group));
      if (got->count != n1)
        throw std::invalid_argument("from_buffers: buffer '" + want.name + "' (layout 1) has " +
                                    Str(got->count) + " elements, expected " + Str(n1));
      if (q4) {
        const uint8_t* p = static_cast<const uint8_t*>(got->data);
        v1_q4.assign(p, p + n1);
      } else {
        const uint16_t* p = static_cast<const uint16_t*>(got->data);
        (want.name == "scale" ? v1_scale : v1_min).assign(p, p + n1);
      }
      continue;
    }
    if (got->count != want.count)
      throw std::invalid_argument("from_buffers: buffer '" + want.name + "' has " +
                                  Str(got->count) + " elements, expected " + Str(want.count));
    if (f == WeightFormat::kInt4) {  // interleaved into the tiles below
      int4_src[want.name == "q4" ? 0 : want.name == "scale" ? 1 : 2] = got->data;
      continue;
    }
    std::memcpy(const_cast<void*>(want.data), got->data,
                want.count * (want.dtype == "uint8" ? 1 : want.dtype == "uint16" ? 2 : 4));
  }
  for (const BufferView& b : buffers) {
    bool known = false;
    for (const BufferView& want : expected) known |= want.name == b.name;
    if (!known)
      throw std::invalid_argument("from_buffers: unexpected buffer '" + b.name + "' for format " +
                                  FormatName(f));
  }
  if (f == WeightFormat::kTernary) {
    // Layout 2: one pass over the bytes finds any 2-bit field 3 (both bits set); only
    // then are rows unpacked, to name the first bad one. Padding bytes are 0.
    bool any_bad = version == 1;
    if (!any_bad) {
      uint8_t bad = 0;
      const uint8_t* d = m.data();
      const size_t n = TernaryMatrixPaddedRows(rows) * m.row_bytes();
      for (size_t i = 0; i < n; ++i) bad |= uint8_t(d[i] & (d[i] >> 1));
      any_bad = (bad & 0x55) != 0;
    }
    std::vector<int8_t> row(cols);
    for (size_t r = 0; any_bad && r < rows; ++r) {
      const bool ok = version == 1
          ? UnpackTernaryRow(v1_packed.data() + r * TernaryPackedBytes(cols), cols, row.data())
          : TernaryGetRow(m.data(), m.padded_cols(), r, cols, row.data());
      if (!ok)
        throw std::invalid_argument("from_buffers: buffer 'packed' row " + Str(r) +
                                    " holds the invalid 2-bit code 3");
      if (version == 1) TernarySetRow(m.mutable_data(), m.padded_cols(), r, row.data(), cols);
    }
    CheckFinite(m.row_multiplier(), rows);
  }
  if (f == WeightFormat::kInt4 && version != 1)
    Int4Interleave(m, static_cast<const uint8_t*>(int4_src[0]), static_cast<const uint16_t*>(int4_src[1]),
                   static_cast<const uint16_t*>(int4_src[2]));
  if (f == WeightFormat::kInt4 && version == 1) {
    const size_t codec_cols = Int4CodecPaddedCols(cols), gpr1 = codec_cols / size_t(group);
    std::vector<uint8_t> q(codec_cols);
    for (size_t r = 0; r < rows; ++r) {
      UnpackInt4Row(v1_q4.data() + r * codec_cols / 2, cols, q.data());
      SetInt4Row(m, r, q.data(), v1_scale.data() + r * gpr1, v1_min.data() + r * gpr1);
    }
  }
  if (f == WeightFormat::kF32) CheckFinite(reinterpret_cast<const float*>(m.data()), rows * m.padded_cols());
  return m;
}

// ---------------------------------------------------------------- constructors

QuantizedMatrix Quantize(const float* w, size_t rows, size_t cols, WeightFormat f, int group) {
  CheckShape("quantize", rows, cols);
  if (f == WeightFormat::kInt4) CheckGroup("quantize", cols, group);
  CheckFinite(w, rows * cols);
  if (f == WeightFormat::kBF16C) {
    std::vector<uint16_t> bits(rows * cols);
    for (size_t i = 0; i < rows * cols; ++i) bits[i] = BF16FromF32(w[i]);
    return FromBF16C(bits.data(), rows, cols);
  }
  QuantizedMatrix m = QuantizedMatrix::Allocate(f, rows, cols, group);
  const size_t rb = m.row_bytes();
  switch (f) {
    case WeightFormat::kF32:
      for (size_t r = 0; r < rows; ++r)
        std::memcpy(m.mutable_data() + r * rb, w + r * cols, cols * 4);
      break;
    case WeightFormat::kBF16: {
      uint16_t* o = reinterpret_cast<uint16_t*>(m.mutable_data());
      for (size_t r = 0; r < rows; ++r)
        for (size_t c = 0; c < cols; ++c) o[BF16Index(m.padded_cols(), r, c)] = BF16FromF32(w[r * cols + c]);
      break;
    }
    case WeightFormat::kTernary: {
      // DESIGN §3: s_w = 1 / max(mean|W|, 1e-5); T = clamp(round_half_even(W s_w), -1, 1).
      double sum = 0;
      for (size_t i = 0; i < rows * cols; ++i) sum += std::fabs(double(w[i]));
      const float mean = float(sum / double(rows * cols));
      const float s_w = 1.0f / std::max(mean, 1e-5f);
      std::vector<int8_t> t(cols);
      float* mult = reinterpret_cast<float*>(m.mutable_aux0());
      for (size_t r = 0; r < rows; ++r) {
        for (size_t c = 0; c < cols; ++c) {
          const float v = std::nearbyint(w[r * cols + c] * s_w);
          t[c] = int8_t(std::min(1.0f, std::max(-1.0f, v)));
        }
        TernarySetRow(m.mutable_data(), m.padded_cols(), r, t.data(), cols);
        mult[r] = 1.0f / s_w;
      }
      break;
    }
    case WeightFormat::kBF16C:
      break;  // above
    case WeightFormat::kInt4: {
      // GGUF Q4_1 numerics, but q is rounded against the fp16-rounded scale and min
      // that are stored, so dequantize() is what the kernels multiply by.
      for (float v : {*std::max_element(w, w + rows * cols), *std::min_element(w, w + rows * cols)})
        if (std::fabs(v) > 65504.0f)
          throw std::invalid_argument("quantize: int4 needs |w| <= 65504 (fp16 scale/min), got " +
                                      std::to_string(v));
      const size_t ng = cols / size_t(group);
      std::vector<uint16_t> scale(ng), mins(ng);
      std::vector<uint8_t> q(cols);
      for (size_t r = 0; r < rows; ++r) {
        for (size_t g = 0; g < cols / size_t(group); ++g) {
          const float* x = w + r * cols + g * group;
          const float lo = *std::min_element(x, x + group), hi = *std::max_element(x, x + group);
          const uint16_t d16 = F16FromF32((hi - lo) / 15.0f), m16 = F16FromF32(lo);
          const float d = F32FromF16(d16), mn = F32FromF16(m16);
          const float id = d > 0 ? 1.0f / d : 0.0f;
          for (int i = 0; i < group; ++i) {
            const float v = std::nearbyint((x[i] - mn) * id);
            q[g * group + i] = uint8_t(std::min(15.0f, std::max(0.0f, v)));
          }
          scale[g] = d16;
          mins[g] = m16;
        }
        SetInt4Row(m, r, q.data(), scale.data(), mins.data());
      }
      break;
    }
  }
  return m;
}

QuantizedMatrix FromTernary(const int8_t* t, size_t rows, size_t cols, const float* mult) {
  CheckShape("from_ternary", rows, cols);
  for (size_t i = 0; i < rows * cols; ++i)
    if (t[i] < -1 || t[i] > 1)
      throw std::invalid_argument("from_ternary: t must hold only -1, 0, 1; got " +
                                  std::to_string(int(t[i])) + " at flat index " + Str(i));
  for (size_t r = 0; r < rows; ++r)
    if (!std::isfinite(mult[r]))
      throw std::invalid_argument("from_ternary: row_multiplier[" + Str(r) + "] is not finite");
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kTernary, rows, cols, 0);
  for (size_t r = 0; r < rows; ++r) TernarySetRow(m.mutable_data(), m.padded_cols(), r, t + r * cols, cols);
  std::memcpy(m.mutable_aux0(), mult, rows * 4);
  return m;
}

QuantizedMatrix FromBF16(const uint16_t* bits, size_t rows, size_t cols) {
  CheckShape("from_bf16", rows, cols);
  for (size_t i = 0; i < rows * cols; ++i)
    if ((bits[i] & 0x7F80u) == 0x7F80u)
      throw std::invalid_argument("from_bf16: bits hold Inf or NaN at flat index " + Str(i));
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kBF16, rows, cols, 0);
  uint16_t* o = reinterpret_cast<uint16_t*>(m.mutable_data());
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) o[BF16Index(m.padded_cols(), r, c)] = bits[r * cols + c];
  return m;
}

QuantizedMatrix FromBF16C(const uint16_t* bits, size_t rows, size_t cols) {
  CheckShape("from_bf16", rows, cols);
  for (size_t i = 0; i < rows * cols; ++i)
    if ((bits[i] & 0x7F80u) == 0x7F80u)
      throw std::invalid_argument("from_bf16: bits hold Inf or NaN at flat index " + Str(i));
  return PackBF16C(bits, rows, cols);
}

QuantizedMatrix FromInt4(const uint8_t* q, const uint16_t* scale, const uint16_t* mins,
                         size_t rows, size_t cols, int group) {
  CheckShape("from_int4", rows, cols);
  CheckGroup("from_int4", cols, group);
  for (size_t i = 0; i < rows * cols; ++i)
    if (q[i] > 15)
      throw std::invalid_argument("from_int4: q must be in [0, 15]; got " + std::to_string(q[i]) +
                                  " at flat index " + Str(i));
  const size_t ng = cols / size_t(group);
  for (size_t i = 0; i < rows * ng; ++i)
    if (!std::isfinite(F32FromF16(scale[i])) || !std::isfinite(F32FromF16(mins[i])))
      throw std::invalid_argument("from_int4: scale/min at flat index " + Str(i) + " is not finite");
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kInt4, rows, cols, group);
  for (size_t r = 0; r < rows; ++r) SetInt4Row(m, r, q + r * cols, scale + r * ng, mins + r * ng);
  return m;
}

// Rows [s0, s0 + n) of src into rows [d0, d0 + n) of dst (same format, cols and group):
// whole 16-row tiles by memcpy where both sides start on a tile, the rest row by row.
static void CopyRows(QuantizedMatrix& dst, size_t d0, const QuantizedMatrix& src, size_t s0, size_t n) {
  const WeightFormat f = src.format();
  const size_t rb = src.row_bytes(), cols = src.cols();
  size_t i = 0;
  if (f == WeightFormat::kF32 || (d0 % 16 == 0 && s0 % 16 == 0)) {
    i = f == WeightFormat::kF32 ? n : n / 16 * 16;
    std::memcpy(dst.mutable_data() + d0 * rb, src.data() + s0 * rb, i * rb);  // int4: with scales
  }
  std::vector<int8_t> t(f == WeightFormat::kTernary ? cols : 0);
  std::vector<uint8_t> q(f == WeightFormat::kInt4 ? cols : 0);
  const size_t ng = f == WeightFormat::kInt4 ? cols / size_t(src.group_size()) : 0;
  std::vector<uint16_t> sc(ng), mn(ng);
  for (; i < n; ++i) {
    switch (f) {
      case WeightFormat::kTernary:
        TernaryGetRow(src.data(), src.padded_cols(), s0 + i, cols, t.data());
        TernarySetRow(dst.mutable_data(), dst.padded_cols(), d0 + i, t.data(), cols);
        break;
      case WeightFormat::kInt4:
        GetInt4Row(src, s0 + i, q.data(), sc.data(), mn.data());
        SetInt4Row(dst, d0 + i, q.data(), sc.data(), mn.data());
        break;
      case WeightFormat::kBF16: {
        const uint16_t* a = reinterpret_cast<const uint16_t*>(src.data());
        uint16_t* b = reinterpret_cast<uint16_t*>(dst.mutable_data());
        for (size_t c = 0; c < cols; ++c)
          b[BF16Index(dst.padded_cols(), d0 + i, c)] = a[BF16Index(src.padded_cols(), s0 + i, c)];
        break;
      }
      case WeightFormat::kF32:
      case WeightFormat::kBF16C:  // whole matrices only: see RepackBF16C
        break;
    }
  }
  if (f == WeightFormat::kTernary)
    std::memcpy(dst.mutable_aux0() + d0 * 4, src.row_multiplier() + s0, n * 4);
}

// bf16c tables belong to tiles, so rows are decoded and packed again (the values are
// kept bit for bit; tables and exceptions follow the new tiles).
static QuantizedMatrix RepackBF16C(const std::vector<const QuantizedMatrix*>& parts,
                                   const std::vector<std::pair<size_t, size_t>>& ranges) {
  const size_t cols = parts[0]->cols();
  size_t rows = 0;
  bool whole_tiles = true;  // every range starts on a tile; all but the last fill whole tiles
  for (size_t i = 0; i < ranges.size(); ++i) {
    rows += ranges[i].second - ranges[i].first;
    whole_tiles &= ranges[i].first % 16 == 0 && (i + 1 == ranges.size() || ranges[i].second % 16 == 0);
  }
  if (whole_tiles) {  // copy tiles as they are; rows past a range's end become zero rows
    QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kBF16C, rows, cols, 0);
    const size_t tb = BF16CTileBytes(m.padded_cols());
    uint32_t* row_ptr = reinterpret_cast<uint32_t*>(m.mutable_aux0());
    std::vector<uint32_t> exc_col;
    std::vector<uint16_t> exc_value;
    size_t d0 = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      const QuantizedMatrix& p = *parts[i];
      const size_t s0 = ranges[i].first, n = ranges[i].second - s0;
      std::memcpy(m.mutable_data() + d0 / 16 * tb, p.data() + s0 / 16 * tb, (n + 15) / 16 * tb);
      for (size_t r = n; r % 16 != 0; ++r)  // the tile's rows below the range: zero
        for (size_t c = 0; c < cols; ++c) {
          uint8_t* tile = m.mutable_data() + (d0 + r) / 16 * tb;
          tile[BF16CLowByte(r % 16, c)] = 0;
          BF16CSetCode(tile, r % 16, c, kBF16CZeroCode);
        }
      for (size_t r = 0; r < n; ++r) {
        for (uint32_t e = p.exc_row_ptr()[s0 + r]; e < p.exc_row_ptr()[s0 + r + 1]; ++e) {
          exc_col.push_back(p.exc_col()[e]);
          exc_value.push_back(p.exc_value()[e]);
        }
        row_ptr[d0 + r + 1] = uint32_t(exc_col.size());
      }
      d0 += n;
    }
    if (exc_col.size() > UINT32_MAX) throw std::invalid_argument("bf16c: more than 2^32 exceptions; use bf16");
    m.AllocateExceptions(exc_col.size());
    CopyBytes(m.mutable_aux1(), exc_col.data(), exc_col.size() * 4);
    CopyBytes(m.mutable_aux1() + 4 * exc_col.size(), exc_value.data(), exc_value.size() * 2);
    return m;
  }
  std::vector<uint16_t> bits(rows * cols);
  size_t o = 0;
  for (size_t i = 0; i < parts.size(); ++i)
    for (size_t r = ranges[i].first; r < ranges[i].second; ++r, ++o) BF16RowBits(*parts[i], r, bits.data() + o * cols);
  return PackBF16C(bits.data(), rows, cols);
}

QuantizedMatrix SliceRows(const QuantizedMatrix& m, size_t r0, size_t r1) {
  if (r0 >= r1 || r1 > m.rows())
    throw std::invalid_argument("slice_rows: rows [" + Str(r0) + ", " + Str(r1) + ") are not a non-empty "
                                "range inside [0, " + Str(m.rows()) + ")");
  if (m.format() == WeightFormat::kBF16C) return RepackBF16C({&m}, {{r0, r1}});
  QuantizedMatrix out = QuantizedMatrix::Allocate(m.format(), r1 - r0, m.cols(), m.group_size());
  CopyRows(out, 0, m, r0, r1 - r0);
  return out;
}

QuantizedMatrix ConcatRows(const std::vector<const QuantizedMatrix*>& parts) {
  if (parts.empty()) throw std::invalid_argument("concat_rows: parts is empty");
  const QuantizedMatrix& a = *parts[0];
  size_t rows = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const QuantizedMatrix& p = *parts[i];
    if (p.format() != a.format() || p.cols() != a.cols() || p.group_size() != a.group_size())
      throw std::invalid_argument(
          "concat_rows: parts[" + Str(i) + "] is " + FormatName(p.format()) + " [" +
          Str(p.rows()) + ", " + Str(p.cols()) + "] group " + std::to_string(p.group_size()) +
          ", expected " + FormatName(a.format()) + " [*, " + Str(a.cols()) + "] group " +
          std::to_string(a.group_size()));
    rows += p.rows();
  }
  if (a.format() == WeightFormat::kBF16C) {
    std::vector<std::pair<size_t, size_t>> ranges;
    for (const QuantizedMatrix* p : parts) ranges.push_back({0, p->rows()});
    return RepackBF16C(parts, ranges);
  }
  QuantizedMatrix m = QuantizedMatrix::Allocate(a.format(), rows, a.cols(), a.group_size());
  size_t r0 = 0;
  for (const QuantizedMatrix* p : parts) {
    CopyRows(m, r0, *p, 0, p->rows());
    r0 += p->rows();
  }
  return m;
}

// ---------------------------------------------------------------- dequantize

void DequantizeRow(const QuantizedMatrix& m, size_t r, float* out) {
  if (r >= m.rows())
    throw std::out_of_range("dequantize_row: row " + Str(r) + " out of range [0, " + Str(m.rows()) + ")");
  const size_t cols = m.cols();
  const uint8_t* row = m.data() + r * m.row_bytes();
  switch (m.format()) {
    case WeightFormat::kF32:
      std::memcpy(out, row, cols * 4);
      break;
    case WeightFormat::kBF16: {
      const uint16_t* b = reinterpret_cast<const uint16_t*>(m.data());
      for (size_t c = 0; c < cols; ++c) out[c] = F32FromBF16(b[BF16Index(m.padded_cols(), r, c)]);
      break;
    }
    case WeightFormat::kTernary: {
      const float mult = m.row_multiplier()[r];
      const uint8_t* tile = m.data() + (r / kTernaryTileRows) * TernaryTileBytes(m.padded_cols());
      const size_t lane = 4 * (r % kTernaryTileRows);
      for (size_t c = 0; c < cols; ++c) {
        const int v = (tile[(c / 16) * 64 + lane + c % 4] >> (2 * ((c % 16) / 4))) & 3;
        out[c] = float(v - 1) * mult;
      }
      break;
    }
    case WeightFormat::kBF16C: {  // no allocation either
      const uint8_t* tile = m.data() + (r / 16) * BF16CTileBytes(m.padded_cols());
      for (size_t c = 0; c < cols; ++c) out[c] = F32FromBF16(BF16CTileBits(tile, r % 16, c));
      for (uint32_t e = m.exc_row_ptr()[r]; e < m.exc_row_ptr()[r + 1]; ++e)
        out[m.exc_col()[e]] = F32FromBF16(m.exc_value()[e]);
      break;
    }
    case WeightFormat::kInt4: {  // no allocation: the embedding lookup calls this per token
      const size_t group = size_t(m.group_size()), pc = m.padded_cols();
      for (size_t g = 0; g < cols / group; ++g) {
        uint16_t h[2];
        std::memcpy(h, m.data() + Int4ScaleByte(pc, group, r, g), 2);
        std::memcpy(h + 1, m.data() + Int4ScaleByte(pc, group, r, g) + 32, 2);
        const float sc = F32FromF16(h[0]), mn = F32FromF16(h[1]);
        for (size_t c = g * group; c < (g + 1) * group; ++c) {
          unsigned shift;
          const int q = (m.data()[Int4ByteIndex(pc, group, r, c, &shift)] >> shift) & 15;
          out[c] = sc * float(q) + mn;
        }
      }
      break;
    }
  }
}

void Dequantize(const QuantizedMatrix& m, float* out) {
  for (size_t r = 0; r < m.rows(); ++r) DequantizeRow(m, r, out + r * m.cols());
}

}  // namespace ternlm
