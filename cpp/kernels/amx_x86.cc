// See amx_x86.h. Tiles: 0, 1 = C (sums for weight tiles t and t + 1, m activation rows x
// 16 int32), 2 = A (m activation rows x 64 int8 columns), 3, 4 = B (the two weight tiles'
// codes for those 64 columns, 16 rows of 64 bytes).
#include "kernels/amx_x86.h"

#if TERNLM_AMX_KERNELS
#if defined(__GNUC__) && !defined(__clang__)
// GCC's _mm512_cvtph_ps / _mm512_cvtepi32_ps start from _mm512_undefined_ps(): a false alarm.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "formats/ternary.h"

#define TERNLM_AMX_ATTR __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw")))

namespace ternlm {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

// Tiles 0, 1: C, m x 16 int32; 2: A, m rows x a_bytes int8; 3, 4: B, b_rows x 64 bytes.
TERNLM_AMX_ATTR void Configure(size_t m, size_t a_bytes, size_t b_rows) {
  TileConfig cfg;
  for (int t = 0; t < 5; ++t) {
    cfg.colsb[t] = uint16_t(t == 2 ? a_bytes : 64);
    cfg.rows[t] = uint8_t(t < 3 ? m : b_rows);
  }
  _tile_loadconfig(&cfg);
}

// The codes of one weight tile as AMX B rows: for block b, out[256 b + 64 k + byte] =
// field k of byte `byte` (row byte / 4, column 16 b + 4 k + byte % 4). So the B operand of
// columns 64 kc .. 64 kc + 63 is the 1 KiB at out + 1024 kc, row g = columns 4g .. 4g + 3.
TERNLM_AMX_ATTR void Unpack(const uint8_t* tile, size_t nblocks, uint8_t* out) {
  const __m512i three = _mm512_set1_epi8(3);
  for (size_t b = 0; b < nblocks; ++b) {
    const __m512i p = _mm512_load_si512(tile + 64 * b);
    uint8_t* o = out + 256 * b;
    _mm512_store_si512(o, _mm512_and_si512(p, three));
    _mm512_store_si512(o + 64, _mm512_and_si512(_mm512_srli_epi16(p, 2), three));
    _mm512_store_si512(o + 128, _mm512_and_si512(_mm512_srli_epi16(p, 4), three));
    _mm512_store_si512(o + 192, _mm512_and_si512(_mm512_srli_epi16(p, 6), three));
  }
}

// One INT4 tile's codes (formats/int4.h, in-memory layout, group 32) as AMX B rows: for
// group b, out[512 b + 64 (2 s + h) + byte] = nibble h of byte `byte` of code block s, i.e.
// row 2s + h of the group's B operand holds columns 8s + 4h .. 8s + 4h + 3 of every row.
TERNLM_AMX_ATTR void UnpackInt4G32(const uint8_t* tile, size_t nb32, uint8_t* out) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (size_t b = 0; b < nb32; ++b) {
    const uint8_t* grp = tile + 320 * b;
    uint8_t* o = out + 512 * b;
    for (size_t s = 0; s < 4; ++s) {
      const __m512i v = _mm512_load_si512(grp + 64 * s);
      _mm512_store_si512(o + 128 * s, _mm512_and_si512(v, m4));
      _mm512_store_si512(o + 128 * s + 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
    }
  }
}

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

// Per-thread buffer for two unpacked weight tiles (16 bytes per column each).
uint8_t* Scratch(size_t bytes) {
  thread_local std::unique_ptr<uint8_t, FreeDeleter> buf;
  thread_local size_t size = 0;
  if (size < bytes) {
    buf.reset(static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
    size = buf ? bytes : 0;
  }
  return buf.get();
}

}  // namespace

TERNLM_AMX_ATTR bool TernaryMatMulRowsAmx(const uint8_t* packed, size_t padded_cols, const float* mult,
                                          const PreparedActivations& a, size_t r0, size_t r1,
                                          const MatMulOutput& out) {
  if (padded_cols > kAmxMaxCols) return false;
  const size_t nblocks = padded_cols / kTernaryBlockCols, nk = padded_cols / 64;
  const size_t tile_bytes = TernaryTileBytes(padded_cols), unpacked = 16 * padded_cols;
  uint8_t* b0 = Scratch(2 * unpacked);
  if (b0 == nullptr) return false;
  uint8_t* b1 = b0 + unpacked;
  alignas(64) int32_t c[2][16 * 16];
  size_t configured = 0;
  const size_t t0 = r0 / kTileRows, t1 = (r1 + kTileRows - 1) / kTileRows;
  for (size_t t = t0; t < t1; t += 2) {
    const size_t ntiles = std::min<size_t>(2, t1 - t);
    Unpack(packed + t * tile_bytes, nblocks, b0);
    if (ntiles == 2) Unpack(packed + (t + 1) * tile_bytes, nblocks, b1);
    for (size_t j0 = 0; j0 < a.n; j0 += 16) {
      const size_t m = std::min<size_t>(16, a.n - j0);
      if (m != configured) {
        Configure(m, 64, 16);
        configured = m;
      }
      const int8_t* x = a.q + j0 * a.stride;
      _tile_zero(0);
      _tile_zero(1);
      if (ntiles == 2) {
        for (size_t kc = 0; kc < nk; ++kc) {
          _tile_loadd(2, x + 64 * kc, a.stride);
          _tile_loadd(3, b0 + 1024 * kc, 64);
          _tile_loadd(4, b1 + 1024 * kc, 64);
          _tile_dpbsud(0, 2, 3);
          _tile_dpbsud(1, 2, 4);
        }
        _tile_stored(1, c[1], 64);
      } else {
        for (size_t kc = 0; kc < nk; ++kc) {
          _tile_loadd(2, x + 64 * kc, a.stride);
          _tile_loadd(3, b0 + 1024 * kc, 64);
          _tile_dpbsud(0, 2, 3);
        }
      }
      _tile_stored(0, c[0], 64);
      for (size_t h = 0; h < ntiles; ++h) {  // as TernaryMatMulRows: (sum - sum q) / s_x * multiplier
        const size_t rb = (t + h) * kTileRows, re = std::min(r1, rb + kTileRows);
        for (size_t j = 0; j < m; ++j) {
          const int32_t qs = a.q_sum[j0 + j];
          const float sx = a.inv_scale[j0 + j];
          float* y = out.y + (j0 + j) * out.y_stride;
          for (size_t r = rb; r < re; ++r) y[r] = float(c[h][16 * j + (r - rb)] - qs) * sx * mult[r];
        }
      }
    }
  }
  _tile_release();
  return true;
}

TERNLM_AMX_ATTR bool Int4G32MatMulRowsAmx(const uint8_t* tiles, size_t padded_cols, const PreparedActivations& a,
                                          size_t r0, size_t r1, const MatMulOutput& out) {
  if (padded_cols > kAmxMaxCols) return false;
  const size_t nb32 = padded_cols / 32, tile_bytes = padded_cols / 32 * 320, unpacked = 16 * padded_cols;
  uint8_t* b0 = Scratch(2 * unpacked);
  if (b0 == nullptr) return false;
  uint8_t* b1 = b0 + unpacked;
  alignas(64) int32_t c[2][16 * 16];
  alignas(64) float acc[2][16][16], macc[2][16][16];
  size_t configured = 0;
  const size_t t0 = r0 / 16, t1 = (r1 + 15) / 16;
  for (size_t t = t0; t < t1; t += 2) {
    const size_t ntiles = std::min<size_t>(2, t1 - t);
    const uint8_t* tile[2] = {tiles + t * tile_bytes, tiles + (t + ntiles - 1) * tile_bytes};
    UnpackInt4G32(tile[0], nb32, b0);
    if (ntiles == 2) UnpackInt4G32(tile[1], nb32, b1);
    for (size_t j0 = 0; j0 < a.n; j0 += 16) {
      const size_t m = std::min<size_t>(16, a.n - j0);
      if (m != configured) {
        Configure(m, 32, 8);
        configured = m;
      }
      for (size_t h = 0; h < ntiles; ++h)
        for (size_t j = 0; j < m; ++j) {
          _mm512_store_ps(acc[h][j], _mm512_setzero_ps());
          _mm512_store_ps(macc[h][j], _mm512_setzero_ps());
        }
      for (size_t b = 0; b < nb32; ++b) {
        _tile_loadd(2, a.q + j0 * a.stride + 32 * b, a.stride);
        _tile_loadd(3, b0 + 512 * b, 64);
        _tile_zero(0);
        _tile_dpbsud(0, 2, 3);
        _tile_stored(0, c[0], 64);
        if (ntiles == 2) {
          _tile_loadd(4, b1 + 512 * b, 64);
          _tile_zero(1);
          _tile_dpbsud(1, 2, 4);
          _tile_stored(1, c[1], 64);
        }
        // As Int4TileG32: acc += dot * (scale * 1/s_b), macc += min * group sum, in this order.
        for (size_t h = 0; h < ntiles; ++h) {
          const uint8_t* grp = tile[h] + 320 * b;
          const __m512 scale = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(grp + 256)));
          const __m512 mins = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(grp + 288)));
          for (size_t j = 0; j < m; ++j) {
            const __m512 d = _mm512_cvtepi32_ps(_mm512_load_si512(c[h] + 16 * j));
            const float inv = a.inv_scale[(j0 + j) * nb32 + b], gsum = a.group_sum[(j0 + j) * nb32 + b];
            _mm512_store_ps(acc[h][j], _mm512_fmadd_ps(d, _mm512_mul_ps(scale, _mm512_set1_ps(inv)),
                                                        _mm512_load_ps(acc[h][j])));
            _mm512_store_ps(macc[h][j], _mm512_fmadd_ps(mins, _mm512_set1_ps(gsum), _mm512_load_ps(macc[h][j])));
          }
        }
      }
      for (size_t h = 0; h < ntiles; ++h) {
        const size_t rb = (t + h) * 16, re = std::min(r1, rb + 16);
        for (size_t j = 0; j < m; ++j) {
          alignas(64) float y16[16];
          _mm512_store_ps(y16, _mm512_add_ps(_mm512_load_ps(macc[h][j]), _mm512_load_ps(acc[h][j])));
          float* y = out.y + (j0 + j) * out.y_stride;
          for (size_t r = rb; r < re; ++r) y[r] = y16[r - rb];
        }
      }
    }
  }
  _tile_release();
  return true;
}

}  // namespace ternlm

#else  // !TERNLM_AMX_KERNELS

namespace ternlm {
bool TernaryMatMulRowsAmx(const uint8_t*, size_t, const float*, const PreparedActivations&, size_t, size_t,
                          const MatMulOutput&) {
  return false;
}
bool Int4G32MatMulRowsAmx(const uint8_t*, size_t, const PreparedActivations&, size_t, size_t, const MatMulOutput&) {
  return false;
}
}  // namespace ternlm

#endif
