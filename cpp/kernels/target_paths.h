// Which hand-written kernel path a Highway target compiles. Used in #if inside the
// per-target -inl.h files, where HWY_TARGET is the target being compiled.
//
// Highway releases after 1.0.3 (the Debian 12 one) add targets for CPUs that have
// everything a path needs: AVX3_ZEN4 (Zen 4/5) and AVX3_SPR (Sapphire Rapids) have AVX-512
// VNNI and VBMI like AVX3_DL; NEON_WITHOUT_AES and NEON_BF16 are NEON on aarch64. Testing
// only the 1.0.3 names would send those CPUs to the portable kernels. A name that the
// installed Highway does not define reads as 0 in #if, so these tests hold on every version.
#pragma once

#define TERNLM_PATH_VNNI \
  (HWY_TARGET == HWY_AVX3_DL || HWY_TARGET == HWY_AVX3_ZEN4 || HWY_TARGET == HWY_AVX3_SPR)
#define TERNLM_PATH_AVX3 (HWY_TARGET == HWY_AVX3)
#define TERNLM_PATH_AVX2 (HWY_TARGET == HWY_AVX2)
#define TERNLM_PATH_NEON \
  (HWY_ARCH_ARM_A64 && (HWY_TARGET == HWY_NEON || HWY_TARGET == HWY_NEON_WITHOUT_AES || \
                        HWY_TARGET == HWY_NEON_BF16))
// The head kernels (int8_matmul-inl.h, q6_matmul-inl.h): pmaddubsw byte dots at the
// target's full width (kernels/int8_dots-inl.h) on every x86 target from AVX2 up.
#define TERNLM_PATH_BYTE_DOTS (TERNLM_PATH_AVX2 || TERNLM_PATH_AVX3 || TERNLM_PATH_VNNI)
