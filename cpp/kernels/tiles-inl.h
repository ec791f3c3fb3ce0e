// The walk shared by the tiled kernels (ternary, int4, bf16: 16-row tiles, see
// formats/*.h), compiled once per Highway target like the kernels that include it.
#if defined(TERNLM_KERNELS_TILES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TERNLM_KERNELS_TILES_INL_H_
#undef TERNLM_KERNELS_TILES_INL_H_
#else
#define TERNLM_KERNELS_TILES_INL_H_
#endif

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "formats/tiles.h"  // kTileRows
#include "hwy/cache_control.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {

constexpr size_t kMaxActivationRows = 4;  // activation rows per pass over a tile

// fn(t, x0, nx) for every tile t in [r0 / 16, ceil(r1 / 16)) and every group of
// nx <= 4 activation rows starting at x0 (n rows in all). Decode (n <= 4) takes the
// tiles in order; prefill walks slices of tiles that fit in ~256 KiB of L2, each passed
// by every group, so each weight is read from memory once per call.
template <class Fn>
HWY_INLINE void ForEachTileGroup(size_t r0, size_t r1, size_t n, size_t tile_bytes, const Fn& fn) {
  const size_t t0 = r0 / kTileRows, t1 = (r1 + kTileRows - 1) / kTileRows;
  const size_t slice = n <= kMaxActivationRows ? (t1 - t0) : std::max<size_t>(1, (256 * 1024) / tile_bytes);
  for (size_t s0 = t0; s0 < t1; s0 += slice) {
    const size_t s1 = std::min(t1, s0 + slice);
    for (size_t x0 = 0; x0 < n; x0 += kMaxActivationRows) {
      const size_t nx = std::min(kMaxActivationRows, n - x0);
      for (size_t t = s0; t < s1; ++t) fn(t, x0, nx);
    }
  }
}

// fn(std::integral_constant<size_t, NX>()) for the run-time nx in 1..4, so kernels
// templated on the activation row count are instantiated once per count.
template <class Fn>
HWY_INLINE void WithActivationRows(size_t nx, const Fn& fn) {
  switch (nx) {
    case 4: fn(std::integral_constant<size_t, 4>()); break;
    case 3: fn(std::integral_constant<size_t, 3>()); break;
    case 2: fn(std::integral_constant<size_t, 2>()); break;
    default: fn(std::integral_constant<size_t, 1>()); break;
  }
}

// Software prefetch of the weight stream (runtime/targets.h, PrefetchDistance()): the
// `bytes` (a multiple of 64) of weights at p, `dist` bytes ahead. dist 0 (the default
// except on Intel CPUs) does nothing.
HWY_INLINE void PrefetchAhead(const uint8_t* p, size_t bytes, size_t dist) {
  if (dist == 0) return;
  for (size_t i = 0; i < bytes; i += 64) hwy::Prefetch(p + dist + i);
}

// y[x0 + j, r] = d[16 j + (r - 16 t)] for the rows of tile t below r1.
HWY_INLINE void StoreTileRows(const float* d, size_t t, size_t r1, size_t x0, size_t nx, float* y,
                              size_t y_stride) {
  const size_t rb = t * kTileRows, re = std::min(r1, rb + kTileRows);
  for (size_t j = 0; j < nx; ++j)
    for (size_t r = rb; r < re; ++r) y[(x0 + j) * y_stride + r] = d[kTileRows * j + (r - rb)];
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
