#include "runtime/targets.h"

#include <atomic>
#include <stdexcept>
#include <string>

#include "hwy/highway.h"
#include "kernels/amx_x86.h"
#include "kernels/dotprod_aarch64.h"
#include "hwy/targets.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

namespace ternlm {
namespace {
int64_t g_forced = 0;  // the target SetTarget() forced, 0: none
std::atomic<bool> g_avx3_vnni_off{false};

bool CpuHasAvx512Vnni() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool has = __builtin_cpu_supports("avx512vnni");
  return has;
#else
  return false;
#endif
}
std::atomic<bool> g_arm_dotprod_off{false};

bool CpuHasArmDotProd() {
#if !TERNLM_DOTPROD_KERNELS
  return false;  // not built (see kernels/dotprod_aarch64.h)
#elif defined(__aarch64__) && defined(__linux__)
  static const bool has = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
  return has;
#elif defined(__aarch64__) && defined(__APPLE__)
  return true;  // every Apple Silicon core has it
#else
  return false;
#endif
}
// Intel with AVX-512: the server cores (Skylake-SP .. Emerald Rapids) where prefetch was
// measured to help; Intel client cores without AVX-512 keep the hardware prefetchers alone.
bool CpuIsIntelAvx512() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  static const bool intel = [] {
    __builtin_cpu_init();  // may run before libgcc's own constructor has
    return __builtin_cpu_is("intel") != 0 && __builtin_cpu_supports("avx512f") != 0;
  }();
  return intel;
#else
  return false;
#endif
}

constexpr size_t kPrefetchUnset = ~size_t(0);
std::atomic<size_t> g_prefetch{kPrefetchUnset};  // resolved on first use
}  // namespace

size_t DefaultPrefetchDistance() { return CpuIsIntelAvx512() ? kIntelPrefetchBytes : 0; }
size_t PrefetchDistance() {
  size_t d = g_prefetch.load(std::memory_order_relaxed);
  if (d == kPrefetchUnset) {
    d = DefaultPrefetchDistance();
    size_t unset = kPrefetchUnset;
    if (!g_prefetch.compare_exchange_strong(unset, d, std::memory_order_relaxed)) d = unset;
  }
  return d;
}
void SetPrefetchDistance(size_t bytes) {
  if (bytes % 64 != 0 || bytes > kMaxPrefetchBytes)
    throw std::invalid_argument("prefetch distance must be a multiple of 64 bytes in [0, " +
                                std::to_string(kMaxPrefetchBytes) + "], got " + std::to_string(bytes));
  g_prefetch.store(bytes, std::memory_order_relaxed);
}

bool ArmDotProdEnabled() { return CpuHasArmDotProd() && !g_arm_dotprod_off.load(std::memory_order_relaxed); }
void SetArmDotProd(bool on) { g_arm_dotprod_off.store(!on, std::memory_order_relaxed); }

std::atomic<bool> g_amx_off{false};
bool AmxEnabled() { return CpuHasAmx() && !g_amx_off.load(std::memory_order_relaxed); }
void SetAmx(bool on) { g_amx_off.store(!on, std::memory_order_relaxed); }

bool Avx3VnniEnabled() { return CpuHasAvx512Vnni() && !g_avx3_vnni_off.load(std::memory_order_relaxed); }
void SetAvx3Vnni(bool on) { g_avx3_vnni_off.store(!on, std::memory_order_relaxed); }

std::vector<std::string> SupportedTargetNames() {
  // Enumerate without the test mock, then restore it.
  if (g_forced) hwy::SetSupportedTargetsForTest(0);
  std::vector<std::string> names;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) names.push_back(hwy::TargetName(t));
  if (g_forced) {
    hwy::SetSupportedTargetsForTest(g_forced);
    hwy::GetChosenTarget().Update(hwy::SupportedTargets());
  }
  return names;
}

std::string CurrentTargetName() {
  // Dispatch uses the best (lowest-bit) target of the supported set.
  const int64_t targets = hwy::SupportedTargets() & HWY_TARGETS;
  return hwy::TargetName(targets & ~(targets - 1));
}

void SetTarget(const std::string& name) {
  if (name.empty()) {
    g_forced = 0;
    hwy::SetSupportedTargetsForTest(0);
    hwy::GetChosenTarget().Update(hwy::SupportedTargets());
    return;
  }
  hwy::SetSupportedTargetsForTest(0);  // enumerate all, not just a forced one
  std::string known;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) {
    if (name == hwy::TargetName(t)) {
      g_forced = t;
      hwy::SetSupportedTargetsForTest(t);
      hwy::GetChosenTarget().Update(hwy::SupportedTargets());
      return;
    }
    known += std::string(known.empty() ? "" : ", ") + hwy::TargetName(t);
  }
  if (g_forced) {
    hwy::SetSupportedTargetsForTest(g_forced);
    hwy::GetChosenTarget().Update(hwy::SupportedTargets());
  }
  throw std::invalid_argument("set_target: '" + name + "' is not a supported target; supported: " + known);
}

}  // namespace ternlm
