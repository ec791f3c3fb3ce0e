// _core.Transformer and _core.Sampler (model/transformer.h, model/sampler.h).
//
// Ownership: Transformer(config, tensors, ...) MOVES the storage out of every
// QuantizedMatrix in `tensors` into the engine (q/k/v and gate/up are then fused with
// ConcatRows when their formats agree), so a loaded model holds its weights once.
// The Python QuantizedMatrix objects are left empty (shape (0, 0)); get a copy of any
// matrix back with Transformer.matrix(name). Norm weights (float numpy arrays) are copied.
// Compute runs with the GIL released; one call at a time per Transformer (a mutex).
// threads=None uses the default pool as sized at construction (set_num_threads later
// does not change a built Transformer); threads=n a process-wide pool of n threads.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>

#include "formats/quantized_matrix.h"
#include "model/config.h"
#include "model/sampler.h"
#include "model/transformer.h"
#include "runtime/thread_pool.h"

namespace py = pybind11;

namespace ternlm {
namespace {

std::string ShapeStr(size_t a, size_t b) { return "(" + std::to_string(a) + ", " + std::to_string(b) + ")"; }

// ---- config ---------------------------------------------------------------------------
py::object Field(const py::dict& d, const char* key) {
  if (!d.contains(key)) throw py::value_error(std::string("Transformer: config lacks '") + key + "'");
  return d[key];
}

size_t PositiveInt(const py::dict& d, const char* key) {
  const long v = Field(d, key).cast<long>();
  if (v <= 0) throw py::value_error(std::string("Transformer: config '") + key + "' must be > 0, got " + std::to_string(v));
  return size_t(v);
}

ModelConfig ConfigFromDict(const py::dict& d) {
  ModelConfig c;
  const std::string arch = Field(d, "arch").cast<std::string>();
  if (arch == "llama") c.arch = Arch::kLlama;
  else if (arch == "bitnet") c.arch = Arch::kBitNet;
  else throw py::value_error("Transformer: config arch '" + arch + "' is not 'llama' or 'bitnet'");
  c.vocab_size = PositiveInt(d, "vocab_size");
  c.hidden_size = PositiveInt(d, "hidden_size");
  c.intermediate_size = PositiveInt(d, "intermediate_size");
  c.num_layers = PositiveInt(d, "num_layers");
  c.num_heads = PositiveInt(d, "num_heads");
  c.num_kv_heads = PositiveInt(d, "num_kv_heads");
  c.head_dim = PositiveInt(d, "head_dim");
  if (d.contains("rms_norm_eps")) c.rms_norm_eps = d["rms_norm_eps"].cast<float>();
  if (d.contains("rope_theta")) c.rope_theta = d["rope_theta"].cast<double>();
  const std::string act = d.contains("hidden_act") ? d["hidden_act"].cast<std::string>()
                                                   : (c.arch == Arch::kLlama ? "silu" : "relu2");
  if (act == "silu") c.hidden_act = HiddenAct::kSilu;
  else if (act == "relu2") c.hidden_act = HiddenAct::kRelu2;
  else throw py::value_error("Transformer: config hidden_act '" + act + "' is not 'silu' or 'relu2'");
  if (d.contains("tie_word_embeddings")) c.tie_word_embeddings = d["tie_word_embeddings"].cast<bool>();
  if (d.contains("rope_scaling") && !d["rope_scaling"].is_none()) {
    py::dict s = d["rope_scaling"].cast<py::dict>();
    const std::string type = s.contains("rope_type") ? s["rope_type"].cast<std::string>() : "";
    if (type != "llama3")
      throw py::value_error("Transformer: config rope_scaling type '" + type + "' is not supported (llama3 only)");
    for (const char* k : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
      if (!s.contains(k)) throw py::value_error(std::string("Transformer: config rope_scaling lacks '") + k + "'");
    c.rope_scaling.enabled = true;
    c.rope_scaling.factor = s["factor"].cast<double>();
    c.rope_scaling.low_freq_factor = s["low_freq_factor"].cast<double>();
    c.rope_scaling.high_freq_factor = s["high_freq_factor"].cast<double>();
    c.rope_scaling.original_max_position_embeddings = s["original_max_position_embeddings"].cast<double>();
  }
  c.Validate();
  return c;
}

// ---- tensors --------------------------------------------------------------------------
struct TensorTaker {
  const py::dict& tensors;
  std::set<const QuantizedMatrix*> taken;

  py::handle Get(const std::string& name) const {
    if (!tensors.contains(name)) throw py::value_error("Transformer: missing tensor '" + name + "'");
    return tensors[py::str(name)];
  }

  // Validates every matrix first (CheckMatrix), then moves (Take), so an error leaves
  // the caller's matrices untouched.
  QuantizedMatrix& CheckMatrix(const std::string& name, size_t rows, size_t cols) {
    py::handle h = Get(name);
    if (!py::isinstance<QuantizedMatrix>(h))
      throw py::type_error("Transformer: tensor '" + name + "' must be a ternlm.QuantizedMatrix, got " +
                           std::string(py::str(py::type::of(h).attr("__name__"))));
    QuantizedMatrix& m = h.cast<QuantizedMatrix&>();
    if (m.rows() != rows || m.cols() != cols)
      throw py::value_error("Transformer: tensor '" + name + "' has shape " + ShapeStr(m.rows(), m.cols()) +
                            ", expected " + ShapeStr(rows, cols) +
                            (m.rows() == 0 ? " (empty: already moved into another Transformer?)" : ""));
    if (!taken.insert(&m).second)
      throw py::value_error("Transformer: tensor '" + name + "' is the same object as another tensor");
    return m;
  }

  // The source is reset to an empty (0, 0) matrix: a defaulted move would leave its
  // shape behind with no storage.
  QuantizedMatrix Take(const std::string& name) {
    QuantizedMatrix& src = Get(name).cast<QuantizedMatrix&>();
    QuantizedMatrix out = std::move(src);
    src = QuantizedMatrix();
    return out;
  }

  std::vector<float> Norm(const std::string& name, size_t n) const {
    py::handle h = Get(name);
    if (!py::isinstance<py::array>(h))
      throw py::type_error("Transformer: norm weight '" + name + "' must be a float32 numpy array");
    py::array a = py::reinterpret_borrow<py::array>(h);
    if (a.dtype().kind() != 'f')
      throw py::type_error("Transformer: norm weight '" + name + "' must be a float array, got " +
                           std::string(py::str(a.dtype())));
    if (a.ndim() != 1 || size_t(a.shape(0)) != n)
      throw py::value_error("Transformer: norm weight '" + name + "' has shape " +
                            std::string(py::str(py::tuple(a.attr("shape")))) + ", expected (" +
                            std::to_string(n) + ",)");
    auto f = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
    std::vector<float> out(f.data(), f.data() + n);
    for (size_t i = 0; i < n; ++i)
      if (!std::isfinite(out[i]))
        throw py::value_error("Transformer: norm weight '" + name + "' has a non-finite value at index " +
                              std::to_string(i));
    return out;
  }
};

// The parts of one fused projection; concatenated when all formats (and int4 groups) agree.
FusedProjection Fuse(std::vector<QuantizedMatrix> parts) {
  FusedProjection p;
  bool same = true;
  for (const QuantizedMatrix& m : parts) {
    p.rows += m.rows();
    same = same && m.format() == parts[0].format() && m.group_size() == parts[0].group_size();
  }
  if (same) {
    std::vector<const QuantizedMatrix*> ptrs;
    for (const QuantizedMatrix& m : parts) ptrs.push_back(&m);
    p.parts.push_back(ConcatRows(ptrs));
  } else {
    p.parts = std::move(parts);
  }
  return p;
}


QuantizedMatrix PartOf(const FusedProjection& p, size_t index, const std::vector<size_t>& part_rows) {
  if (p.parts.size() > 1) return SliceRows(p.parts[index], 0, p.parts[index].rows());
  size_t r0 = 0;
  for (size_t i = 0; i < index; ++i) r0 += part_rows[i];
  return SliceRows(p.parts[0], r0, r0 + part_rows[index]);
}

ThreadPool& PoolFor(const py::object& threads) {
  if (threads.is_none()) return DefaultPool();
  const long n = threads.cast<long>();
  if (n < 1) throw py::value_error("Transformer: threads must be >= 1 or None, got " + std::to_string(n));
  return PoolWithThreads(size_t(n));
}

// ---- Python objects ---------------------------------------------------------------------
struct PyTransformer {
  std::unique_ptr<Transformer> t;
  std::mutex mu;  // one forward at a time (the RunState is shared)
};

std::unique_ptr<PyTransformer> MakeTransformer(const py::dict& config, const py::dict& tensors,
                                               long context, const py::object& threads,
                                               const std::string& kv_dtype) {
  const ModelConfig c = ConfigFromDict(config);
  if (context < 1) throw py::value_error("Transformer: context must be >= 1, got " + std::to_string(context));
  if (kv_dtype != "f32" && kv_dtype != "f16")
    throw py::value_error("Transformer: kv_dtype must be 'f32' or 'f16', got '" + kv_dtype + "'");
  ThreadPool& pool = PoolFor(threads);
  const size_t hidden = c.hidden_size, inter = c.intermediate_size;

  // 1. Validate every tensor (nothing is moved yet).
  TensorTaker tk{tensors, {}};
  std::set<std::string> expected = {"embed", "norm"};
  tk.CheckMatrix("embed", c.vocab_size, hidden);
  if (!c.tie_word_embeddings) {
    tk.CheckMatrix("lm_head", c.vocab_size, hidden);
    expected.insert("lm_head");
  }
  Weights w;
  w.norm = tk.Norm("norm", hidden);
  w.layers.resize(c.num_layers);
  for (size_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[i];
    tk.CheckMatrix(p + "q", c.q_dim(), hidden);
    tk.CheckMatrix(p + "k", c.kv_dim(), hidden);
    tk.CheckMatrix(p + "v", c.kv_dim(), hidden);
    tk.CheckMatrix(p + "o", hidden, c.q_dim());
    tk.CheckMatrix(p + "gate", inter, hidden);
    tk.CheckMatrix(p + "up", inter, hidden);
    tk.CheckMatrix(p + "down", hidden, inter);
    l.attn_norm = tk.Norm(p + "attn_norm", hidden);
    l.ffn_norm = tk.Norm(p + "ffn_norm", hidden);
    for (const char* n : {"q", "k", "v", "o", "gate", "up", "down", "attn_norm", "ffn_norm"}) expected.insert(p + n);
    if (c.is_bitnet()) {
      l.attn_sub_norm = tk.Norm(p + "attn_sub_norm", c.q_dim());
      l.ffn_sub_norm = tk.Norm(p + "ffn_sub_norm", inter);
      expected.insert(p + "attn_sub_norm");
      expected.insert(p + "ffn_sub_norm");
    }
  }
  for (auto item : tensors) {
    const std::string name = py::str(item.first);
    if (!expected.count(name))
      throw py::value_error("Transformer: unexpected tensor '" + name + "' for this " +
                            (c.is_bitnet() ? std::string("bitnet") : std::string("llama")) + " config with " +
                            std::to_string(c.num_layers) + " layers" +
                            (name == "lm_head" ? " (tie_word_embeddings is true)" : ""));
  }

  // 2. Move the storage in and fuse.
  w.embed = tk.Take("embed");
  if (!c.tie_word_embeddings) w.lm_head = tk.Take("lm_head");
  for (size_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[i];
    std::vector<QuantizedMatrix> qkv, gu;
    qkv.push_back(tk.Take(p + "q"));
    qkv.push_back(tk.Take(p + "k"));
    qkv.push_back(tk.Take(p + "v"));
    l.qkv = Fuse(std::move(qkv));
    gu.push_back(tk.Take(p + "gate"));
    gu.push_back(tk.Take(p + "up"));
    l.gate_up = Fuse(std::move(gu));
    l.o = tk.Take(p + "o");
    l.down = tk.Take(p + "down");
  }
  auto out = std::make_unique<PyTransformer>();
  out->t = std::make_unique<Transformer>(c, std::move(w), size_t(context), pool,
                                         kv_dtype == "f16" ? KvDtype::kF16 : KvDtype::kF32);
  return out;
}

std::vector<int32_t> TokenIds(py::handle obj, size_t vocab, const char* where) {
  py::array a = py::array::ensure(obj);
  if (!a || (a.dtype().kind() != 'i' && a.dtype().kind() != 'u'))
    throw py::type_error(std::string(where) + ": token ids must be an integer array");
  if (a.ndim() != 1)
    throw py::value_error(std::string(where) + ": token ids must be 1-D, got " + std::to_string(a.ndim()) + "-D");
  auto v = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  std::vector<int32_t> ids(size_t(v.size()));
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = v.data()[i];
    if (id < 0 || uint64_t(id) >= vocab)
      throw py::value_error(std::string(where) + ": token id " + std::to_string(id) + " at index " +
                            std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    ids[i] = int32_t(id);
  }
  return ids;
}

SamplingParams Params(double temperature, long top_k, double top_p, double min_p, double penalty) {
  if (top_k < 0) throw py::value_error("top_k must be >= 0 (0 = off), got " + std::to_string(top_k));
  SamplingParams p{float(temperature), size_t(top_k), float(top_p), float(min_p), float(penalty)};
  p.Validate();
  return p;
}

int32_t SampleFrom(Sampler& s, const float* logits, size_t vocab, const SamplingParams& p,
                   const py::object& recent_obj) {
  std::vector<int32_t> recent;
  if (!recent_obj.is_none()) recent = TokenIds(recent_obj, vocab, "sample: recent_tokens");
  py::gil_scoped_release release;
  return s.Sample(logits, vocab, p, recent.data(), recent.size());
}

std::unique_ptr<Sampler> MakeSampler(const py::object& seed) {
  uint64_t s;
  if (seed.is_none()) {
    std::random_device rd;
    s = (uint64_t(rd()) << 32) ^ rd();
  } else {
    const long long v = seed.cast<long long>();
    if (v < 0) throw py::value_error("Sampler: seed must be None or an int >= 0, got " + std::to_string(v));
    s = uint64_t(v);
  }
  return std::make_unique<Sampler>(s);
}

}  // namespace

void BindModel(py::module_& m) {
  py::class_<Sampler>(m, "Sampler",
                      "Next-token sampler (repetition penalty, temperature, top-k, top-p, min-p), "
                      "reproducible for a seed (std::mt19937_64).")
      .def(py::init(&MakeSampler), py::arg("seed") = py::none())
      .def("sample",
           [](Sampler& s, py::handle logits_obj, double temperature, long top_k, double top_p, double min_p,
              double repetition_penalty, const py::object& recent_tokens) {
             const SamplingParams p = Params(temperature, top_k, top_p, min_p, repetition_penalty);
             py::array a = py::array::ensure(logits_obj);
             if (!a || a.dtype().kind() != 'f' || a.ndim() != 1 || a.size() == 0)
               throw py::value_error("sample: logits must be a non-empty 1-D float array [vocab]");
             auto f = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
             return SampleFrom(s, f.data(), size_t(f.size()), p, recent_tokens);
           },
           py::arg("logits"), py::arg("temperature") = 0.0, py::arg("top_k") = 0, py::arg("top_p") = 1.0,
           py::arg("min_p") = 0.0, py::arg("repetition_penalty") = 1.0, py::arg("recent_tokens") = py::none(),
           "Next token id from logits [vocab]; temperature 0 = greedy (after the repetition penalty).");

  py::class_<PyTransformer>(m, "Transformer",
                            "Llama / BitNet decoder with a KV cache. Takes ownership of the "
                            "QuantizedMatrix storage in `tensors` (they are left empty; see matrix()).")
      .def(py::init(&MakeTransformer), py::arg("config"), py::arg("tensors"), py::arg("context"),
           py::arg("threads") = py::none(), py::arg("kv_dtype") = "f32")
      .def("forward",
           [](PyTransformer& self, py::handle tokens, const std::string& logits) {
             if (logits != "last" && logits != "all")
               throw py::value_error("forward: logits must be 'last' or 'all', got '" + logits + "'");
             Transformer& t = *self.t;
             const size_t vocab = t.config().vocab_size;
             const std::vector<int32_t> ids = TokenIds(tokens, vocab, "forward");
             if (ids.empty()) throw py::value_error("forward: no tokens given");
             const bool all = logits == "all";
             py::array_t<float> out = all ? py::array_t<float>({py::ssize_t(ids.size()), py::ssize_t(vocab)})
                                          : py::array_t<float>({py::ssize_t(vocab)});
             float* y = out.mutable_data();
             {
               py::gil_scoped_release release;
               std::lock_guard<std::mutex> lock(self.mu);
               t.Forward(ids.data(), ids.size(), all, y);
             }
             return out;
           },
           py::arg("tokens"), py::arg("logits") = "last",
           "Append tokens (int array [n]) at `position`; logits float32 [vocab] of the last token "
           "('last') or [n, vocab] ('all').")
      .def("step",
           [](PyTransformer& self, long token, Sampler& sampler, double temperature, long top_k, double top_p,
              double min_p, double repetition_penalty, const py::object& recent_tokens) {
             const SamplingParams p = Params(temperature, top_k, top_p, min_p, repetition_penalty);
             Transformer& t = *self.t;
             const size_t vocab = t.config().vocab_size;
             if (token < 0 || size_t(token) >= vocab)
               throw py::value_error("step: token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                                     std::to_string(vocab) + ")");
             std::vector<int32_t> recent;
             if (!recent_tokens.is_none()) recent = TokenIds(recent_tokens, vocab, "step: recent_tokens");
             py::gil_scoped_release release;
             std::lock_guard<std::mutex> lock(self.mu);
             const float* logits = t.Decode(int32_t(token));
             return sampler.Sample(logits, vocab, p, recent.data(), recent.size());
           },
           py::arg("token"), py::arg("sampler"), py::arg("temperature") = 0.0, py::arg("top_k") = 0,
           py::arg("top_p") = 1.0, py::arg("min_p") = 0.0, py::arg("repetition_penalty") = 1.0,
           py::arg("recent_tokens") = py::none(),
           "Decode one token and sample the next from its logits (forward + Sampler.sample in one call).")
      .def_property_readonly("position", [](PyTransformer& self) { return self.t->position(); },
                             "Tokens in the KV cache.")
      .def_property_readonly("context", [](PyTransformer& self) { return self.t->context(); })
      .def_property_readonly("kv_dtype", [](PyTransformer& self) {
        return std::string(self.t->kv_dtype() == KvDtype::kF16 ? "f16" : "f32");
      }, "element type of the KV cache: 'f32' or 'f16'")
      .def_property_readonly("memory_bytes", [](PyTransformer& self) { return self.t->memory_bytes(); },
                             "Weights + KV cache + scratch buffers, in bytes.")
      .def("reset", [](PyTransformer& self) {
             std::lock_guard<std::mutex> lock(self.mu);
             self.t->Reset();
           })
      .def("truncate",
           [](PyTransformer& self, long pos) {
             if (pos < 0) throw py::value_error("truncate: pos must be >= 0, got " + std::to_string(pos));
             std::lock_guard<std::mutex> lock(self.mu);
             self.t->Truncate(size_t(pos));
           },
           py::arg("pos"), "Keep the first pos cached positions (pos <= position).")
      .def("matrix",
           [](PyTransformer& self, const std::string& name) -> QuantizedMatrix {
             const Weights& w = self.t->weights();
             const ModelConfig& c = self.t->config();
             if (name == "embed") return SliceRows(w.embed, 0, w.embed.rows());
             if (name == "lm_head") {
               if (c.tie_word_embeddings) throw py::key_error("matrix: 'lm_head' is tied to 'embed'");
               return SliceRows(w.lm_head, 0, w.lm_head.rows());
             }
             const std::string prefix = "layers.";
             if (name.rfind(prefix, 0) == 0) {
               const size_t dot = name.find('.', prefix.size());
               if (dot != std::string::npos) {
                 size_t layer = 0;
                 try { layer = std::stoul(name.substr(prefix.size(), dot - prefix.size())); } catch (...) { layer = c.num_layers; }
                 const std::string part = name.substr(dot + 1);
                 if (layer < c.num_layers) {
                   const LayerWeights& l = w.layers[layer];
                   const std::vector<size_t> qkv_rows = {c.q_dim(), c.kv_dim(), c.kv_dim()};
                   const std::vector<size_t> gu_rows = {c.intermediate_size, c.intermediate_size};
                   if (part == "q") return PartOf(l.qkv, 0, qkv_rows);
                   if (part == "k") return PartOf(l.qkv, 1, qkv_rows);
                   if (part == "v") return PartOf(l.qkv, 2, qkv_rows);
                   if (part == "gate") return PartOf(l.gate_up, 0, gu_rows);
                   if (part == "up") return PartOf(l.gate_up, 1, gu_rows);
                   if (part == "o") return SliceRows(l.o, 0, l.o.rows());
                   if (part == "down") return SliceRows(l.down, 0, l.down.rows());
                 }
               }
             }
             throw py::key_error("matrix: no matrix named '" + name + "'");
           },
           py::arg("name"), "A copy of the matrix stored under its canonical name (e.g. 'layers.0.q').");
}

}  // namespace ternlm
