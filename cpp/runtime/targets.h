// The Highway targets this build compiled and this CPU supports, and a switch to
// force one of them (tests run every kernel on every target this way); the switches
// of the kernel paths beyond Highway's targets (VNNI on AVX3, aarch64 dot product, AMX)
// and of software prefetch. The CPU probes behind them: runtime/cpu_features.h.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace ternlm {

// Names as Highway spells them ("AVX3_DL", "AVX3", "AVX2", "SSE4", "EMU128", ...),
// best first.
std::vector<std::string> SupportedTargetNames();
// The target dynamic dispatch picks now.
std::string CurrentTargetName();
// Restricts dispatch to one supported target; throws std::invalid_argument naming the
// supported ones otherwise. An empty name restores normal dispatch.
void SetTarget(const std::string& name);

// AVX-512 CPUs without VBMI but with VNNI (Cascade Lake, Cooper Lake) run Highway's AVX3
// target; its ternary and INT4 kernels then use vpdpbusd when this is true: the CPU has
// AVX512-VNNI and SetAvx3Vnni(false) was not called (tests run both paths that way).
bool Avx3VnniEnabled();
void SetAvx3Vnni(bool on);

// aarch64 CPUs with the dot-product extension (ARMv8.2 SDOT: Apple M1+, Graviton2+,
// Cortex-A76+, Neoverse) run the NEON ternary and INT4 kernels with vdotq_s32 when this is
// true: the CPU has it, this build has those kernels (kernels/dotprod_aarch64.h) and
// SetArmDotProd(false) was not called.
bool ArmDotProdEnabled();
void SetArmDotProd(bool on);

// Intel AMX (Sapphire Rapids and later Xeons): the ternary and INT4 (group 32) kernels of
// the AVX3_DL / AVX3 targets multiply 16 or more activation rows (prefill) with TDPBSUD
// (kernels/amx_x86.h) when this is true: the CPU has AMX-INT8, Linux granted the tile
// state, this build has those kernels, and SetAmx(false) was not called (tests run both
// paths that way).
bool AmxEnabled();
void SetAmx(bool on);

// Software prefetch of the weight stream in the tile kernels: each loop that loads a
// 64-byte line of a weight tile also prefetches the line this many bytes ahead (0: off).
// Intel's AVX-512 server cores need it to stream a core's weights from DRAM near memory
// speed, while on AMD Zen the hardware prefetchers keep up and it only costs instructions
// (benchmarks/results/README.md, "Software prefetch"), so the default is
// kIntelPrefetchBytes on Intel CPUs with AVX-512 and 0 elsewhere; TERNLM_PREFETCH (read by
// the Python package at import) or SetPrefetchDistance() overrides it.
constexpr size_t kIntelPrefetchBytes = 4096;
constexpr size_t kMaxPrefetchBytes = size_t(1) << 20;
size_t PrefetchDistance();
// Throws std::invalid_argument if bytes is not a multiple of 64 or above kMaxPrefetchBytes.
void SetPrefetchDistance(size_t bytes);
// The per-CPU default described above.
size_t DefaultPrefetchDistance();

}  // namespace ternlm
