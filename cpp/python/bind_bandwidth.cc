// measure_read_bandwidth: the streaming-read probe (runtime/bandwidth.h).
#include <pybind11/pybind11.h>

#include <string>

#include "runtime/bandwidth.h"

namespace py = pybind11;

namespace ternlm {

void BindBandwidth(py::module_& m) {
  m.def(
      "measure_read_bandwidth",
      [](long threads, long long bytes, long repeats) {
        if (threads < 0)
          throw py::value_error("measure_read_bandwidth: threads must be >= 0 (0 = all cores), got " +
                                std::to_string(threads));
        if (bytes < 0) throw py::value_error("measure_read_bandwidth: bytes must be > 0, got " + std::to_string(bytes));
        if (repeats < 1) throw py::value_error("measure_read_bandwidth: repeats must be >= 1, got " + std::to_string(repeats));
        ReadBandwidthResult r;
        {
          py::gil_scoped_release release;
          r = MeasureReadBandwidth(size_t(threads), size_t(bytes), size_t(repeats));
        }
        return r.gb_per_s;
      },
      py::arg("threads"), py::arg("bytes") = 1LL << 30, py::arg("repeats") = 5,
      "Streaming-read memory bandwidth in GB/s (1e9 bytes/s): `threads` threads (0: all cores)\n"
      "read a buffer of `bytes` bytes (>= 64 KiB; use one well beyond the last-level cache),\n"
      "best of `repeats` runs. Releases the GIL.");
}

}  // namespace ternlm
