// int4 codec: the in-memory tiles of int4.h (codes, scales and mins interleaved per
// group) and their stored form (three buffers "q4", "scale", "min" in tile order).
#include "formats/int4.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "formats/codec_util.h"
#include "formats/format_traits.h"
#include "formats/half.h"

namespace ternlm {
namespace {

size_t Int4RowBytes(size_t padded_cols, int group) {
  return padded_cols / 2 + padded_cols / size_t(group) * 4;  // codes, fp16 scales and mins
}
size_t Int4DataBytes(size_t rows, size_t padded_cols, int group) {
  return TileCount(rows) * Int4TileBytes(padded_cols, size_t(group));
}

// The 4-bit code of (row r, column c).
unsigned GetCode(const QuantizedMatrix& m, size_t r, size_t c) {
  unsigned shift;
  const size_t i = Int4ByteIndex(m.padded_cols(), size_t(m.group_size()), r, c, &shift);
  return (m.data()[i] >> shift) & 15u;
}
void SetCode(QuantizedMatrix& m, size_t r, size_t c, unsigned q) {
  unsigned shift;
  uint8_t& byte = m.mutable_data()[Int4ByteIndex(m.padded_cols(), size_t(m.group_size()), r, c, &shift)];
  byte = uint8_t((byte & ~(15u << shift)) | ((q & 15u) << shift));
}

// Row r from codes [cols] and fp16 scale/min bits [cols / group].
void SetInt4Row(QuantizedMatrix& m, size_t r, const uint8_t* q, const uint16_t* sc, const uint16_t* mn) {
  const size_t pc = m.padded_cols(), group = size_t(m.group_size());
  for (size_t c = 0; c < m.cols(); ++c) SetCode(m, r, c, q[c]);
  for (size_t g = 0; g < m.cols() / group; ++g) {
    const size_t o = Int4ScaleByte(pc, group, r, g);
    std::memcpy(m.mutable_data() + o, &sc[g], 2);
    std::memcpy(m.mutable_data() + o + 32, &mn[g], 2);
  }
}

// fn(at, codes, values) for every group of every tile: at = its byte offset in the
// in-memory tiles, codes = the offset of its codes in "q4", values = the byte offset of
// its 16 fp16 values in "scale" and in "min".
template <class Fn>
void ForEachStoredGroup(const QuantizedMatrix& m, const Fn& fn) {
  const size_t group = size_t(m.group_size()), gpr = m.groups_per_row();
  for (size_t t = 0; t < TileCount(m.rows()); ++t)
    for (size_t g = 0; g < gpr; ++g)
      fn((t * gpr + g) * Int4GroupBytes(group), t * Int4CodeTileBytes(m.padded_cols()) + g * 8 * group,
         (t * gpr + g) * 32);
}

size_t NumCodeBytes(const QuantizedMatrix& m) { return TileCount(m.rows()) * Int4CodeTileBytes(m.padded_cols()); }
size_t NumScales(const QuantizedMatrix& m) { return TileCount(m.rows()) * kTileRows * m.groups_per_row(); }

void Int4Buffers(const QuantizedMatrix& m, std::vector<BufferView>* out) {
  const size_t nq = NumCodeBytes(m), ns = NumScales(m);
  auto q4 = std::make_shared<std::vector<uint8_t>>(nq);
  auto sc = std::make_shared<std::vector<uint16_t>>(ns);
  auto mn = std::make_shared<std::vector<uint16_t>>(ns);
  const size_t code_bytes = 8 * size_t(m.group_size());
  uint8_t* scales = reinterpret_cast<uint8_t*>(sc->data());
  uint8_t* mins = reinterpret_cast<uint8_t*>(mn->data());
  ForEachStoredGroup(m, [&](size_t at, size_t codes, size_t values) {
    std::memcpy(q4->data() + codes, m.data() + at, code_bytes);
    std::memcpy(scales + values, m.data() + at + code_bytes, 32);
    std::memcpy(mins + values, m.data() + at + code_bytes + 32, 32);
  });
  out->push_back({"q4", "uint8", nq, q4->data(), q4});
  out->push_back({"scale", "uint16", ns, sc->data(), sc});
  out->push_back({"min", "uint16", ns, mn->data(), mn});
}

// The same scale/min check as FromInt4, over every stored value (padding included).
QuantizedMatrix Int4FromBuffers(size_t rows, size_t cols, int group, StoredBuffers& in) {
  const size_t pc = Int4PaddedCols(cols), nq = TileCount(rows) * Int4CodeTileBytes(pc);
  const size_t ns = TileCount(rows) * kTileRows * (pc / size_t(group));
  const uint8_t* q4 = static_cast<const uint8_t*>(in.Take("q4", "uint8", nq));
  const uint8_t* scales = static_cast<const uint8_t*>(in.Take("scale", "uint16", ns));
  const uint8_t* mins = static_cast<const uint8_t*>(in.Take("min", "uint16", ns));
  CheckHalvesFinite("from_buffers: buffer 'scale'", scales, ns);
  CheckHalvesFinite("from_buffers: buffer 'min'", mins, ns);
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kInt4, rows, cols, group);
  const size_t code_bytes = 8 * size_t(group);
  uint8_t* d = m.mutable_data();
  ForEachStoredGroup(m, [&](size_t at, size_t codes, size_t values) {
    std::memcpy(d + at, q4 + codes, code_bytes);
    std::memcpy(d + at + code_bytes, scales + values, 32);
    std::memcpy(d + at + code_bytes + 32, mins + values, 32);
  });
  return m;
}

// The largest weight, then the smallest, must fit the fp16 scale and min.
void Int4QuantizeBegin(const QuantizeScan& s) {
  for (float v : {s.hi, s.lo})
    if (std::fabs(v) > 65504.0f)
      throw std::invalid_argument("quantize: int4 needs |w| <= 65504 (fp16 scale/min), got " + std::to_string(v));
}

// GGUF Q4_1 numerics, but q is rounded against the fp16-rounded scale and min that are
// stored, so dequantize() is what the kernels multiply by.
void Int4QuantizeRows(QuantizedMatrix& m, const float* w, size_t r0, size_t r1, const QuantizeScan&) {
  const size_t cols = m.cols(), group = size_t(m.group_size()), ng = cols / group;
  std::vector<uint16_t> scale(ng), mins(ng);
  std::vector<uint8_t> q(cols);
  for (size_t r = r0; r < r1; ++r) {
    for (size_t g = 0; g < ng; ++g) {
      const float* x = w + (r - r0) * cols + g * group;
      const float lo = *std::min_element(x, x + group), hi = *std::max_element(x, x + group);
      const uint16_t d16 = F16FromF32((hi - lo) / 15.0f), m16 = F16FromF32(lo);
      const float d = F32FromF16(d16), mn = F32FromF16(m16);
      const float id = d > 0 ? 1.0f / d : 0.0f;
      for (size_t i = 0; i < group; ++i) {
        const float v = std::nearbyint((x[i] - mn) * id);
        q[g * group + i] = uint8_t(std::min(15.0f, std::max(0.0f, v)));
      }
      scale[g] = d16;
      mins[g] = m16;
    }
    SetInt4Row(m, r, q.data(), scale.data(), mins.data());
  }
}

void Int4DequantizeRow(const QuantizedMatrix& m, size_t r, float* out) {
  const size_t group = size_t(m.group_size()), pc = m.padded_cols();
  for (size_t g = 0; g < m.cols() / group; ++g) {
    const size_t o = Int4ScaleByte(pc, group, r, g);
    uint16_t h[2];
    std::memcpy(h, m.data() + o, 2);
    std::memcpy(h + 1, m.data() + o + 32, 2);
    const float sc = F32FromF16(h[0]), mn = F32FromF16(h[1]);
    for (size_t c = g * group; c < (g + 1) * group; ++c) out[c] = sc * float(GetCode(m, r, c)) + mn;
  }
}

// A row's codes are nibbles, its scales and mins 16-bit values at the same places in any
// tile: copy them field by field.
void Int4CopyRow(QuantizedMatrix& dst, size_t d, const QuantizedMatrix& src, size_t s) {
  const size_t pc = src.padded_cols(), group = size_t(src.group_size());
  uint8_t* o = dst.mutable_data();
  for (size_t c = 0; c < src.cols(); ++c) SetCode(dst, d, c, GetCode(src, s, c));
  for (size_t g = 0; g < src.groups_per_row(); ++g) {
    std::memcpy(o + Int4ScaleByte(pc, group, d, g), src.data() + Int4ScaleByte(pc, group, s, g), 2);
    std::memcpy(o + Int4ScaleByte(pc, group, d, g) + 32, src.data() + Int4ScaleByte(pc, group, s, g) + 32, 2);
  }
}

QuantizedMatrix Int4StackRows(const std::vector<RowRange>& ranges) { return StackRowsByCopy(ranges, Int4CopyRow); }

}  // namespace

