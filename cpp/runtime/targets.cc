#include "runtime/targets.h"

#include <atomic>
#include <stdexcept>
#include <string>

#include "hwy/highway.h"
#include "hwy/targets.h"
#include "runtime/cpu_features.h"

namespace ternlm {
namespace {
int64_t g_forced = 0;  // the target SetTarget() forced, 0: none
std::atomic<bool> g_avx3_vnni_off{false};
std::atomic<bool> g_arm_dotprod_off{false};
std::atomic<bool> g_amx_off{false};

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

// The extension kernels run only where they were built (the macros of cpu_features.h);
// the probes are not even asked otherwise (AMX's asks Linux for the tile state).
bool ArmDotProdEnabled() {
  return TERNLM_DOTPROD_KERNELS && CpuHasArmDotProd() && !g_arm_dotprod_off.load(std::memory_order_relaxed);
}
void SetArmDotProd(bool on) { g_arm_dotprod_off.store(!on, std::memory_order_relaxed); }

bool AmxEnabled() { return TERNLM_AMX_KERNELS && CpuHasAmx() && !g_amx_off.load(std::memory_order_relaxed); }
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
