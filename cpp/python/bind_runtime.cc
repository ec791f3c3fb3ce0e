// Threads, Highway targets and the kernel-path switches of runtime/targets.h:
// set_num_threads, get_num_threads, supported_targets, current_target, set_target,
// reset_target, avx3_vnni / arm_dotprod / amx (+ set_), prefetch_distance (+ set_, default_),
// phase_times / reset_phase_times (a -DTERNLM_PHASE_TIMERS=ON build).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "runtime/phase_timers.h"
#include "runtime/targets.h"
#include "runtime/thread_pool.h"

namespace py = pybind11;

namespace ternlm {

void BindRuntime(py::module_& m) {
  m.def("phase_times", [] {
    const PhaseSnapshot s = ReadPhaseTimers();
    if (!s.enabled) return py::object(py::none());
    py::dict phases;
    for (int i = 0; i < int(Phase::kCount); ++i)
      phases[PhaseName(Phase(i))] = py::make_tuple(s.seconds[i], s.calls[i]);
    py::dict out;
    out["phases"] = phases;
    out["pool_runs"] = s.pool_runs;
    out["caller_wait_s"] = s.caller_wait_s;
    out["task_s"] = s.task_s;
    return py::object(out);
  }, "Per-phase forward totals since reset_phase_times(): {'phases': {name: (seconds, calls)}, "
     "'pool_runs', 'caller_wait_s', 'task_s': [seconds per pool thread]}; None unless the core was "
     "built with -DTERNLM_PHASE_TIMERS=ON (runtime/phase_timers.h).");
  m.def("reset_phase_times", &ResetPhaseTimers, "Zero the phase totals (phase_times).");
  m.def("set_num_threads", [](long n) {
    if (n < 0) throw py::value_error("set_num_threads: n must be >= 0 (0 = all cores), got " + std::to_string(n));
    SetNumThreads(size_t(n));
  }, py::arg("n"), "Threads used by matmul and the model when none is given (0: all cores; at most "
                  "max_threads()).");
  m.def("get_num_threads", [] { return GetNumThreads(); });
  m.def("max_threads", &MaxThreads, "The most threads a pool may have (4 x the cores).");
  m.def("_fail_thread_start_for_test", &FailThreadStartForTest, py::arg("index"),
        "Test hook: pools started from now on fail to create worker thread `index` (0: off).");
  m.def("supported_targets", &SupportedTargetNames,
        "Highway targets compiled in and supported by this CPU, best first.");
  m.def("current_target", &CurrentTargetName, "The target dynamic dispatch uses now.");
  m.def("set_target", &SetTarget, py::arg("name"),
        "Force one supported Highway target (for tests); '' restores normal dispatch.");
  m.def("reset_target", [] { SetTarget(""); });
  m.def("avx3_vnni", &Avx3VnniEnabled,
        "Whether the AVX3 target's ternary and INT4 kernels use vpdpbusd (the CPU has AVX512-VNNI, not switched off).");
  m.def("set_avx3_vnni", &SetAvx3Vnni, py::arg("on"),
        "Allow (default) or forbid vpdpbusd in the AVX3 target's ternary and INT4 kernels (for tests).");
  m.def("arm_dotprod", &ArmDotProdEnabled,
        "Whether the NEON ternary and INT4 kernels use vdotq_s32 (the CPU has the dot-product extension).");
  m.def("set_arm_dotprod", &SetArmDotProd, py::arg("on"),
        "Allow (default) or forbid vdotq_s32 in the NEON kernels (for tests).");
  m.def("amx", &AmxEnabled,
        "Whether the ternary and INT4 (group 32) kernels multiply 16+ activation rows with Intel AMX "
        "(the CPU has it, not switched off).");
  m.def("set_amx", &SetAmx, py::arg("on"), "Allow (default) or forbid AMX in the ternary and INT4 kernels (for tests).");
  m.def("prefetch_distance", &PrefetchDistance,
        "Bytes ahead of the weight stream that the decode kernels prefetch (0: off); "
        "default 4096 on Intel CPUs with AVX-512, 0 elsewhere (TERNLM_PREFETCH overrides).");
  m.def("set_prefetch_distance", &SetPrefetchDistance, py::arg("bytes"),
        "Set the kernels' software prefetch distance: a multiple of 64 bytes up to 1 MiB, 0 = off.");
  m.def("default_prefetch_distance", &DefaultPrefetchDistance,
        "The prefetch distance this CPU gets by default (4096 on Intel with AVX-512, 0 elsewhere).");
}

}  // namespace ternlm