extern const FormatTraits kInt4Traits = {
    WeightFormat::kInt4, "int4", nullptr, /*tiled=*/true, /*grouped=*/true,
    Int4PaddedCols, Int4RowBytes, Int4DataBytes, /*has_row_multiplier=*/false, /*has_exceptions=*/false,
    Int4Buffers, Int4FromBuffers,
    ScanKind::kRange, Int4QuantizeBegin, Int4QuantizeRows, /*quantize_whole=*/nullptr,
    Int4DequantizeRow, Int4StackRows,
};

QuantizedMatrix FromInt4(const uint8_t* q, const uint16_t* scale, const uint16_t* mins, size_t rows, size_t cols,
                         int group) {
  CheckShape("from_int4", rows, cols);
  CheckGroup("from_int4", cols, group);
  for (size_t i = 0; i < rows * cols; ++i)
    if (q[i] > 15)
      throw std::invalid_argument("from_int4: q must be in [0, 15]; got " + std::to_string(q[i]) +
                                  " at flat index " + std::to_string(i));
  const size_t ng = cols / size_t(group);
  CheckHalvesFinite("from_int4: scale", scale, rows * ng);
  CheckHalvesFinite("from_int4: min", mins, rows * ng);
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kInt4, rows, cols, group);
  for (size_t r = 0; r < rows; ++r) SetInt4Row(m, r, q + r * cols, scale + r * ng, mins + r * ng);
  return m;
}

}  // namespace ternlm
