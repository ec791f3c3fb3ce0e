// q6 codec: the 16-row tiles of q6.h ("tiles", stored as in memory), its quantizer (a
// least-squares scale per 16-weight sub-block, coded as int8 against one fp16 scale per
// 256 columns) and FromQ6 (GGUF Q6_K's fields, without loss).
#include "formats/q6.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "formats/codec_util.h"
#include "formats/format_traits.h"
#include "formats/half.h"

namespace ternlm {
namespace {

size_t Q6RowBytes(size_t padded_cols, int) { return Q6TileBytes(padded_cols) / kTileRows; }
size_t Q6DataBytes(size_t rows, size_t padded_cols, int) { return TileCount(rows) * Q6TileBytes(padded_cols); }

unsigned GetU(const QuantizedMatrix& m, size_t r, size_t c) {
  const Q6Place p = Q6Locate(m.padded_cols(), r, c);
  return ((m.data()[p.lo] >> p.lo_shift) & 15u) | (((m.data()[p.hi] >> p.hi_shift) & 3u) << 4);
}
void SetU(QuantizedMatrix& m, size_t r, size_t c, unsigned u) {
  const Q6Place p = Q6Locate(m.padded_cols(), r, c);
  uint8_t* d = m.mutable_data();
  d[p.lo] = uint8_t((d[p.lo] & ~(15u << p.lo_shift)) | ((u & 15u) << p.lo_shift));
  d[p.hi] = uint8_t((d[p.hi] & ~(3u << p.hi_shift)) | (((u >> 4) & 3u) << p.hi_shift));
}
int8_t GetSc(const QuantizedMatrix& m, size_t r, size_t c) {
  return int8_t(m.data()[Q6Locate(m.padded_cols(), r, c).sc]);
}
uint16_t GetD(const QuantizedMatrix& m, size_t r, size_t c) {
  uint16_t h;
  std::memcpy(&h, m.data() + Q6Locate(m.padded_cols(), r, c).d, 2);
  return h;
}

// Row r from u [cols] (0..63), sc [ceil(cols/16)] and d fp16 bits [ceil(cols/256)].
void SetQ6Row(QuantizedMatrix& m, size_t r, const uint8_t* u, const int8_t* sc, const uint16_t* d) {
  uint8_t* o = m.mutable_data();
  for (size_t c = 0; c < m.cols(); ++c) SetU(m, r, c, u[c]);
  for (size_t c = 0; c < m.cols(); c += kQ6SubCols) o[Q6Locate(m.padded_cols(), r, c).sc] = uint8_t(sc[c / kQ6SubCols]);
  for (size_t c = 0; c < m.cols(); c += kQ6SuperCols)
    std::memcpy(o + Q6Locate(m.padded_cols(), r, c).d, &d[c / kQ6SuperCols], 2);
}

void Q6Buffers(const QuantizedMatrix& m, std::vector<BufferView>* out) {
  out->push_back({"tiles", "uint8", Q6DataBytes(m.rows(), m.padded_cols(), 0), m.data()});
}

// Every stored d (padding rows and tiles included) must be finite.
QuantizedMatrix Q6FromBuffers(size_t rows, size_t cols, int, StoredBuffers& in) {
  const size_t pc = Q6PaddedCols(cols), n = Q6DataBytes(rows, pc, 0), tb = Q6TileBytes(pc);
  const uint8_t* tiles = static_cast<const uint8_t*>(in.Take("tiles", "uint8", n));
  for (size_t t = 0; t < TileCount(rows); ++t) {
    size_t at = t * tb;
    for (size_t s = 0; s < Q6SuperBlocks(pc); ++s) {
      at += Q6SuperBytes(Q6SuperCols(pc, s));
      CheckHalvesFinite("from_buffers: buffer 'tiles' (q6 super-block scale d, tile " + std::to_string(t) +
                            ", super-block " + std::to_string(s) + ")",
                        tiles + at - 32, kTileRows);
    }
  }
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kQ6, rows, cols, 0);
  std::memcpy(m.mutable_data(), tiles, n);
  return m;
}

// Round half to even for |v| < 2^22 (the sum with 1.5 * 2^23 keeps no fraction bits and the
// default rounding mode rounds ties to even; without -ffast-math the compiler keeps both
// operations): std::nearbyint without its libm call, which the quantizer makes ~10 times per
// weight. Every value rounded here is below 2^7 in magnitude.
inline float RoundEven(float v) {
  constexpr float kBig = 12582912.0f;
  return (v + kBig) - kBig;
}

// The least-squares scale of x [n] for codes in [-32, 31], over a few candidate grids
// (the largest |x| mapped to -32 and slightly off it, t = -2..2); returns 0 for an all-zero
// x. The five grids are worked side by side: each grid's sums still add their terms in
// index order (the same doubles as one grid after the other), but five chains of dependent
// additions overlap instead of running one after the other.
float SubBlockScale(const float* x, size_t n) {
  float v = 0;
  for (size_t i = 0; i < n; ++i)
    if (std::fabs(x[i]) > std::fabs(v)) v = x[i];
  if (v == 0) return 0;
  constexpr int kGrids = 5;
  float iscale[kGrids], q[kGrids][kQ6SubCols], scale[kGrids];
  double xq[kGrids] = {0}, qq[kGrids] = {0}, err[kGrids] = {0};
  for (int g = 0; g < kGrids; ++g) iscale[g] = -(32.0f + 0.3f * float(g - 2)) / v;
  for (size_t i = 0; i < n; ++i) {
    for (int g = 0; g < kGrids; ++g) {
      q[g][i] = std::min(31.0f, std::max(-32.0f, RoundEven(x[i] * iscale[g])));
      xq[g] += double(x[i]) * q[g][i];
      qq[g] += double(q[g][i]) * q[g][i];
    }
  }
  for (int g = 0; g < kGrids; ++g) scale[g] = qq[g] == 0 ? 0.0f : float(xq[g] / qq[g]);
  for (size_t i = 0; i < n; ++i) {
    for (int g = 0; g < kGrids; ++g) {
      const double e = double(x[i]) - double(scale[g]) * q[g][i];
      err[g] += e * e;
    }
  }
  float best = -v / 32.0f, best_err = INFINITY;
  for (int g = 0; g < kGrids; ++g) {
    if (qq[g] == 0) continue;  // no code away from zero on this grid
    if (err[g] < best_err) best_err = float(err[g]), best = scale[g];
  }
  return best;
}

void Q6QuantizeRows(QuantizedMatrix& m, const float* w, size_t r0, size_t r1, const QuantizeScan&) {
  const size_t cols = m.cols(), nsub = (cols + kQ6SubCols - 1) / kQ6SubCols;
  const size_t nsup = (cols + kQ6SuperCols - 1) / kQ6SuperCols;
  std::vector<float> scale(nsub);
  std::vector<int8_t> sc(nsub);
  std::vector<uint16_t> d(nsup);
  std::vector<uint8_t> u(cols);
  for (size_t r = r0; r < r1; ++r) {
    const float* x = w + (r - r0) * cols;
    for (size_t j = 0; j < nsub; ++j)
      scale[j] = SubBlockScale(x + j * kQ6SubCols, std::min(kQ6SubCols, cols - j * kQ6SubCols));
    for (size_t s = 0; s < nsup; ++s) {
      const size_t j0 = s * kQ6SuperCols / kQ6SubCols, j1 = std::min(nsub, j0 + kQ6SuperCols / kQ6SubCols);
      float amax = 0;
      for (size_t j = j0; j < j1; ++j) amax = std::max(amax, std::fabs(scale[j]));
      d[s] = F16FromF32(amax / 127.0f);
      const float df = F32FromF16(d[s]);
      if (!std::isfinite(df))
        throw std::invalid_argument("quantize: q6 needs sub-block scales whose fp16 super-block scale is finite "
                                    "(|w| below about 2.6e8); row " + std::to_string(r) + " has larger values");
      for (size_t j = j0; j < j1; ++j) {
        const float v = df > 0 ? std::nearbyint(scale[j] / df) : 0.0f;
        sc[j] = int8_t(std::min(127.0f, std::max(-127.0f, v)));
        const float e = df * float(sc[j]);  // exact: fp16 x int8
        const float inv = e != 0 ? 1.0f / e : 0.0f;
        for (size_t c = j * kQ6SubCols; c < std::min(cols, (j + 1) * kQ6SubCols); ++c) {
          const float q = std::min(31.0f, std::max(-32.0f, RoundEven(x[c] * inv)));
          u[c] = uint8_t(int(q) + 32);
        }
      }
    }
    SetQ6Row(m, r, u.data(), sc.data(), d.data());
  }
}

// (d * sc) is exact in f32 (11 x 8 significant bits), and so is its product with u - 32:
// the same value as ggml's Q6_K dequantization.
void Q6DequantizeRow(const QuantizedMatrix& m, size_t r, float* out) {
  for (size_t c = 0; c < m.cols(); ++c) {
    const float e = F32FromF16(GetD(m, r, c)) * float(GetSc(m, r, c));
    out[c] = e * float(int(GetU(m, r, c)) - 32);
  }
}

void Q6CopyRow(QuantizedMatrix& dst, size_t dr, const QuantizedMatrix& src, size_t sr) {
  const size_t pc = src.padded_cols();
  for (size_t c = 0; c < src.cols(); ++c) SetU(dst, dr, c, GetU(src, sr, c));
  for (size_t c = 0; c < src.cols(); c += kQ6SubCols)
    dst.mutable_data()[Q6Locate(pc, dr, c).sc] = src.data()[Q6Locate(pc, sr, c).sc];
  for (size_t c = 0; c < src.cols(); c += kQ6SuperCols)
    std::memcpy(dst.mutable_data() + Q6Locate(pc, dr, c).d, src.data() + Q6Locate(pc, sr, c).d, 2);
}

QuantizedMatrix Q6StackRows(const std::vector<RowRange>& ranges) { return StackRowsByCopy(ranges, Q6CopyRow); }

}  // namespace

