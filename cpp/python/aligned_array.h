// numpy arrays need not be aligned to their element size: np.frombuffer at an odd
// offset, or a view into a memory-mapped file (safetensors data offsets are only byte
// offsets). The bindings hand C++ typed pointers (const float*, const uint16_t*), so an
// unaligned array is copied first (numpy's copies are aligned); aligned ones pass as they
// are. Only odd inputs pay for the copy.
#pragma once
#include <pybind11/numpy.h>

namespace ternlm {

template <class A>
A AlignedArray(A a) {
  if (a.flags() & pybind11::detail::npy_api::NPY_ARRAY_ALIGNED_) return a;
  return pybind11::reinterpret_steal<A>(a.attr("copy")().release());
}

}  // namespace ternlm
