#include "runtime/phase_timers.h"

#include <atomic>
#include <chrono>

namespace ternlm {

namespace {
constexpr const char* kNames[int(Phase::kCount)] = {"embed", "row_work", "qkv", "attention", "o",
                                                    "gate_up", "down", "head", "sample"};
#ifdef TERNLM_PHASE_TIMERS
constexpr size_t kMaxTimedThreads = 256;
struct alignas(64) ThreadTotal {
  std::atomic<uint64_t> ns{0};
};
struct Totals {
  std::atomic<uint64_t> ns[int(Phase::kCount)] = {};
  std::atomic<uint64_t> calls[int(Phase::kCount)] = {};
  std::atomic<uint64_t> pool_runs{0}, wait_ns{0};
  ThreadTotal task[kMaxTimedThreads];
};
Totals& Global() {
  static Totals* t = new Totals;  // never destroyed: pool threads may still add during exit
  return *t;
}
#endif
}  // namespace

const char* PhaseName(Phase p) { return kNames[int(p)]; }

#ifdef TERNLM_PHASE_TIMERS
uint64_t PhaseClockNs() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}
void AddPhase(Phase p, uint64_t ns) {
  Global().ns[int(p)].fetch_add(ns, std::memory_order_relaxed);
  Global().calls[int(p)].fetch_add(1, std::memory_order_relaxed);
}
void AddPoolRun(uint64_t wait_ns) {
  Global().pool_runs.fetch_add(1, std::memory_order_relaxed);
  Global().wait_ns.fetch_add(wait_ns, std::memory_order_relaxed);
}
void AddTaskTime(size_t thread, uint64_t ns) {
  if (thread < kMaxTimedThreads) Global().task[thread].ns.fetch_add(ns, std::memory_order_relaxed);
}

PhaseSnapshot ReadPhaseTimers() {
  PhaseSnapshot s;
  s.enabled = true;
  Totals& g = Global();
  for (int i = 0; i < int(Phase::kCount); ++i) {
    s.seconds[i] = 1e-9 * double(g.ns[i].load(std::memory_order_relaxed));
    s.calls[i] = g.calls[i].load(std::memory_order_relaxed);
  }
  s.pool_runs = g.pool_runs.load(std::memory_order_relaxed);
  s.caller_wait_s = 1e-9 * double(g.wait_ns.load(std::memory_order_relaxed));
  size_t last = 0;
  for (size_t t = 0; t < kMaxTimedThreads; ++t)
    if (g.task[t].ns.load(std::memory_order_relaxed) != 0) last = t + 1;
  for (size_t t = 0; t < last; ++t) s.task_s.push_back(1e-9 * double(g.task[t].ns.load(std::memory_order_relaxed)));
  return s;
}
void ResetPhaseTimers() {
  Totals& g = Global();
  for (int i = 0; i < int(Phase::kCount); ++i) {
    g.ns[i].store(0, std::memory_order_relaxed);
    g.calls[i].store(0, std::memory_order_relaxed);
  }
  g.pool_runs.store(0, std::memory_order_relaxed);
  g.wait_ns.store(0, std::memory_order_relaxed);
  for (ThreadTotal& t : g.task) t.ns.store(0, std::memory_order_relaxed);
}
#else
PhaseSnapshot ReadPhaseTimers() { return PhaseSnapshot(); }
void ResetPhaseTimers() {}
#endif

}  // namespace ternlm
