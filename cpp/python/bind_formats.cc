// QuantizedMatrix, quantize, matmul, pack/unpack_ternary, from_ternary, from_int4,
// concat_rows, from_buffers. Every argument is validated here (dtype -> TypeError;
// ndim, shape, contiguity, values -> ValueError, naming the argument and what was
// expected) so no caller of ternlm._core can crash the process.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>

#include "aligned_array.h"
#include "formats/quantize.h"
#include "formats/quantized_matrix.h"
#include "formats/ternary.h"
#include "kernels/activations.h"
#include "kernels/hadamard.h"
#include "kernels/matmul.h"
#include "kernels/matmul_testing.h"
#include "runtime/thread_pool.h"

namespace py = pybind11;

namespace ternlm {
namespace {

std::string ShapeStr(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += std::to_string(a.shape(i)) + (a.ndim() == 1 || i + 1 < a.ndim() ? (i + 1 < a.ndim() ? ", " : ",") : "");
  return s + ")";
}

// Checks that obj is a C-contiguous numpy array of dtype T and returns it (an aligned
// copy when it is not aligned: aligned_array.h).
template <typename T>
py::array_t<T> Require(py::handle obj, const std::string& where, const char* dtype_name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(where + " must be a numpy array of " + dtype_name + ", got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(where + " must have dtype " + dtype_name + ", got " +
                         std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(where + " must be C-contiguous (np.ascontiguousarray), got strides " +
                          std::string(py::str(py::tuple(a.attr("strides")))));
  return AlignedArray(py::reinterpret_borrow<py::array_t<T>>(obj));
}

void RequireNdim(const py::array& a, const std::string& where, int ndim) {
  if (a.ndim() != ndim)
    throw py::value_error(where + " must be " + std::to_string(ndim) + "-D, got shape " + ShapeStr(a));
}

// The pool a matmul or quantize call runs on; the caller holds it for the call. An explicit
// count stays cached (RecentPool), so a loop of matmul(threads=n) starts its threads once,
// and a model loaded with threads=n finds the pool its conversion used still running.
std::shared_ptr<ThreadPool> PoolFor(py::object threads, const char* fn = "matmul") {
  if (threads.is_none()) return DefaultPool();
  const long n = threads.cast<long>();
  if (n < 1) throw py::value_error(std::string(fn) + ": threads must be >= 1 or None, got " + std::to_string(n));
  return RecentPool(size_t(n));
}

TaskRunner RunnerOn(const std::shared_ptr<ThreadPool>& pool) {
  TaskRunner r;
  r.threads = pool->num_threads();
  r.run = [pool](size_t n, const std::function<void(size_t, size_t)>& fn) { pool->Run(n, fn); };
  return r;
}

// Quantizes rows x cols source weights at p (formats/quantize.h) on the pool of `threads`,
// without the GIL; `keep` (the array p points into) is held by the caller.
QuantizedMatrix QuantizeOnPool(const void* p, SourceType type, size_t rows, size_t cols, const std::string& format,
                               int group_size, py::object threads) {
  const WeightFormat f = ParseFormat(format);
  const TaskRunner runner = RunnerOn(PoolFor(threads, "quantize"));
  py::gil_scoped_release release;
  return QuantizeWeights(WeightRows(p, type, rows, cols), f, group_size, runner);
}

// quantize(w): float32 as it is, float16 as its bits (widened a few rows at a time).
QuantizedMatrix QuantizePy(py::handle w_obj, const std::string& format, int group_size, py::object threads) {
  if (py::isinstance<py::array>(w_obj) &&
      py::reinterpret_borrow<py::array>(w_obj).dtype().is(py::dtype("float16"))) {
    py::array a = py::reinterpret_borrow<py::array>(w_obj);
    if (!(a.flags() & py::array::c_style))
      throw py::value_error("quantize: w must be C-contiguous (np.ascontiguousarray), got strides " +
                            std::string(py::str(py::tuple(a.attr("strides")))));
    RequireNdim(a, "quantize: w", 2);
    a = AlignedArray(a);
    return QuantizeOnPool(a.data(), SourceType::kF16, size_t(a.shape(0)), size_t(a.shape(1)), format, group_size,
                          threads);
  }
  py::array_t<float> w = Require<float>(w_obj, "quantize: w", "float32 or float16");
  RequireNdim(w, "quantize: w", 2);
  return QuantizeOnPool(w.data(), SourceType::kF32, size_t(w.shape(0)), size_t(w.shape(1)), format, group_size,
                        threads);
}

// snprintf, not an ostringstream: a stream's number formatting goes through locale facets,
// which crash when another extension in the process brought a different libstdc++.
std::string Repr(const QuantizedMatrix& q) {
  char group[32] = "";
  if (q.group_size()) std::snprintf(group, sizeof group, ", group_size=%d", int(q.group_size()));
  char buf[256];
  std::snprintf(buf, sizeof buf, "QuantizedMatrix(format='%s', shape=(%zu, %zu)%s, bits_per_weight=%.4g, nbytes=%zu)",
                FormatName(q.format()), size_t(q.rows()), size_t(q.cols()), group, double(q.bits_per_weight()),
                size_t(q.nbytes()));
  return buf;
}

py::dict BuffersDict(const QuantizedMatrix& q) {
  py::dict d;
  for (const BufferView& b : q.Buffers()) {
    py::dtype dt(b.dtype);
    py::array a(dt, std::vector<py::ssize_t>{py::ssize_t(b.count)});
    if (b.count) std::memcpy(a.mutable_data(), b.data, b.count * dt.itemsize());  // an emptied matrix has none
    d[py::str(b.name)] = a;
  }
  return d;
}

QuantizedMatrix FromBuffersPy(const std::string& format, py::tuple shape, int group_size,
                              py::dict buffers) {
  if (shape.size() != 2) throw py::value_error("from_buffers: shape must be (rows, cols)");
  long long dims[2];
  for (size_t i = 0; i < 2; ++i) {
    // Python ints and numpy integers (anything with __index__), never floats or strings;
    // a value beyond long long is "too large" like any other shape CheckShape refuses.
    py::handle d = shape[i];
    PyObject* index = py::isinstance<py::bool_>(d) ? nullptr : PyNumber_Index(d.ptr());
    if (!index) {
      PyErr_Clear();
      throw py::type_error("from_buffers: shape[" + std::to_string(i) + "] must be an int, got " +
                           std::string(py::str(py::repr(d))));
    }
    int overflow = 0;
    dims[i] = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (overflow > 0)
      throw py::value_error("from_buffers: shape " + std::string(py::str(shape)) + " is too large");
    if (overflow < 0) dims[i] = -1;
  }
  const long long rows = dims[0], cols = dims[1];
  if (rows <= 0 || cols <= 0) throw py::value_error("from_buffers: shape must be positive");
  std::vector<BufferView> views;
  std::vector<py::array> keep;
  for (auto item : buffers) {
    const std::string name = py::str(item.first);
    if (!py::isinstance<py::array>(item.second))
      throw py::type_error("from_buffers: buffer '" + name + "' must be a numpy array");
    py::array a = py::reinterpret_borrow<py::array>(item.second);
    if (!(a.flags() & py::array::c_style))
      throw py::value_error("from_buffers: buffer '" + name + "' must be C-contiguous");
    keep.push_back(a);
    views.push_back({name, std::string(py::str(a.dtype())), size_t(a.size()), a.data()});
  }
  return QuantizedMatrix::FromBuffers(ParseFormat(format), size_t(rows), size_t(cols), group_size,
                                      views);
}

ActivationQuant ActivationQuantOf(const std::string& name) {
  if (name == "format") return ActivationQuant::kFormat;
  if (name == "int4-absmax") return ActivationQuant::kInt4Absmax;
  if (name == "int4-gaussian") return ActivationQuant::kInt4Gaussian;
  throw py::value_error("matmul: activations must be 'format', 'int4-absmax' or 'int4-gaussian', got '" + name + "'");
}

py::array_t<float> MatMulPy(py::handle x_obj, const QuantizedMatrix& q, py::object threads, py::object activations) {
  // None (the default) costs no string conversion on the plain path
  const ActivationQuant aq = activations.is_none() ? ActivationQuant::kFormat
                                                   : ActivationQuantOf(activations.cast<std::string>());
  py::array_t<float> x = Require<float>(x_obj, "matmul: x", "float32");
  if (x.ndim() != 1 && x.ndim() != 2)
    throw py::value_error("matmul: x must be 1-D [in] or 2-D [n, in], got shape " + ShapeStr(x));
  const size_t in = size_t(x.shape(x.ndim() - 1));
  const size_t n = x.ndim() == 1 ? 1 : size_t(x.shape(0));
  if (in != q.cols())
    throw py::value_error("matmul: x has " + std::to_string(in) + " columns, expected q.shape[1] = " +
                          std::to_string(q.cols()));
  const float* xp = x.data();
  for (size_t i = 0; i < n * in; ++i)
    if (!std::isfinite(xp[i]))
      throw py::value_error("matmul: x has a non-finite value at flat index " + std::to_string(i));
  py::array_t<float> y = x.ndim() == 1 ? py::array_t<float>({py::ssize_t(q.rows())})
                                       : py::array_t<float>({py::ssize_t(n), py::ssize_t(q.rows())});
  const std::shared_ptr<ThreadPool> pool = PoolFor(threads);
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release release;
    MatMul(q, xp, n, yp, *pool, aq);
  }
  return y;
}

// pack_ternary / unpack_ternary: the plain layout of formats/ternary.h (4 values per
// byte over the flattened array, exactly ceil(n / 4) bytes).
py::array_t<uint8_t> PackTernaryPy(py::handle t_obj) {
  py::array_t<int8_t> t = Require<int8_t>(t_obj, "pack_ternary: t", "int8");
  const size_t n = size_t(t.size());
  const int8_t* tp = t.data();
  for (size_t i = 0; i < n; ++i)
    if (tp[i] < -1 || tp[i] > 1)
      throw py::value_error("pack_ternary: t must hold only -1, 0, 1; got " + std::to_string(int(tp[i])) +
                            " at flat index " + std::to_string(i));
  py::array_t<uint8_t> out({py::ssize_t(PackedTernaryBytes(n))});
  PackTernary(tp, n, out.mutable_data());
  return out;
}

py::array_t<int8_t> UnpackTernaryPy(py::handle p_obj, std::vector<long> shape) {
  py::array_t<uint8_t> p = Require<uint8_t>(p_obj, "unpack_ternary: packed", "uint8");
  size_t n = 1;
  for (long d : shape) {
    if (d < 0) throw py::value_error("unpack_ternary: shape has a negative dimension");
    if (d > 0 && n > (size_t(1) << 48) / size_t(d)) throw py::value_error("unpack_ternary: shape is too large");
    n *= size_t(d);
  }
  if (size_t(p.size()) != PackedTernaryBytes(n))
    throw py::value_error("unpack_ternary: packed has " + std::to_string(p.size()) + " bytes, expected " +
                          std::to_string(PackedTernaryBytes(n)) + " (ceil(prod(shape) / 4))");
  py::array_t<int8_t> out(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  const size_t bad = UnpackTernary(p.data(), n, out.mutable_data());
  if (bad != n)
    throw py::value_error("unpack_ternary: element " + std::to_string(bad) + " holds the invalid 2-bit code 3");
  return out;
}

QuantizedMatrix FromTernaryPy(py::handle t_obj, py::handle mult_obj) {
  py::array_t<int8_t> t = Require<int8_t>(t_obj, "from_ternary: t", "int8");
  RequireNdim(t, "from_ternary: t", 2);
  const size_t rows = size_t(t.shape(0)), cols = size_t(t.shape(1));
  std::vector<float> mult(rows);
  if (py::isinstance<py::float_>(mult_obj) || py::isinstance<py::int_>(mult_obj)) {
    std::fill(mult.begin(), mult.end(), mult_obj.cast<float>());
  } else {
    py::array_t<float> m = Require<float>(mult_obj, "from_ternary: row_multiplier", "float32");
    if (m.ndim() != 1 || size_t(m.shape(0)) != rows)
      throw py::value_error("from_ternary: row_multiplier has shape " + ShapeStr(m) +
                            ", expected (" + std::to_string(rows) + ",) = t.shape[0]");
    std::memcpy(mult.data(), m.data(), rows * 4);
  }
  return FromTernary(t.data(), rows, cols, mult.data());
}

QuantizedMatrix FromBF16Py(py::handle bits_obj, const std::string& format) {
  if (format != "bf16" && format != "bf16c")
    throw py::value_error("from_bf16: format must be 'bf16' or 'bf16c', got '" + format + "'");
  py::array_t<uint16_t> b = Require<uint16_t>(bits_obj, "from_bf16: bits", "uint16 (bf16 bit patterns)");
  RequireNdim(b, "from_bf16: bits", 2);
  const uint16_t* p = b.data();
  const size_t rows = size_t(b.shape(0)), cols = size_t(b.shape(1));
  py::gil_scoped_release release;
  return format == "bf16" ? FromBF16(p, rows, cols) : FromBF16C(p, rows, cols);
}

// quantize() of the bits' values (any format), rows widened a few at a time.
QuantizedMatrix QuantizeBF16Py(py::handle bits_obj, const std::string& format, int group_size, py::object threads) {
  py::array_t<uint16_t> b = Require<uint16_t>(bits_obj, "quantize_bf16: bits", "uint16 (bf16 bit patterns)");
  RequireNdim(b, "quantize_bf16: bits", 2);
  return QuantizeOnPool(b.data(), SourceType::kBF16, size_t(b.shape(0)), size_t(b.shape(1)), format, group_size,
                        threads);
}

QuantizedMatrix FromInt4Py(py::handle q_obj, py::handle s_obj, py::handle m_obj, int group) {
  py::array_t<uint8_t> q = Require<uint8_t>(q_obj, "from_int4: q", "uint8");
  RequireNdim(q, "from_int4: q", 2);
  const size_t rows = size_t(q.shape(0)), cols = size_t(q.shape(1));
  if (group != 32 && group != 64 && group != 128)
    throw py::value_error("from_int4: group_size must be 32, 64 or 128, got " + std::to_string(group));
  if (cols % size_t(group))
    throw py::value_error("from_int4: group_size " + std::to_string(group) + " does not divide q.shape[1] = " +
                          std::to_string(cols));
  const std::string expect = "(" + std::to_string(rows) + ", " + std::to_string(cols / group) + ")";
  const uint16_t* sp[2];
  py::array keep[2];
  const char* names[2] = {"scale", "min"};
  py::handle objs[2] = {s_obj, m_obj};
  for (int i = 0; i < 2; ++i) {
    const std::string where = std::string("from_int4: ") + names[i];
    if (!py::isinstance<py::array>(objs[i]) ||
        !py::reinterpret_borrow<py::array>(objs[i]).dtype().is(py::dtype("float16")))
      throw py::type_error(where + " must be a numpy float16 array");
    py::array a = py::reinterpret_borrow<py::array>(objs[i]);
    if (!(a.flags() & py::array::c_style)) throw py::value_error(where + " must be C-contiguous");
    if (a.ndim() != 2 || size_t(a.shape(0)) != rows || size_t(a.shape(1)) != cols / group)
      throw py::value_error(where + " has shape " + ShapeStr(a) + ", expected " + expect);
    keep[i] = AlignedArray(a);
    sp[i] = static_cast<const uint16_t*>(keep[i].data());
  }
  return FromInt4(q.data(), sp[0], sp[1], rows, cols, group);
}

QuantizedMatrix FromQ6Py(py::handle u_obj, py::handle sc_obj, py::handle d_obj) {
  py::array_t<uint8_t> u = Require<uint8_t>(u_obj, "from_q6: u", "uint8");
  RequireNdim(u, "from_q6: u", 2);
  const size_t rows = size_t(u.shape(0)), cols = size_t(u.shape(1));
  if (cols % 16) throw py::value_error("from_q6: u.shape[1] = " + std::to_string(cols) + " is not a multiple of 16");
  py::array_t<int8_t> sc = Require<int8_t>(sc_obj, "from_q6: sc", "int8");
  if (sc.ndim() != 2 || size_t(sc.shape(0)) != rows || size_t(sc.shape(1)) != cols / 16)
    throw py::value_error("from_q6: sc has shape " + ShapeStr(sc) + ", expected (" + std::to_string(rows) + ", " +
                          std::to_string(cols / 16) + ")");
  const size_t nsup = (cols + 255) / 256;
  if (!py::isinstance<py::array>(d_obj) || !py::reinterpret_borrow<py::array>(d_obj).dtype().is(py::dtype("float16")))
    throw py::type_error("from_q6: d must be a numpy float16 array");
  py::array d = py::reinterpret_borrow<py::array>(d_obj);
  if (!(d.flags() & py::array::c_style)) throw py::value_error("from_q6: d must be C-contiguous");
  if (d.ndim() != 2 || size_t(d.shape(0)) != rows || size_t(d.shape(1)) != nsup)
    throw py::value_error("from_q6: d has shape " + ShapeStr(d) + ", expected (" + std::to_string(rows) + ", " +
                          std::to_string(nsup) + ")");
  py::array dk = AlignedArray(d);
  const uint16_t* dp = static_cast<const uint16_t*>(dk.data());
  py::gil_scoped_release release;
  return FromQ6(u.data(), sc.data(), dp, rows, cols);
}

}  // namespace

void BindFormats(py::module_& m) {
  py::class_<QuantizedMatrix>(m, "QuantizedMatrix",
                              "A weight matrix [out, in] in one of ternlm's formats.")
      .def_property_readonly("format", [](const QuantizedMatrix& q) { return FormatName(q.format()); })
      .def_property_readonly("shape", [](const QuantizedMatrix& q) { return py::make_tuple(q.rows(), q.cols()); })
      .def_property_readonly("nbytes", &QuantizedMatrix::nbytes)
      .def_property_readonly("bits_per_weight", &QuantizedMatrix::bits_per_weight)
      .def_property_readonly("group_size", &QuantizedMatrix::group_size)
      .def("dequantize", [](const QuantizedMatrix& q) {
        py::array_t<float> out({py::ssize_t(q.rows()), py::ssize_t(q.cols())});
        float* p = out.mutable_data();
        py::gil_scoped_release release;
        Dequantize(q, p);
        return out;
      }, "The matrix as float32 [out, in], exactly as matmul sees it.")
      .def("dequantize_row", [](const QuantizedMatrix& q, long r) {
        if (r < 0 || size_t(r) >= q.rows())
          throw py::index_error("dequantize_row: row " + std::to_string(r) + " out of range [0, " +
                                std::to_string(q.rows()) + ")");
        py::array_t<float> out({py::ssize_t(q.cols())});
        DequantizeRow(q, size_t(r), out.mutable_data());
        return out;
      }, py::arg("row"))
      .def("ternary_values", [](const QuantizedMatrix& q) {
        if (q.format() != WeightFormat::kTernary)
          throw py::value_error(std::string("ternary_values: the matrix is ") + FormatName(q.format()) +
                                ", expected ternary");
        py::array_t<int8_t> out({py::ssize_t(q.rows()), py::ssize_t(q.cols())});
        int8_t* p = out.mutable_data();
        for (size_t r = 0; r < q.rows(); ++r) TernaryGetRow(q.data(), q.padded_cols(), r, q.cols(), p + r * q.cols());
        return out;
      }, "The stored ternary values t in {-1, 0, 1} as int8 [out, in] (w = t * row multiplier).")
      .def("buffers", &BuffersDict, "The stored arrays (copies), by name; see from_buffers.")
      .def_static("from_buffers", &FromBuffersPy, py::arg("format"), py::arg("shape"),
                  py::arg("group_size"), py::arg("buffers"))
      .def("__repr__", &Repr);

  m.def("quantize", &QuantizePy, py::arg("w"), py::arg("format"), py::arg("group_size") = 32,
        py::arg("threads") = py::none(),
        "w float32 or float16 [out, in] -> QuantizedMatrix; rows in blocks over the pool of `threads` "
        "(None: the process pool), bit for bit the same result for any count (cpp/formats/quantize.h).");
  m.def("matmul", &MatMulPy, py::arg("x"), py::arg("q"), py::arg("threads") = py::none(),
        py::arg("activations") = py::none(),
        "activations: None or 'format' (the format's own quantization), or a model's 4-bit one, 'int4-absmax' / "
        "'int4-gaussian' (cpp/kernels/activations.h).");
  m.def("pack_ternary", &PackTernaryPy, py::arg("t"),
        "int8 {-1, 0, 1} array of any shape -> uint8 [ceil(t.size / 4)]: the values in row-major "
        "order, 4 per byte, element i as t + 1 in bits 2k..2k+1 (k = i % 4) of byte i // 4; the "
        "unused fields of the last byte hold 1 (a zero). Independent of the matrix layout.");
  m.def("unpack_ternary", &UnpackTernaryPy, py::arg("packed"), py::arg("shape"),
        "The inverse of pack_ternary: int8 array of the given shape. Raises ValueError unless packed "
        "holds ceil(prod(shape) / 4) bytes and no value's field holds the invalid code 3.");
  m.def("from_ternary", &FromTernaryPy, py::arg("t"), py::arg("row_multiplier"));
  m.def("from_bf16", &FromBF16Py, py::arg("bits"), py::arg("format") = "bf16",
        "A bf16 (or bf16c: the same values in ~12 bits) QuantizedMatrix from bf16 bit patterns "
        "(uint16 [out, in]) without a float32 copy.");
  m.def("quantize_bf16", &QuantizeBF16Py, py::arg("bits"), py::arg("format"), py::arg("group_size") = 32,
        py::arg("threads") = py::none(),
        "quantize() of the values of bf16 bit patterns (uint16 [out, in]), bit for bit, in any format, with "
        "no float32 copy of the matrix: rows widened a few at a time over the pool of `threads` (None: the "
        "process pool; cpp/formats/quantize.h).");
  m.def("from_int4", &FromInt4Py, py::arg("q"), py::arg("scale"), py::arg("min"),
        py::arg("group_size") = 32);
  m.def("from_q6", &FromQ6Py, py::arg("u"), py::arg("sc"), py::arg("d"),
        "q6 without loss (GGUF Q6_K numerics, cpp/formats/q6.h): u uint8 [rows, cols] in [0, 63], sc int8 "
        "[rows, cols/16], d float16 [rows, ceil(cols/256)]; w = d * sc * (u - 32).");
  m.def("concat_rows", [](py::list parts) {
    std::vector<const QuantizedMatrix*> ps;
    for (size_t i = 0; i < parts.size(); ++i) {
      if (!py::isinstance<QuantizedMatrix>(parts[i]))
        throw py::type_error("concat_rows: parts[" + std::to_string(i) + "] is not a QuantizedMatrix");
      ps.push_back(&parts[i].cast<const QuantizedMatrix&>());
    }
    return ConcatRows(ps);
  }, py::arg("parts"));
  m.def("quantize_activations_int8", [](py::handle x_obj) {
    py::array_t<float> x = Require<float>(x_obj, "quantize_activations_int8: x", "float32");
    RequireNdim(x, "quantize_activations_int8: x", 1);
    py::array_t<int8_t> q({x.shape(0)});
    const float inv = QuantizeActivationsInt8(x.data(), size_t(x.shape(0)), q.mutable_data());
    return py::make_tuple(q, inv);
  }, py::arg("x"), "(q int8, 1/s_x): the per-row activation quantization of formats/ternary.h (tests).");
  m.def("quantize_activations_int4", [](py::handle x_obj, const std::string& clip) {
    py::array_t<float> x = Require<float>(x_obj, "quantize_activations_int4: x", "float32");
    RequireNdim(x, "quantize_activations_int4: x", 1);
    if (clip != "absmax" && clip != "gaussian")
      throw py::value_error("quantize_activations_int4: clip must be 'absmax' or 'gaussian', got '" + clip + "'");
    py::array_t<int8_t> q({x.shape(0)});
    const float unit = QuantizeActivationsInt4(x.data(), size_t(x.shape(0)), clip == "gaussian", q.mutable_data());
    return py::make_tuple(q, unit);
  }, py::arg("x"), py::arg("clip"),
     "(q int8 odd codes in [-15, 15], unit): a model's 4-bit activation row (cpp/kernels/activations.h; tests).");
  m.def("hadamard_rotate", [](py::handle x_obj) {
    py::array_t<float> x = Require<float>(x_obj, "hadamard_rotate: x", "float32");
    RequireNdim(x, "hadamard_rotate: x", 2);
    const size_t rows = size_t(x.shape(0)), n = size_t(x.shape(1)), block = HadamardBlock(n);
    if (block == 0)
      throw py::value_error("hadamard_rotate: width " + std::to_string(n) + " is not a multiple of " +
                            std::to_string(kMinHadamardBlock) + " (kernels/hadamard.h)");
    py::array_t<float> y({py::ssize_t(rows), py::ssize_t(n)});
    std::memcpy(y.mutable_data(), x.data(), rows * n * sizeof(float));
    for (size_t r = 0; r < rows; ++r) HadamardRotate(y.mutable_data() + r * n, n, block);
    return py::make_tuple(y, block);
  }, py::arg("x"), "(x·H per row, block): the engine's online rotation (cpp/kernels/hadamard.h; tests).");
  m.def("ternary_int_dots", [](const QuantizedMatrix& q, py::handle x_obj) {
    py::array_t<int8_t> x = Require<int8_t>(x_obj, "ternary_int_dots: x", "int8");
    if (x.ndim() != 1 || size_t(x.shape(0)) != q.cols())
      throw py::value_error("ternary_int_dots: x has shape " + ShapeStr(x) + ", expected (" +
                            std::to_string(q.cols()) + ",)");
    py::array_t<int32_t> out({py::ssize_t(q.rows())});
    TernaryIntDotsForTest(q, x.data(), out.mutable_data());
    return out;
  }, py::arg("q"), py::arg("x"), "Exact int32 sums t·x of the dispatched ternary kernel (tests).");
  m.def("head_block_dots", [](const QuantizedMatrix& q, py::handle x_obj) {
    py::array_t<int8_t> x = Require<int8_t>(x_obj, "head_block_dots: x", "int8");
    if (x.ndim() != 1 || size_t(x.shape(0)) != q.cols())
      throw py::value_error("head_block_dots: x has shape " + ShapeStr(x) + ", expected (" +
                            std::to_string(q.cols()) + ",)");
    py::array_t<int32_t> out({py::ssize_t(q.rows()), py::ssize_t(q.padded_cols() / 32)});
    HeadBlockDotsForTest(q, x.data(), out.mutable_data());
    return out;
  }, py::arg("q"), py::arg("x"),
     "Exact int32 block sums I[r, b] of the dispatched int8 / q6 kernel (cpp/formats/int8.h, q6.h; tests).");
}

}  // namespace ternlm
