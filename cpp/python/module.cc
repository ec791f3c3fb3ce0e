// The pybind11 module ternlm._core. Each area binds itself in its own file.
#include <pybind11/pybind11.h>

namespace ternlm {
void BindRuntime(pybind11::module_& m);    // bind_runtime.cc: threads, targets, kernel paths, prefetch
void BindFormats(pybind11::module_& m);    // bind_formats.cc: QuantizedMatrix, quantize, matmul
void BindModel(pybind11::module_& m);      // bind_model.cc: Transformer, Sampler
void BindBandwidth(pybind11::module_& m);  // bind_bandwidth.cc: memory-bandwidth probe
void BindNano(pybind11::module_& m);       // bind_nano.cc: from_nano, nano_bit_dots
}  // namespace ternlm

PYBIND11_MODULE(_core, m) {
  m.doc() = "ternlm C++ core";
  ternlm::BindRuntime(m);
  ternlm::BindFormats(m);
  ternlm::BindModel(m);
  ternlm::BindBandwidth(m);
  ternlm::BindNano(m);
}
