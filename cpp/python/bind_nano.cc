// from_nano (a nano matrix from its sign factors and scales, formats/nano.h) and the test
// hook nano_bit_dots. Every argument is validated here (dtype -> TypeError; ndim, shape,
// contiguity, values -> ValueError naming the argument), as in bind_formats.cc.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "aligned_array.h"
#include "formats/quantized_matrix.h"
#include "kernels/nano_matmul.h"

namespace py = pybind11;

namespace ternlm {
namespace {

template <typename T>
py::array_t<T> Need(py::handle obj, const std::string& where, const char* dtype, int ndim) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(where + " must be a numpy array of " + dtype + ", got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(where + " must have dtype " + dtype + ", got " + std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style)) throw py::value_error(where + " must be C-contiguous (np.ascontiguousarray)");
  if (a.ndim() != ndim)
    throw py::value_error(where + " must be " + std::to_string(ndim) + "-D, got " + std::to_string(a.ndim()) + "-D");
  return AlignedArray(py::reinterpret_borrow<py::array_t<T>>(obj));
}

std::string Dims(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

QuantizedMatrix FromNanoPy(py::handle u_obj, py::handle v_obj, py::handle so_obj, py::handle si_obj) {
  py::array_t<int8_t> u = Need<int8_t>(u_obj, "from_nano: u", "int8", 2);
  py::array_t<int8_t> v = Need<int8_t>(v_obj, "from_nano: v", "int8", 2);
  py::array_t<float> so = Need<float>(so_obj, "from_nano: s_out", "float32", 1);
  py::array_t<float> si = Need<float>(si_obj, "from_nano: s_in", "float32", 1);
  const size_t rows = size_t(u.shape(0)), rank = size_t(u.shape(1)), cols = size_t(v.shape(0));
  if (size_t(v.shape(1)) != rank)
    throw py::value_error("from_nano: v has shape " + Dims(v) + ", expected (in, " + std::to_string(rank) +
                          ") (the rank is u.shape[1])");
  if (size_t(so.shape(0)) != rows)
    throw py::value_error("from_nano: s_out has shape " + Dims(so) + ", expected (" + std::to_string(rows) + ",)");
  if (size_t(si.shape(0)) != cols)
    throw py::value_error("from_nano: s_in has shape " + Dims(si) + ", expected (" + std::to_string(cols) + ",)");
  py::gil_scoped_release release;
  return FromNano(u.data(), v.data(), so.data(), si.data(), rows, cols, rank);
}

}  // namespace

void BindNano(py::module_& m) {
  m.def("from_nano", &FromNanoPy, py::arg("u"), py::arg("v"), py::arg("s_out"), py::arg("s_in"),
        "nano matrix W = diag(s_out) u v^T diag(s_in): u int8 {-1,1} [out, r], v int8 {-1,1} [in, r], "
        "s_out float32 [out], s_in float32 [in] (stored as fp16); cpp/formats/nano.h.");
  m.def("nano_bit_dots", [](py::handle bits_obj, py::handle q_obj) {
    py::array_t<uint8_t> bits = Need<uint8_t>(bits_obj, "nano_bit_dots: bits", "uint8", 2);
    py::array_t<int8_t> q = Need<int8_t>(q_obj, "nano_bit_dots: q", "int8", 2);
    const size_t n = size_t(q.shape(1));
    if (size_t(bits.shape(1)) * 8 != n)
      throw py::value_error("nano_bit_dots: bits has shape " + Dims(bits) + ", expected (rows, " +
                            std::to_string(n / 8) + ") = q.shape[1] / 8");
    py::array_t<int32_t> out({q.shape(0), bits.shape(0)});
    NanoBitDotsForTest(bits.data(), size_t(bits.shape(0)), n, q.data(), size_t(q.shape(0)), out.mutable_data());
    return out;
  }, py::arg("bits"), py::arg("q"),
     "out[j, r] = sum_i (bit i of bits[r] ? q[j, i] : -q[j, i]) by the dispatched nano kernel "
     "(bit i: byte i/8, bit i%8; tests).");
}

}  // namespace ternlm
