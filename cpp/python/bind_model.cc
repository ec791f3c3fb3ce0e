// _core.Transformer, _core.Sampler and _core.tensor_schema (model/transformer.h,
// model/sampler.h, model/schema.h). These functions only convert between Python and C++.
//
// Ownership: Transformer(config, tensors, ...) MOVES the storage out of every
// QuantizedMatrix in `tensors` into the engine (model/weights.h: AssembleWeights), so a
// loaded model holds its weights once. The Python QuantizedMatrix objects are left empty
// (shape (0, 0)); get a copy of any matrix back with Transformer.matrix(name). Norm
// weights (float numpy arrays) are copied.
// Compute runs with the GIL released; the Transformer locks itself per chunk
// (model/transformer.h), and is only ever waited for with the GIL released. Between the
// chunks of a long prompt the forward checks for Ctrl-C (CheckSignals, outside the lock).
// Every call but batch() takes slot= (default 0): the KV-cache slot it runs on.
// threads=None uses the default pool as sized at construction (set_num_threads later
// does not change a built Transformer); threads=n the shared pool of n threads. A
// Transformer holds its pool: the pool's threads stop when no model or caller uses it
// (runtime/thread_pool.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "aligned_array.h"
#include "formats/quantized_matrix.h"
#include "model/config.h"
#include "model/sampler.h"
#include "model/schema.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "runtime/out_of_memory.h"
#include "runtime/thread_pool.h"

namespace py = pybind11;

namespace ternlm {
namespace {

// ---- config and tensors, as the C++ side reads them (model/config.h, model/weights.h) ----
class DictConfigValues : public ConfigValues {
 public:
  explicit DictConfigValues(py::dict d) : d_(std::move(d)) {}
  bool Has(const std::string& key) const override { return d_.contains(key) && !d_[py::str(key)].is_none(); }
  int64_t Int(const std::string& key) const override { return Get(key).cast<int64_t>(); }
  double Number(const std::string& key) const override { return Get(key).cast<double>(); }
  bool Bool(const std::string& key) const override { return Get(key).cast<bool>(); }
  std::string Text(const std::string& key) const override { return Get(key).cast<std::string>(); }
  std::unique_ptr<ConfigValues> Group(const std::string& key) const override {
    return std::make_unique<DictConfigValues>(Get(key).cast<py::dict>());
  }
  std::vector<int64_t> Ints(const std::string& key) const override { return Get(key).cast<std::vector<int64_t>>(); }
  std::vector<std::string> Texts(const std::string& key) const override {
    return Get(key).cast<std::vector<std::string>>();
  }

 private:
  py::object Get(const std::string& key) const { return d_[py::str(key)]; }
  py::dict d_;
};

ModelConfig ConfigOf(const py::dict& d) { return ParseModelConfig(DictConfigValues(d)); }

class DictTensorSource : public TensorSource {
 public:
  explicit DictTensorSource(const py::dict& d) : d_(d) {}
  std::vector<std::string> Names() const override {
    std::vector<std::string> names;
    for (auto item : d_) names.push_back(std::string(py::str(item.first)));
    return names;
  }
  bool Contains(const std::string& name) const override { return d_.contains(name); }
  QuantizedMatrix& Matrix(const std::string& name) override {
    py::handle h = d_[py::str(name)];
    if (!py::isinstance<QuantizedMatrix>(h))
      throw py::type_error("Transformer: tensor '" + name + "' must be a ternlm.QuantizedMatrix, got " +
                           std::string(py::str(py::type::of(h).attr("__name__"))));
    return h.cast<QuantizedMatrix&>();
  }
  FloatVector Vector(const std::string& name) const override {
    py::handle h = d_[py::str(name)];
    if (!py::isinstance<py::array>(h))
      throw py::type_error("Transformer: norm weight '" + name + "' must be a float32 numpy array");
    py::array a = py::reinterpret_borrow<py::array>(h);
    if (a.dtype().kind() != 'f')
      throw py::type_error("Transformer: norm weight '" + name + "' must be a float array, got " +
                           std::string(py::str(a.dtype())));
    FloatVector v;
    for (py::ssize_t i = 0; i < a.ndim(); ++i) v.shape.push_back(size_t(a.shape(i)));
    auto f = AlignedArray(py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a));
    v.values.assign(f.data(), f.data() + f.size());
    return v;
  }

