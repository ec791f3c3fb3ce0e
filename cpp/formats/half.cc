#include "formats/half.h"

#include <cmath>
#include <cstring>

namespace ternlm {

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
  const uint32_t round_bit = 1u << 12;
  const uint32_t lsb = (m >> 13) & 1u;
  if ((m & 0x1FFFu) > round_bit || ((m & 0x1FFFu) == round_bit && lsb)) m += 1u << 13;
  return uint16_t(sign | (m >> 13));
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
