// Scalar pack/unpack of the ternary and int4 layouts (ternary.h, int4.h) and the
// half / bfloat16 scalar conversions. Off the hot path: used when a matrix is built.
#include <cmath>
#include <cstring>

#include "formats/int4.h"
#include "formats/quantized_matrix.h"
#include "formats/ternary.h"

namespace ternlm {

void PackTernaryRow(const int8_t* t, size_t n, uint8_t* out) {
  const size_t padded = TernaryPaddedCols(n);
  for (size_t block = 0; block < padded; block += 256) {
    uint8_t* o = out + block / 4;
    for (size_t j = 0; j < 64; ++j) {
      uint8_t byte = 0;
      for (size_t k = 0; k < 4; ++k) {
        const size_t i = block + 64 * k + j;
        const int v = i < n ? t[i] + 1 : 1;  // padding weight is 0
        byte |= uint8_t(v & 3) << (2 * k);
      }
      o[j] = byte;
    }
  }
}

bool UnpackTernaryRow(const uint8_t* packed, size_t n, int8_t* out) {
  bool ok = true;
  for (size_t i = 0; i < n; ++i) {
    const size_t block = i / 256, k = (i % 256) / 64, j = i % 64;
    const int v = (packed[block * 64 + j] >> (2 * k)) & 3;
    ok &= v != 3;
    out[i] = int8_t(v - 1);
  }
  return ok;
}

// Byte of (row r, column c) in the tile layout, and the shift of its 2-bit field.
static inline size_t TernaryByteIndex(size_t padded_cols, size_t r, size_t c, unsigned* shift) {
  *shift = unsigned(2 * ((c % 16) / 4));
  return (r / 16) * TernaryTileBytes(padded_cols) + (c / 16) * 64 + 4 * (r % 16) + c % 4;
}

void TernarySetRow(uint8_t* data, size_t padded_cols, size_t r, const int8_t* t, size_t n) {
  for (size_t c = 0; c < n; ++c) {
    unsigned shift;
    uint8_t& byte = data[TernaryByteIndex(padded_cols, r, c, &shift)];
    byte = uint8_t((byte & ~(3u << shift)) | (unsigned((t[c] + 1) & 3) << shift));
  }
}

bool TernaryGetRow(const uint8_t* data, size_t padded_cols, size_t r, size_t n, int8_t* out) {
  bool ok = true;
  for (size_t c = 0; c < n; ++c) {
    unsigned shift;
    const int v = (data[TernaryByteIndex(padded_cols, r, c, &shift)] >> shift) & 3;
    ok &= v != 3;
    out[c] = int8_t(v - 1);
  }
  return ok;
}

void UnpackInt4Row(const uint8_t* packed, size_t n, uint8_t* out) {
  for (size_t i = 0; i < n; ++i) {
    const size_t block = i / 128, half = (i % 128) / 64, j = i % 64;
    out[i] = (packed[block * 64 + j] >> (4 * half)) & 15;
  }
}

uint16_t F16FromF32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return uint16_t(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0));
  if (abs >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {                                   // subnormal half (or zero)
    // value = abs_f * 2^24 in units of the smallest subnormal; round half to even.
    float a;
    std::memcpy(&a, &abs, 4);
    const float scaled = std::nearbyint(a * 16777216.0f);  // exact scaling by 2^24
    return uint16_t(sign | uint32_t(scaled));
  }
  // Normal: rebias exponent, round mantissa 23 -> 10 bits to nearest even.
  uint32_t m = abs - ((127u - 15u) << 23);
  const uint32_t round_bit = 1u << 12, sticky = round_bit - 1;
  const uint32_t lsb = (m >> 13) & 1u;
  if ((m & 0x1FFFu) > round_bit || ((m & 0x1FFFu) == round_bit && lsb)) m += 1u << 13;
  return uint16_t(sign | (m >> 13));
  (void)sticky;
}

float F32FromF16(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  uint32_t u;
  if (exp == 0) {
    const float v = float(man) * (1.0f / 16777216.0f);  // man * 2^-24
    std::memcpy(&u, &v, 4);
    u |= sign;
  } else if (exp == 31) {
    u = sign | 0x7F800000u | (man << 13);
  } else {
    u = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t BF16FromF32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

}  // namespace ternlm