 private:
  const py::dict& d_;
};

std::shared_ptr<ThreadPool> PoolFor(const py::object& threads) {
  if (threads.is_none()) return DefaultPool();
  const long n = threads.cast<long>();
  if (n < 1) throw py::value_error("Transformer: threads must be >= 1 or None, got " + std::to_string(n));
  return AcquirePool(size_t(n));
}

// context (any integer, numpy's too) as a size; beyond 64 bits it saturates (the
// Transformer then refuses it by the memory it would need).
size_t ContextOf(const py::object& obj) {
  PyObject* index = PyNumber_Index(obj.ptr());  // TypeError for a non-integer
  if (!index) throw py::error_already_set();
  const py::int_ context = py::reinterpret_steal<py::int_>(index);
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(context.ptr(), &overflow);
  if (overflow == 0 && v == -1 && PyErr_Occurred()) throw py::error_already_set();
  if (overflow < 0 || (overflow == 0 && v < 1))
    throw py::value_error("Transformer: context must be >= 1, got " + std::string(py::str(context)));
  return overflow > 0 ? SIZE_MAX : size_t(v);
}

// ---- Python objects ---------------------------------------------------------------------
// The pool is declared first, so it is released after the Transformer that runs on it.
struct PyTransformer {
  std::shared_ptr<ThreadPool> pool;
  std::unique_ptr<Transformer> t;
  std::mutex batch_mu;                 // guards the batch() scratch below
  std::vector<BatchEntry> entries;     // reserved for sequences() entries
  std::vector<int32_t> batch_tokens;   // reserved for chunk() tokens
};

size_t SlotOf(const PyTransformer& self, long long slot) {
  if (slot < 0 || size_t(slot) >= self.t->sequences())
    throw py::index_error("slot " + std::to_string(slot) + " is out of range [0, " +
                          std::to_string(self.t->sequences()) + ")");
  return size_t(slot);
}

// Between two chunks of a Forward / Prefill (model/transformer.h, SetBetweenChunks): take
// the GIL for a moment and run Python's signal handlers, so that Ctrl-C stops a long
// prompt within one chunk. The KeyboardInterrupt (or whatever a handler raised) propagates
// as the call's exception; the Transformer's position is left as before the call.
void CheckSignals() {
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

std::unique_ptr<PyTransformer> MakeTransformer(const py::dict& config, const py::dict& tensors,
                                               const py::object& context, const py::object& threads,
                                               const std::string& kv_dtype, const py::object& sequences) {
  const ModelConfig c = ConfigOf(config);
  const size_t ctx = ContextOf(context);
  if (kv_dtype != "f32" && kv_dtype != "f16")
    throw py::value_error("Transformer: kv_dtype must be 'f32' or 'f16', got '" + kv_dtype + "'");
  size_t seqs = 0;  // None: automatic (as many as fit, up to Transformer::kDefaultSequences)
  if (!sequences.is_none()) {
    const long long n = sequences.cast<long long>();
    if (n < 1 || size_t(n) > Transformer::kMaxSequences)
      throw py::value_error("Transformer: sequences must be None or in [1, " +
                            std::to_string(Transformer::kMaxSequences) + "], got " + std::to_string(n));
    seqs = size_t(n);
  }
  auto out = std::make_unique<PyTransformer>();
  out->pool = PoolFor(threads);
  DictTensorSource source(tensors);
  Weights w = AssembleWeights(c, source);  // reads the Python objects: holds the GIL
  py::gil_scoped_release release;
  out->t = std::make_unique<Transformer>(c, std::move(w), ctx, *out->pool,
                                         kv_dtype == "f16" ? KvDtype::kF16 : KvDtype::kF32, seqs);
  out->t->SetBetweenChunks(CheckSignals);
  out->entries.resize(out->t->sequences());
  out->batch_tokens.reserve(out->t->chunk());
  return out;
}

// [{name, layer, kind, role, shape, fusion, piece, hf_name, gguf_name}, ...] for config.
py::list TensorSchema(const py::dict& config) {
  py::list out;
  for (const TensorSpec& s : TensorSpecs(ConfigOf(config))) {
    py::dict e;
    e["name"] = s.name;
    e["layer"] = s.layer < 0 ? py::object(py::none()) : py::object(py::int_(s.layer));
    e["kind"] = std::string(s.decl->name);
    e["role"] = RoleName(s.role());
    e["shape"] = s.is_vector() ? py::tuple(py::make_tuple(s.rows)) : py::tuple(py::make_tuple(s.rows, s.cols));
    e["fusion"] = s.fusion() == Fusion::kNone ? py::object(py::none()) : py::object(py::str(FusionName(s.fusion())));
    e["piece"] = s.piece();
    e["hf_name"] = s.hf_name;
    e["gguf_name"] = s.gguf_name;
    out.append(e);
  }
  return out;
}

// ---- generation and scoring -----------------------------------------------------------
// One owner per check:
//   ternlm.Model (python/ternlm/model.py)  the public API: prompt ids, room in the context,
//       sampling values, with the caller's values in the messages; nothing below it fires
//       for a call it accepted.
//   this file  only what converting needs: an integer 1-D id array, a float logits
//       array, logits='last'|'all', a seed >= 0.
//   C++        the invariants, whoever calls: Transformer::CheckTokens (ids, context),
//       SamplingParams::Validate (ranges, when a Sampler's parameters are set, not per
//       token) and Sampler::SetHistory (history ids).

// Token ids as int32 for the engine. Values beyond int32 saturate, so they still fail the
// engine's range check instead of wrapping onto a valid id.
std::vector<int32_t> TokenIds(py::handle obj, const char* where) {
  py::array a = py::array::ensure(obj);
  if (!a || (a.dtype().kind() != 'i' && a.dtype().kind() != 'u'))
    throw py::type_error(std::string(where) + ": token ids must be an integer array");
  if (a.ndim() != 1)
    throw py::value_error(std::string(where) + ": token ids must be 1-D, got " + std::to_string(a.ndim()) + "-D");
  auto v = AlignedArray(py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a));
  std::vector<int32_t> ids(size_t(v.size()));
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = int32_t(std::clamp<int64_t>(v.data()[i], INT32_MIN, INT32_MAX));
  return ids;
}

int32_t TokenId(long long token) { return int32_t(std::clamp<long long>(token, INT32_MIN, INT32_MAX)); }

SamplingParams Params(double temperature, long long top_k, double top_p, double min_p, double penalty) {
  return SamplingParams{float(temperature), int64_t(top_k), float(top_p), float(min_p), float(penalty)};
}

uint64_t Seed(const py::object& seed) {
  if (seed.is_none()) {
    std::random_device rd;
    const uint64_t hi = rd();
    const uint64_t lo = rd();
    return (hi << 32) ^ lo;
  }
  const long long v = seed.cast<long long>();
  if (v < 0) throw py::value_error("Sampler: seed must be None or an int >= 0, got " + std::to_string(v));
  return uint64_t(v);
}

// Transformer.batch: converts the entries into the reused scratch (no allocation once the
// scratch has grown), runs Transformer::Batch without the GIL, returns the sampled ids.
py::list RunBatch(PyTransformer& self, const py::list& entries) {
  std::unique_lock<std::mutex> scratch_lock(self.batch_mu, std::defer_lock);
  {
    py::gil_scoped_release release;  // never wait holding the GIL: the holder needs it to return
    scratch_lock.lock();
  }
  const size_t k = entries.size();
  if (k == 0 || k > self.entries.size())
    throw py::value_error("batch: between 1 and " + std::to_string(self.entries.size()) + " entries, got " +
                          std::to_string(k));
  std::vector<int32_t>& toks = self.batch_tokens;
  toks.clear();
  for (size_t i = 0; i < k; ++i) {
    const py::tuple item = entries[i].cast<py::tuple>();
    if (item.size() != 4 && item.size() != 5)
      throw py::value_error("batch: each entry is (slot, tokens, sampler, decode[, draft])");
    BatchEntry& e = self.entries[i];
    e.slot = SlotOf(self, item[0].cast<long long>());
    const size_t before = toks.size();
    if (py::isinstance<py::int_>(item[1])) {
      toks.push_back(TokenId(item[1].cast<long long>()));
    } else {
      const std::vector<int32_t> ids = TokenIds(item[1], "batch");
      toks.insert(toks.end(), ids.begin(), ids.end());
    }
    e.n = toks.size() - before;
    e.sampler = item[2].is_none() ? nullptr : item[2].cast<Sampler*>();
    e.decode = item[3].cast<bool>();
    const long long draft = item.size() == 5 ? item[4].cast<long long>() : 0;
    if (draft < 0) throw py::value_error("batch: draft must be >= 0, got " + std::to_string(draft));
    e.draft = size_t(draft);
  }
  size_t offset = 0;  // toks is complete: no more reallocation, the pointers hold
  for (size_t i = 0; i < k; ++i) {
    self.entries[i].tokens = toks.data() + offset;
    offset += self.entries[i].n;
  }
  {
    py::gil_scoped_release release;
    self.t->Batch(self.entries.data(), k);
  }
  py::list out(k);
  for (size_t i = 0; i < k; ++i) {
    const BatchEntry& e = self.entries[i];
    if (!e.error.empty()) {
      out[i] = py::str(e.error);
    } else if (e.draft > 0) {  // verify: the accepted drafts, then the sampled token
      py::list got(e.accepted + 1);
      for (size_t j = 0; j < e.accepted; ++j) got[j] = py::int_(e.tokens[j + 1]);
      got[e.accepted] = py::int_(e.next);
      out[i] = std::move(got);
    } else if (e.sampler) {
      out[i] = py::int_(e.next);
    } else {
      out[i] = py::none();
    }
  }
  return out;
}

}  // namespace

