#include "formats/codec_util.h"

#include <cmath>
#include <stdexcept>

#include "formats/tiles.h"

namespace ternlm {

void CheckShape(const char* fn, size_t rows, size_t cols) {
  const std::string shape = "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
  if (rows == 0 || cols == 0)
    throw std::invalid_argument(std::string(fn) + ": shape must be non-empty, got " + shape);
  if (rows > (size_t(1) << 31) || cols > (size_t(1) << 31) || rows * cols > (size_t(1) << 40))
    throw std::invalid_argument(std::string(fn) + ": shape " + shape +
                                " is too large (at most 2^31 rows or columns and 2^40 weights)");
}

void CheckGroup(const char* fn, size_t cols, int group) {
  if (group != 32 && group != 64 && group != 128)
    throw std::invalid_argument(std::string(fn) + ": group_size must be 32, 64 or 128, got " +
                                std::to_string(group));
  if (cols % size_t(group) != 0)
    throw std::invalid_argument(std::string(fn) + ": group_size " + std::to_string(group) +
                                " does not divide cols = " + std::to_string(cols));
}

void CheckFiniteValues(const std::string& what, const float* v, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i]))
      throw std::invalid_argument(what + "[" + std::to_string(i) + "] is not finite (" + std::to_string(v[i]) + ")");
}

void CheckHalvesFinite(const std::string& what, const void* halves, size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(halves);
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, p + 2 * i, 2);
    if ((h & 0x7C00u) == 0x7C00u)  // all exponent bits set: Inf or NaN
      throw std::invalid_argument(what + "[" + std::to_string(i) + "] is not finite");
  }
}

void CheckCount(const char* name, size_t got, size_t expected) {
  if (got != expected)
    throw std::invalid_argument(std::string("from_buffers: buffer '") + name + "' has " + std::to_string(got) +
                                " elements, expected " + std::to_string(expected));
}

const void* StoredBuffers::TakeAnyCount(const char* name, const char* dtype, size_t* count) {
  for (size_t i = 0; i < buffers_.size(); ++i) {
    const BufferView& b = buffers_[i];
    if (b.name != name) continue;
    if (b.dtype != dtype)
      throw std::invalid_argument("from_buffers: buffer '" + b.name + "' has dtype " + b.dtype + ", expected " +
                                  dtype);
    taken_[i] = true;
    *count = b.count;
    return b.data;
  }
  throw std::invalid_argument(std::string("from_buffers: missing buffer '") + name + "'");
}

const void* StoredBuffers::Take(const char* name, const char* dtype, size_t count) {
  size_t got = 0;
  const void* data = TakeAnyCount(name, dtype, &got);
  CheckCount(name, got, count);
  return data;
}

void StoredBuffers::RejectUnknown() const {
  for (size_t i = 0; i < buffers_.size(); ++i)
    if (!taken_[i])
      throw std::invalid_argument("from_buffers: unexpected buffer '" + buffers_[i].name + "' for format " +
                                  format_);
}

QuantizedMatrix StackRowsByCopy(const std::vector<RowRange>& ranges, CopyRowFn copy_row) {
  const QuantizedMatrix& first = *ranges[0].m;
  const bool tiled = Traits(first.format()).tiled;
  const bool multiplier = Traits(first.format()).has_row_multiplier;
  size_t rows = 0;
  for (const RowRange& p : ranges) rows += p.r1 - p.r0;
  QuantizedMatrix m = QuantizedMatrix::Allocate(first.format(), rows, first.cols(), first.group_size());
  const size_t rb = m.row_bytes();
  size_t d0 = 0;
  for (const RowRange& p : ranges) {
    const size_t s0 = p.r0, n = p.r1 - p.r0;
    size_t i = 0;
    if (!tiled || (d0 % kTileRows == 0 && s0 % kTileRows == 0)) {
      i = tiled ? n / kTileRows * kTileRows : n;
      CopyBytes(m.mutable_data() + d0 * rb, p.m->data() + s0 * rb, i * rb);  // int4: with scales
    }
    for (; i < n; ++i) copy_row(m, d0 + i, *p.m, s0 + i);
    if (multiplier) CopyBytes(m.mutable_row_multiplier() + d0, p.m->row_multiplier() + s0, n * sizeof(float));
    d0 += n;
  }
  return m;
}

}  // namespace ternlm
