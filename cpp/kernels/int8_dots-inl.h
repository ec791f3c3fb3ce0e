// What the ternary, INT4 and head kernels (ternary_, int4_, int8_, q6_matmul-inl.h) share,
// compiled once per Highway target like them. Both multiply unsigned weight codes by
// int8 activations in the same lane layout (formats/ternary.h, formats/int4.h):
//
//   32-bit lane r of a code vector   = 4 codes of weight row r, columns c .. c+3
//   32-bit lane r of the activations = x[c .. c+3], the same in every lane (Broadcast4)
//
// so a per-lane dot of bytes gives row r's partial sum with no horizontal add. On x86
// without VNNI that dot is pmaddubsw (MulBytes: u8 x s8 -> i16 pairs), then pmaddwd by
// 1 (SumPairs: -> i32). The kernels that use them are written once in Highway ops at the
// target's full width: 512 bits on AVX3 and the VNNI targets (one vector = the 16 rows of a tile), 256 bits on
// AVX2 (8 rows, a tile in two parts); Highway 1.0.3 has no op for these two instructions,
// so they are the only per-width code.
#if defined(TERNLM_KERNELS_INT8_DOTS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TERNLM_KERNELS_INT8_DOTS_INL_H_
#undef TERNLM_KERNELS_INT8_DOTS_INL_H_
#else
#define TERNLM_KERNELS_INT8_DOTS_INL_H_
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "hwy/highway.h"
#include "kernels/target_paths.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Four activation bytes as one int32 (unaligned: a memcpy, which compiles to one load).
HWY_INLINE int32_t LoadI32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

#if HWY_TARGET != HWY_SCALAR
// The portable paths (targets without a hand-written kernel: SSE4, EMU128, ...) work in
// i16 lanes: N16 code bytes of a tile block (N16 / 4 rows x 4 bytes) widened to i16,
// fields isolated there and multiplied by i16 activations.
using DW16 = hn::ScalableTag<int16_t>;
constexpr size_t kMaxW16Lanes = HWY_MAX_BYTES / 2;

// p[0..3] widened to i16 and repeated over a vector of DW16, stored at dst: the
// activations of four consecutive columns, which every tile row's lane group multiplies.
HWY_INLINE void StoreWidened4(const int8_t* p, int16_t* HWY_RESTRICT dst) {
  const DW16 d16;
  const hn::Repartition<int8_t, DW16> d8;
  const auto rep = hn::BitCast(d8, hn::Set(hn::Repartition<int32_t, DW16>(), LoadI32(p)));
  hn::Store(hn::PromoteTo(d16, hn::LowerHalf(rep)), d16, dst);
}

// rows[(c + l) / 4] += lane l of sums: lanes of tile bytes c, c + 1, ... added to the
// rows they belong to (four bytes per row).
HWY_INLINE void AddLanesToRows(hn::Vec<DW16> sums, size_t c, int32_t* HWY_RESTRICT rows) {
  HWY_ALIGN int16_t lanes[kMaxW16Lanes];
  hn::Store(sums, DW16(), lanes);
  for (size_t l = 0; l < hn::Lanes(DW16()); ++l) rows[(c + l) / 4] += lanes[l];
}
#endif

#if TERNLM_PATH_AVX2 || TERNLM_PATH_AVX3 || TERNLM_PATH_VNNI
// Full-width vectors of the target: bytes of codes, int8 activations, i16 and i32 sums.
using DU8 = hn::ScalableTag<uint8_t>;
using DI8 = hn::Repartition<int8_t, DU8>;
using DI16 = hn::Repartition<int16_t, DU8>;
using DI32 = hn::Repartition<int32_t, DU8>;
constexpr size_t kVectorBytes = HWY_LANES(uint8_t);  // 32 (AVX2) or 64 (AVX3)
constexpr size_t kVectorRows = kVectorBytes / 4;     // tile rows per vector: 8 or 16
constexpr size_t kVectorsPerBlock = 64 / kVectorBytes;  // per 64-byte tile block: 2 or 1

// p[0..3] in every 32-bit lane.
HWY_INLINE hn::Vec<DI8> Broadcast4(const int8_t* p) { return hn::BitCast(DI8(), hn::Set(DI32(), LoadI32(p))); }

// Every byte shifted right by kShift within its 16-bit lane (one vpsrlw: the low bits of
// the next byte enter at the top, so callers mask the field they want).
template <int kShift>
HWY_INLINE hn::Vec<DU8> ShiftBytes(hn::Vec<DU8> v) {
  const hn::Repartition<uint16_t, DU8> du16;
  return hn::BitCast(DU8(), hn::ShiftRight<kShift>(hn::BitCast(du16, v)));
}

// pmaddubsw: u8 codes x s8 activations, adjacent products summed in i16 with signed
// saturation (callers bound the sums below 2^15). pmaddwd by 1: adjacent i16 summed in i32.
HWY_INLINE hn::Vec256<int16_t> MulBytes(hn::Vec256<uint8_t> codes, hn::Vec256<int8_t> x) {
  return hn::Vec256<int16_t>{_mm256_maddubs_epi16(codes.raw, x.raw)};
}
HWY_INLINE hn::Vec256<int32_t> SumPairs(hn::Vec256<int16_t> v) {
  return hn::Vec256<int32_t>{_mm256_madd_epi16(v.raw, _mm256_set1_epi16(1))};
}
#if TERNLM_PATH_AVX3 || TERNLM_PATH_VNNI
HWY_INLINE hn::Vec512<int16_t> MulBytes(hn::Vec512<uint8_t> codes, hn::Vec512<int8_t> x) {
  return hn::Vec512<int16_t>{_mm512_maddubs_epi16(codes.raw, x.raw)};
}
HWY_INLINE hn::Vec512<int32_t> SumPairs(hn::Vec512<int16_t> v) {
  return hn::Vec512<int32_t>{_mm512_madd_epi16(v.raw, _mm512_set1_epi16(1))};
}
#endif
#endif  // TERNLM_PATH_AVX2 || TERNLM_PATH_AVX3 || TERNLM_PATH_VNNI

// The head kernels' (int8_matmul-inl.h, q6_matmul-inl.h) i32 vectors of tile rows: full
// width with byte dots (8 rows on AVX2, 16 on AVX-512); otherwise one lane per tile row,
// at most 16 (4 on SSE4 / NEON, 1 on SCALAR).
#if TERNLM_PATH_BYTE_DOTS
using HeadDI32 = DI32;
#else
using HeadDI32 = hn::CappedTag<int32_t, 16>;
#endif

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#endif  // include guard