extern const FormatTraits kQ6Traits = {
    WeightFormat::kQ6, "q6", nullptr, /*tiled=*/true, /*grouped=*/false,
    Q6PaddedCols, Q6RowBytes, Q6DataBytes, /*has_row_multiplier=*/false, /*has_exceptions=*/false,
    Q6Buffers, Q6FromBuffers,
    ScanKind::kNone, /*quantize_begin=*/nullptr, Q6QuantizeRows, /*quantize_whole=*/nullptr,
    Q6DequantizeRow, Q6StackRows,
};

QuantizedMatrix FromQ6(const uint8_t* u, const int8_t* sc, const uint16_t* d, size_t rows, size_t cols) {
  CheckShape("from_q6", rows, cols);
  if (cols % kQ6SubCols)
    throw std::invalid_argument("from_q6: cols " + std::to_string(cols) + " is not a multiple of 16 (one sub-block)");
  for (size_t i = 0; i < rows * cols; ++i)
    if (u[i] > 63)
      throw std::invalid_argument("from_q6: u must be in [0, 63]; got " + std::to_string(u[i]) + " at flat index " +
                                  std::to_string(i));
  const size_t nsub = cols / kQ6SubCols, nsup = (cols + kQ6SuperCols - 1) / kQ6SuperCols;
  CheckHalvesFinite("from_q6: d", d, rows * nsup);
  QuantizedMatrix m = QuantizedMatrix::Allocate(WeightFormat::kQ6, rows, cols, 0);
  for (size_t r = 0; r < rows; ++r) SetQ6Row(m, r, u + r * cols, sc + r * nsub, d + r * nsup);
  return m;
}

}  // namespace ternlm
