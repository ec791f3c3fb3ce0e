// Per-phase wall-clock totals of a forward, for profiling decode (benchmarks/decode_phases.py).
// Compiled in only with the CMake option TERNLM_PHASE_TIMERS=ON (a benchmark build): then
// TERNLM_PHASE(kQkv) times the rest of its scope into that phase, and the thread pool adds
// per thread the time spent inside tasks and, for the calling thread, the time it waits at
// the end of a Run for the other threads' tasks (imbalance and wake-up latency). Otherwise
// the macro is empty and nothing reads a clock.
//
// Phases are timed on the thread that runs the forward (one at a time: the engine's lock);
// the pool's per-thread totals are written by their own thread only, each on its own cache
// line. Read them between forwards (PhaseSnapshot).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ternlm {

enum class Phase : int {
  kEmbed, kRowWork, kQkv, kAttention, kO, kGateUp, kDown, kHead, kSample,
  kCount
};

struct PhaseSnapshot {
  bool enabled = false;                // built with TERNLM_PHASE_TIMERS
  double seconds[int(Phase::kCount)] = {};
  uint64_t calls[int(Phase::kCount)] = {};
  uint64_t pool_runs = 0;              // ThreadPool::Run calls that used the workers
  double caller_wait_s = 0;            // the calling thread waiting at the end of those Runs
  std::vector<double> task_s;          // per pool thread index: time inside tasks
};

const char* PhaseName(Phase p);
PhaseSnapshot ReadPhaseTimers();
void ResetPhaseTimers();

#ifdef TERNLM_PHASE_TIMERS
uint64_t PhaseClockNs();
void AddPhase(Phase p, uint64_t ns);
void AddPoolRun(uint64_t wait_ns);
void AddTaskTime(size_t thread, uint64_t ns);

class PhaseScope {
 public:
  explicit PhaseScope(Phase p) : p_(p), t0_(PhaseClockNs()) {}
  ~PhaseScope() { AddPhase(p_, PhaseClockNs() - t0_); }
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  Phase p_;
  uint64_t t0_;
};
#define TERNLM_PHASE_CAT2(a, b) a##b
#define TERNLM_PHASE_CAT(a, b) TERNLM_PHASE_CAT2(a, b)
#define TERNLM_PHASE(p) ::ternlm::PhaseScope TERNLM_PHASE_CAT(phase_scope_, __LINE__)(::ternlm::Phase::p)
#else
#define TERNLM_PHASE(p) \
  do {                  \
  } while (0)
#endif

}  // namespace ternlm
