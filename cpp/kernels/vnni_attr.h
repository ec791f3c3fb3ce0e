// TERNLM_VPDPBUSD(acc, a, b): acc += per i32 lane, the sum of 4 adjacent
// u8(a) * s8(b) products (EVEX vpdpbusd, AVX512-VNNI; 256- or 512-bit operands).
// Highway 1.0.3 compiles its AVX3_DL target with "avxvnni" rather than
// "avx512vnni", so _mm512_dpbusd_epi32 cannot be inlined there; the instruction
// is written directly. Use only in code compiled for HWY_AVX3_DL.
#pragma once
// Function attribute that adds AVX512-VNNI to Highway's AVX3_DL set, for kernels
// that are called (not inlined) from AVX3_DL code.
#define TERNLM_VNNI_ATTR \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512vnni,avx2,fma,bmi2,f16c")))
#if defined(__x86_64__) || defined(__i386__)
#define TERNLM_VPDPBUSD(acc, a, b) asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b))
#endif


