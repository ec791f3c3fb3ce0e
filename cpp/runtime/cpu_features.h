// What this CPU and OS offer beyond the Highway targets (hwy/targets.h detects those),
// each probed once, and whether this build compiles the kernels that use each extension
// (decided by compiler and architecture alone). Kernels ask here, directly or through the
// switches of runtime/targets.h; runtime includes no kernel header.
#pragma once

// Intel AMX kernels (kernels/amx_x86.cc): x86-64 Linux (the tile state is requested from
// the kernel) with a compiler that has the AMX intrinsics.
#if defined(__x86_64__) && (defined(__clang__) ? (__clang_major__ >= 12) : (__GNUC__ >= 11)) && \
    defined(__linux__)
#define TERNLM_AMX_KERNELS 1
#else
#define TERNLM_AMX_KERNELS 0
#endif

// aarch64 dot-product kernels (kernels/dotprod_aarch64.cc): GCC (which enables the
// extension per function), or a compiler whose baseline already has it.
#if defined(__aarch64__) && (defined(__ARM_FEATURE_DOTPROD) || (defined(__GNUC__) && !defined(__clang__)))
#define TERNLM_DOTPROD_KERNELS 1
#else
#define TERNLM_DOTPROD_KERNELS 0
#endif

namespace ternlm {

// AVX512-VNNI (vpdpbusd on 512-bit vectors).
bool CpuHasAvx512Vnni();
// The ARMv8.2 dot-product extension (SDOT/UDOT): Linux's HWCAP_ASIMDDP; every Apple
// Silicon core has it.
bool CpuHasArmDotProd();
// AMX-TILE and AMX-INT8 (with AVX512F/BW), and Linux granted this process the 8 KiB tile
// state (requested on the first call: arch_prctl(ARCH_REQ_XCOMP_PERM), Linux 5.16+).
bool CpuHasAmx();
// An Intel CPU with AVX-512 (the server cores, Skylake-SP and later).
bool CpuIsIntelAvx512();

}  // namespace ternlm
