// bf16c codec: the per-tile tables, low bytes and codes of bf16c.h ("tiles", stored as in
// memory) and the per-row exception lists ("exc_row_ptr", "exc_col", "exc_value").
#include "formats/bf16c.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>

#include "formats/bf16.h"
#include "formats/codec_util.h"
#include "formats/format_traits.h"
#include "formats/half.h"
#include "formats/quantize.h"

namespace ternlm {
namespace {

size_t BF16CRowBytes(size_t padded_cols, int) { return padded_cols * 3 / 2; }  // plus the tile's table
size_t BF16CDataBytes(size_t rows, size_t padded_cols, int) { return TileCount(rows) * BF16CTileBytes(padded_cols); }

const uint8_t* TileOf(const QuantizedMatrix& m, size_t r) {
  return m.data() + (r / kTileRows) * BF16CTileBytes(m.padded_cols());
}

// Row r as bf16 bits [cols], exceptions applied.
void BF16CRowBits(const QuantizedMatrix& m, size_t r, uint16_t* out) {
  const uint8_t* tile = TileOf(m, r);
  for (size_t c = 0; c < m.cols(); ++c) out[c] = BF16CTileBits(tile, r % kTileRows, c);
  for (uint32_t e = m.exc_row_ptr()[r]; e < m.exc_row_ptr()[r + 1]; ++e) out[m.exc_col()[e]] = m.exc_value()[e];
}

// Writes exceptions [at, at + col.size()) of m (allocated with AllocateExceptions).
void CopyExceptions(QuantizedMatrix& m, size_t at, const std::vector<uint32_t>& col,
                    const std::vector<uint16_t>& value) {
  CopyBytes(m.mutable_exc_col() + at, col.data(), col.size() * 4);
  CopyBytes(m.mutable_exc_value() + at, value.data(), value.size() * 2);
}

// Tiles [t0, t1) of m from bits; their exceptions appended to exc_col / exc_value in row
// order, counts[r] = row r's number of exceptions.
void PackTiles(QuantizedMatrix& m, const uint16_t* bits, size_t t0, size_t t1, std::vector<uint32_t>& exc_col,
               std::vector<uint16_t>& exc_value, uint32_t* counts) {
  const size_t rows = m.rows(), cols = m.cols(), tb = BF16CTileBytes(m.padded_cols());
  for (size_t t = t0; t < t1; ++t) {
    uint8_t* tile = m.mutable_data() + t * tb;
    const size_t rb = kTileRows * t, re = std::min(rows, rb + kTileRows);
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

// Fills m (fresh from Allocate) from finite bf16 bits [rows, cols]: per tile, the 15 most
// frequent high bytes (ties: the smaller byte) get codes 0..14, code 15 is high byte 0x00;
// any other weight is an exception. High bytes 0x7F / 0xFF (|w| >= 2^127) never enter a
// table, so a table never decodes to Inf or NaN (checked by from_buffers). Tiles are
// packed in parallel (up to 8 threads) for large matrices.
void PackBF16C(QuantizedMatrix& m, const uint16_t* bits) {
  const size_t rows = m.rows(), tiles = TileCount(rows);
  const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t nthreads = std::min<size_t>({hw, 8, std::max<size_t>(1, rows * m.cols() / (1u << 22)), tiles});
  std::vector<std::vector<uint32_t>> cols_of(nthreads);
  std::vector<std::vector<uint16_t>> values_of(nthreads);
  std::vector<uint32_t> counts(rows, 0);
  std::vector<std::exception_ptr> errors(nthreads);
  const auto part = [&](size_t i) {
    try {
      PackTiles(m, bits, tiles * i / nthreads, tiles * (i + 1) / nthreads, cols_of[i], values_of[i], counts.data());
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
  uint32_t* row_ptr = m.mutable_exc_row_ptr();
  for (size_t r = 0; r < rows; ++r) row_ptr[r + 1] = row_ptr[r] + counts[r];
  m.AllocateExceptions(total);
  size_t at = 0;
  for (size_t i = 0; i < nthreads; ++i) {  // the parts cover increasing rows
    CopyExceptions(m, at, cols_of[i], values_of[i]);
    at += cols_of[i].size();
  }
}

void BF16CBuffers(const QuantizedMatrix& m, std::vector<BufferView>* out) {
  out->push_back({"tiles", "uint8", BF16CDataBytes(m.rows(), m.padded_cols(), 0), m.data()});
  out->push_back({"exc_row_ptr", "uint32", m.rows() + 1, m.exc_row_ptr()});
  out->push_back({"exc_col", "uint32", m.num_exceptions(), m.exc_col()});
  out->push_back({"exc_value", "uint16", m.num_exceptions(), m.exc_value()});
}

// Every value is checked: tables free of the Inf/NaN exponent range, exception lists
// sorted, inside their row, finite, and at positions the tiles store as zero.
// The tiles and row pointers are taken (counts checked) before the matrix is allocated;
// the exception lists are taken, at the count the row pointers give, before theirs are.
QuantizedMatrix BF16CFromBuffers(size_t rows, size_t cols, int, StoredBuffers& in) {
  const size_t tb = BF16CTileBytes(BF16CPaddedCols(cols)), tiles = TileCount(rows);
  const void* tile_data = in.Take("tiles", "uint8", tiles * tb);
  const void* row_ptr_data = in.Take("exc_row_ptr", "uint32", rows + 1);
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kBF16C, rows, cols, 0);
  std::memcpy(m.mutable_data(), tile_data, tiles * tb);
  for (size_t t = 0; t < tiles; ++t)
    for (size_t k = 0; k < 16; ++k)
      if ((m.data()[t * tb + k] & 0x7F) == 0x7F)
        throw std::invalid_argument("from_buffers: buffer 'tiles': tile " + std::to_string(t) + " table entry " +
                                    std::to_string(k) + " is " + std::to_string(m.data()[t * tb + k]) +
                                    " (0x7F / 0xFF may not be table entries)");
  std::memcpy(m.mutable_exc_row_ptr(), row_ptr_data, (rows + 1) * 4);
  const uint32_t* ptr = m.exc_row_ptr();
  if (ptr[0] != 0)
    throw std::invalid_argument("from_buffers: buffer 'exc_row_ptr'[0] is " + std::to_string(ptr[0]) + ", expected 0");
  for (size_t r = 0; r < rows; ++r)
    if (ptr[r + 1] < ptr[r])
      throw std::invalid_argument("from_buffers: buffer 'exc_row_ptr' decreases at row " + std::to_string(r));
  const size_t n = ptr[rows];
  const void* col_data = in.Take("exc_col", "uint32", n);
  const void* value_data = in.Take("exc_value", "uint16", n);
  m.AllocateExceptions(n);
  CopyBytes(m.mutable_exc_col(), col_data, n * 4);
  CopyBytes(m.mutable_exc_value(), value_data, n * 2);
  const uint32_t* col = m.exc_col();
  const uint16_t* val = m.exc_value();
  for (size_t r = 0; r < rows; ++r) {
    for (size_t e = ptr[r]; e < ptr[r + 1]; ++e) {
      const std::string at = " entry " + std::to_string(e) + " (row " + std::to_string(r) + ")";
      if (col[e] >= cols || (e > ptr[r] && col[e] <= col[e - 1]))
        throw std::invalid_argument("from_buffers: buffer 'exc_col'" + at + " is " + std::to_string(col[e]) +
                                    ": columns must increase within a row and be < " + std::to_string(cols));
      if ((val[e] & 0x7F80u) == 0x7F80u)
        throw std::invalid_argument("from_buffers: buffer 'exc_value'" + at + " is Inf or NaN");
      if ((BF16CTileBits(TileOf(m, r), r % kTileRows, col[e]) & 0x7FFFu) != 0)
        throw std::invalid_argument("from_buffers: buffer 'tiles' stores a nonzero weight at exception" + at);
    }
  }
  return m;
}

// The rows rounded to bf16 (2 bytes per weight, read a few rows at a time), then packed.
void BF16CQuantizeWhole(QuantizedMatrix& m, const WeightRows& w) {
  const size_t cols = m.cols();
  std::vector<uint16_t> bits(m.rows() * cols);
  std::vector<float> scratch(cols);
  for (size_t r = 0; r < m.rows(); ++r) {
    const float* x = w.Read(r, r + 1, scratch.data());
    for (size_t c = 0; c < cols; ++c) bits[r * cols + c] = BF16FromF32(x[c]);
  }
  CheckBF16Finite("quantize: w rounds to bf16", bits.data(), bits.size());
  PackBF16C(m, bits.data());
}

void BF16CDequantizeRow(const QuantizedMatrix& m, size_t r, float* out) {
  const uint8_t* tile = TileOf(m, r);
  for (size_t c = 0; c < m.cols(); ++c) out[c] = F32FromBF16(BF16CTileBits(tile, r % kTileRows, c));
  for (uint32_t e = m.exc_row_ptr()[r]; e < m.exc_row_ptr()[r + 1]; ++e)
    out[m.exc_col()[e]] = F32FromBF16(m.exc_value()[e]);
}

// Tables belong to tiles: when every range starts on a tile and all but the last fill
// whole tiles, tiles are copied as they are (rows past a range's end become zero rows);
// otherwise rows are decoded and packed again. Values are kept bit for bit either way.
QuantizedMatrix BF16CStackRows(const std::vector<RowRange>& ranges) {
  const size_t cols = ranges[0].m->cols();
  size_t rows = 0;
  bool whole_tiles = true;
  for (size_t i = 0; i < ranges.size(); ++i) {
    rows += ranges[i].r1 - ranges[i].r0;
    whole_tiles &= ranges[i].r0 % kTileRows == 0 && (i + 1 == ranges.size() || ranges[i].r1 % kTileRows == 0);
  }
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kBF16C, rows, cols, 0);
  if (!whole_tiles) {
    std::vector<uint16_t> bits(rows * cols);
    size_t o = 0;
    for (const RowRange& p : ranges)
      for (size_t r = p.r0; r < p.r1; ++r, ++o) BF16CRowBits(*p.m, r, bits.data() + o * cols);
    PackBF16C(m, bits.data());
    return m;
  }
  const size_t tb = BF16CTileBytes(m.padded_cols());
  uint32_t* row_ptr = m.mutable_exc_row_ptr();
  std::vector<uint32_t> exc_col;
  std::vector<uint16_t> exc_value;
  size_t d0 = 0;
  for (const RowRange& p : ranges) {
    const size_t s0 = p.r0, n = p.r1 - p.r0;
    std::memcpy(m.mutable_data() + d0 / kTileRows * tb, p.m->data() + s0 / kTileRows * tb, TileCount(n) * tb);
    for (size_t r = n; r % kTileRows != 0; ++r)  // the tile's rows below the range: zero
      for (size_t c = 0; c < cols; ++c) {
        uint8_t* tile = m.mutable_data() + (d0 + r) / kTileRows * tb;
        tile[BF16CLowByte(r % kTileRows, c)] = 0;
        BF16CSetCode(tile, r % kTileRows, c, kBF16CZeroCode);
      }
    for (size_t r = 0; r < n; ++r) {
      for (uint32_t e = p.m->exc_row_ptr()[s0 + r]; e < p.m->exc_row_ptr()[s0 + r + 1]; ++e) {
        exc_col.push_back(p.m->exc_col()[e]);
        exc_value.push_back(p.m->exc_value()[e]);
      }
      row_ptr[d0 + r + 1] = uint32_t(exc_col.size());
    }
    d0 += n;
  }
  if (exc_col.size() > UINT32_MAX) throw std::invalid_argument("bf16c: more than 2^32 exceptions; use bf16");
  m.AllocateExceptions(exc_col.size());
  CopyExceptions(m, 0, exc_col, exc_value);
  return m;
}

}  // namespace

extern const FormatTraits kBF16CTraits = {
    WeightFormat::kBF16C, "bf16c", nullptr, /*tiled=*/true, /*grouped=*/false,
    BF16CPaddedCols, BF16CRowBytes, BF16CDataBytes, /*has_row_multiplier=*/false, /*has_exceptions=*/true,
    BF16CBuffers, BF16CFromBuffers,
    ScanKind::kNone, /*quantize_begin=*/nullptr, /*quantize_rows=*/nullptr, BF16CQuantizeWhole,
    BF16CDequantizeRow, BF16CStackRows,
};

QuantizedMatrix FromBF16C(const uint16_t* bits, size_t rows, size_t cols) {
  QuantizedMatrix m = AllocateForBF16Bits("from_bf16c", WeightFormat::kBF16C, bits, rows, cols);
  PackBF16C(m, bits);
  return m;
}

}  // namespace ternlm
