// The Highway targets this build compiled and this CPU supports, and a switch to
// force one of them (tests run every kernel on every target this way).
#pragma once
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
// target; its ternary kernel then uses vpdpbusd when this is true: the CPU has
// AVX512-VNNI and SetAvx3Vnni(false) was not called (tests run both paths that way).
bool Avx3VnniEnabled();
void SetAvx3Vnni(bool on);

// aarch64 CPUs with the dot-product extension (ARMv8.2 SDOT: Apple M1+, Graviton2+,
// Cortex-A76+, Neoverse) run the NEON ternary and INT4 kernels with vdotq_s32 when this is
// true: the CPU has it and SetArmDotProd(false) was not called.
bool ArmDotProdEnabled();
void SetArmDotProd(bool on);

}  // namespace ternlm
