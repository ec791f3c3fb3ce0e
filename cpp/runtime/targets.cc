#include "runtime/targets.h"

#include <atomic>
#include <stdexcept>

#include "hwy/highway.h"
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
}  // namespace

bool ArmDotProdEnabled() { return CpuHasArmDotProd() && !g_arm_dotprod_off.load(std::memory_order_relaxed); }
void SetArmDotProd(bool on) { g_arm_dotprod_off.store(!on, std::memory_order_relaxed); }

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