void BindModel(py::module_& m) {
  // NonFiniteLogits: a ValueError of its own, so the Model can name the generation step.
  py::register_exception<NonFiniteLogits>(m, "NonFiniteLogitsError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });
  py::class_<Sampler>(m, "Sampler",
                      "Next-token sampler (repetition penalty, temperature, top-k, top-p, min-p), "
                      "reproducible for a seed (std::mt19937_64). It holds its parameters and the "
                      "repetition-penalty history: Transformer.prefill sets the history to the prompt, "
                      "Transformer.step adds each token it appends.")
      .def(py::init([](const py::object& seed, double temperature, long long top_k, double top_p, double min_p,
                       double repetition_penalty) {
             return std::make_unique<Sampler>(Seed(seed),
                                              Params(temperature, top_k, top_p, min_p, repetition_penalty));
           }),
           py::arg("seed") = py::none(), py::arg("temperature") = 0.0, py::arg("top_k") = 0,
           py::arg("top_p") = 1.0, py::arg("min_p") = 0.0, py::arg("repetition_penalty") = 1.0)
      .def("set_history",
           [](Sampler& s, py::handle ids_obj, size_t vocab) {
             const std::vector<int32_t> ids = TokenIds(ids_obj, "set_history");
             py::gil_scoped_release release;
             s.SetHistory(ids.data(), ids.size(), vocab);
           },
           py::arg("ids"), py::arg("vocab"),
           "Replace the repetition-penalty history with ids (int array) over a vocabulary of `vocab` "
           "tokens (what prefill does; Transformer.batch leaves it to the caller).")
      .def("sample",
           [](Sampler& s, py::handle logits_obj, double temperature, long long top_k, double top_p, double min_p,
              double repetition_penalty, const py::object& recent_tokens) {
             py::array a = py::array::ensure(logits_obj);
             if (!a || a.dtype().kind() != 'f' || a.ndim() != 1 || a.size() == 0)
               throw py::value_error("sample: logits must be a non-empty 1-D float array [vocab]");
             auto f = AlignedArray(py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a));
             std::vector<int32_t> recent;
             if (!recent_tokens.is_none()) recent = TokenIds(recent_tokens, "sample: recent_tokens");
             s.SetParams(Params(temperature, top_k, top_p, min_p, repetition_penalty));
             py::gil_scoped_release release;
             s.SetHistory(recent.data(), recent.size(), size_t(f.size()));
             return s.Sample(f.data());
           },
           py::arg("logits"), py::arg("temperature") = 0.0, py::arg("top_k") = 0, py::arg("top_p") = 1.0,
           py::arg("min_p") = 0.0, py::arg("repetition_penalty") = 1.0, py::arg("recent_tokens") = py::none(),
           "Standalone draw: sets the parameters and the history (recent_tokens) to these, then returns "
           "the next token id from logits [vocab]; temperature 0 = greedy (after the repetition penalty).");

  py::class_<PyTransformer>(m, "Transformer",
                            "Llama / BitNet decoder with a pool of KV-cache slots (sequences). Takes ownership "
                            "of the QuantizedMatrix storage in `tensors` (they are left empty; see matrix()).")
      .def(py::init(&MakeTransformer), py::arg("config"), py::arg("tensors"), py::arg("context"),
           py::arg("threads") = py::none(), py::arg("kv_dtype") = "f32", py::arg("sequences") = 1)
      .def("forward",
           [](PyTransformer& self, py::handle tokens, const std::string& logits, long long slot) {
             if (logits != "last" && logits != "all")
               throw py::value_error("forward: logits must be 'last' or 'all', got '" + logits + "'");
             Transformer& t = *self.t;
             const size_t vocab = t.config().vocab_size, s = SlotOf(self, slot);
             const std::vector<int32_t> ids = TokenIds(tokens, "forward");
             const bool all = logits == "all";
             py::array_t<float> out = all ? py::array_t<float>({py::ssize_t(ids.size()), py::ssize_t(vocab)})
                                          : py::array_t<float>({py::ssize_t(vocab)});
             float* y = out.mutable_data();
             {
               py::gil_scoped_release release;
               t.Forward(ids.data(), ids.size(), all, y, s);
             }
             return out;
           },
           py::arg("tokens"), py::arg("logits") = "last", py::arg("slot") = 0,
           "Append tokens (int array [n]) at `position`; logits float32 [vocab] of the last token "
           "('last') or [n, vocab] ('all').")
      .def("prefill",
           [](PyTransformer& self, py::handle tokens, Sampler& sampler, long long slot) {
             const std::vector<int32_t> ids = TokenIds(tokens, "prefill");
             const size_t s = SlotOf(self, slot);
             py::gil_scoped_release release;
             return self.t->Prefill(ids.data(), ids.size(), sampler, s);
           },
           py::arg("tokens"), py::arg("sampler"), py::arg("slot") = 0,
           "Append the prompt (int array [n]) at `position`, set the sampler's penalty history to it and "
           "return the first token sampled from the last row's logits (no logits leave C++).")
      .def("step",
           [](PyTransformer& self, long long token, Sampler& sampler, long long slot) {
             const int32_t id = TokenId(token);
             const size_t s = SlotOf(self, slot);
             py::gil_scoped_release release;
             return self.t->Step(id, sampler, s);
           },
           py::arg("token"), py::arg("sampler"), py::arg("slot") = 0,
           "Append one token (the last sampled), add it to the sampler's history and return the next "
           "sampled token.")
      .def("batch", &RunBatch, py::arg("entries"),
           "One forward chunk over several slots (continuous batching). entries: a list of "
           "(slot, tokens, sampler or None, decode[, draft]): tokens an int (one token) or an int array; "
           "decode=True adds the token to the sampler's history first (as step). draft > 0 (speculative "
           "decoding): tokens = [last sampled, draft drafted tokens], verified in this one pass; the "
           "rejected ones leave the cache. Returns one item per "
           "entry: the sampled token id, a list (a verify entry: the accepted drafts, then the sampled "
           "token), None (no sampler) or a str saying why the logits could not be sampled (not finite).")
      .def_property_readonly("position", [](PyTransformer& self) { return self.t->position(0); },
                             "Tokens in the KV cache of slot 0.")
      .def("position_of", [](PyTransformer& self, long long slot) { return self.t->position(SlotOf(self, slot)); },
           py::arg("slot"), "Tokens in the KV cache of `slot`.")
      .def_property_readonly("sequences", [](PyTransformer& self) { return self.t->sequences(); },
                             "KV-cache slots (the most sequences that run at once).")
      .def_property_readonly("chunk", [](PyTransformer& self) { return self.t->chunk(); },
                             "Rows of one forward chunk: the most tokens one batch() call appends.")
      .def_property_readonly("context", [](PyTransformer& self) { return self.t->context(); })
      .def_property_readonly("kv_dtype", [](PyTransformer& self) {
        return std::string(self.t->kv_dtype() == KvDtype::kF16 ? "f16" : "f32");
      }, "element type of the KV cache: 'f32' or 'f16'")
      .def_property_readonly("memory_bytes", [](PyTransformer& self) { return self.t->memory_bytes(); },
                             "Weights + KV caches + scratch buffers, in bytes.")
      .def("reset", [](PyTransformer& self, long long slot) {
             const size_t s = SlotOf(self, slot);
             py::gil_scoped_release release;  // never wait for the engine holding the GIL (CheckSignals)
             self.t->Reset(s);
           }, py::arg("slot") = 0)
      .def("truncate",
           [](PyTransformer& self, long pos, long long slot) {
             if (pos < 0) throw py::value_error("truncate: pos must be >= 0, got " + std::to_string(pos));
             const size_t s = SlotOf(self, slot);
             py::gil_scoped_release release;
             self.t->Truncate(size_t(pos), s);
           },
           py::arg("pos"), py::arg("slot") = 0, "Keep the first pos cached positions (pos <= position).")
      .def("matrix",
           [](PyTransformer& self, const std::string& name) {
             try {
               py::gil_scoped_release release;
               return CopyMatrix(self.t->weights(), self.t->config(), name);
             } catch (const std::out_of_range& e) {
               throw py::key_error(e.what());
             }
           },
           py::arg("name"), "A copy of the matrix stored under its canonical name (e.g. 'layers.0.q').");
  m.def("tensor_schema", &TensorSchema, py::arg("config"),
        "The tensors of a model with this config (ModelConfig.to_dict()), in load order, each a dict "
        "{name, layer, kind, role, shape, fusion, piece, hf_name, gguf_name} (model/schema.h).");
}

}  // namespace ternlm
