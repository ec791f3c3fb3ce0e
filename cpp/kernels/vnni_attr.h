// TERNLM_VNNI_ATTR: a function attribute adding AVX512-VNNI (vpdpbusd) to Highway's
// AVX3_DL instruction set. Highway 1.0.3 compiles its AVX3_DL target with "avxvnni"
// (the VEX form) rather than "avx512vnni", so _mm512_dpbusd_epi32 cannot be inlined
// into HWY_ATTR code. Kernels that use it carry this attribute and are HWY_NOINLINE:
// calling a function with more target features is allowed, inlining it is not. Use
// only in code compiled for a TERNLM_PATH_VNNI target (kernels/target_paths.h; dispatch
// guarantees the CPU has VNNI there).
#pragma once
#define TERNLM_VNNI_ATTR \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512vnni,avx2,fma,bmi2,f16c")))

