"""GGUF file -> Checkpoint (architectures `llama` (Llama, and Mistral, which llama.cpp's
converter writes as `llama`), `qwen2`, `qwen3`, and `bitnet` / `bitnet-25` / `bitnet-b1.58`:
BitNet b1.58 with its sub-norms, as llama.cpp and bitnet.cpp write it).

    ckpt = load_gguf("model.gguf")       # ternlm.load("model.gguf", ...) calls this

Tensors are read through ternlm.io.gguf_reader (bounds-checked, memory-mapped) and converted
by ternlm.io.gguf_tensors, whose docstring lists the tensor types and their block layouts.
Tensor names (blk.N.attn_q.weight -> layers.N.q, blk.N.attn_sub_norm.weight ->
layers.N.attn_sub_norm, ...) and shapes are the tensor schema's (ternlm/schema.py).

llama.cpp's converter permutes the rows of attn_q / attn_k of `llama` models within each
head so that its interleaved ("GPT-J") RoPE applies; ternlm (like Hugging Face) rotates
halves, so the permutation is undone here, as transformers' GGUF loader does (for a `llama`
file's optional attn_q / attn_k biases too). The qwen2, qwen3 and bitnet architectures use
llama.cpp's NEOX (halves) RoPE and are stored unpermuted.

qwen2: attn_q / attn_k / attn_v biases (attention_bias). qwen3: attn_q_norm / attn_k_norm
(qk_norm) and `qwen3.attention.key_length` = head_dim (wider q than hidden). llama:
llama.cpp loads attn_q/k/v and attn_output biases and ffn_gate/up/down biases when
present, and so does ternlm. Sliding window: llama.cpp's converter writes none for
Mistral (its `llama` graph attends to every position, as ternlm does then); a file that
has `<arch>.attention.sliding_window` (and optionally `sliding_window_pattern`, one bool
per layer or a period n: every n-th layer is full) gets it per layer, as transformers'
Mistral / Qwen2 do.

bitnet architecture: metadata under the architecture's name (`bitnet.embedding_length`, ...),
squared-ReLU MLP, token embedding tied to the output unless an `output.weight` is present
(bitnet-b1.58 files may have one). llama.cpp's optional per-tensor `blk.N.<matrix>.scale`
tensors (one F32 value that multiplies the matrix's output) are folded into the matrix.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from .. import schema
from ..config import Checkpoint, ModelConfig, config_float, config_int

from .gguf_tensors import q4_codes, read_tensor, scale_matrix, unpermute_rows  # noqa: F401 (re-exported)

LLAMA_ARCHS = ("llama", "qwen2", "qwen3")
BITNET_ARCHS = ("bitnet", "bitnet-25", "bitnet-b1.58")
SCALED = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _open(path):
    from .gguf_reader import GGUFFile
    try:
        return GGUFFile(path)
    except ValueError as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e


def field_value(reader, key, default=None):
    """A metadata value as a Python scalar, str or list; default when the key is absent."""
    return reader.fields.get(key, default)


# ---- config ------------------------------------------------------------------------------------
def gguf_arch(reader, path) -> str:
    arch = field_value(reader, "general.architecture")
    if arch not in LLAMA_ARCHS + BITNET_ARCHS:
        raise ValueError(f"{path}: general.architecture is {arch!r:.100}; ternlm imports GGUF files of "
                         f"architecture {', '.join(map(repr, LLAMA_ARCHS + BITNET_ARCHS))} "
                         f"(convert other models from their Hugging Face folder)")
    return arch


def _config(reader, path, tensors_by_name, tokenizer) -> ModelConfig:
    arch = gguf_arch(reader, path)

    def count(key, default=None, minimum=1):
        v = field_value(reader, f"{arch}.{key}", default)
        if v is None:
            raise ValueError(f"{path}: metadata key {arch}.{key} is missing")
        return config_int(v, f"metadata key {arch}.{key}", path, minimum)

    def number(key, default):
        return config_float(field_value(reader, f"{arch}.{key}", default), f"metadata key {arch}.{key}", path)

    hidden = count("embedding_length")
    heads = count("attention.head_count")
    kv_heads = count("attention.head_count_kv", heads)
    head_dim = (count("attention.key_length", 0, minimum=0) or count("rope.dimension_count", 0, minimum=0)
                or hidden // heads)
    embd = tensors_by_name.get("token_embd.weight")
    vocab = field_value(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = int(embd.shape[1]) if embd is not None and len(embd.shape) > 1 else tokenizer.vocab_size
    rope_scaling = None
    stype = field_value(reader, f"{arch}.rope.scaling.type")
    if stype not in (None, "none"):
        raise ValueError(f"{path}: {arch}.rope.scaling.type {stype!r:.100} is not supported by ternlm")
    if "rope_freqs.weight" in tensors_by_name and arch == "llama":
        rope_scaling = _llama3_scaling_from_freqs(reader, tensors_by_name["rope_freqs.weight"], head_dim, path)

    window, full_layers = _sliding_window(reader, arch, count("block_count"), path)
    eos = [tokenizer.eos_token_ids[0]] if tokenizer.eos_token_ids else []
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        v = field_value(reader, key)
        if v is not None:
            v = config_int(v, f"metadata key {key}", path, minimum=0)
            if v not in eos:
                eos.append(v)
    bitnet = arch in BITNET_ARCHS
    return ModelConfig(
        arch="bitnet" if bitnet else "llama",
        vocab_size=config_int(vocab, f"metadata key {arch}.vocab_size", path), hidden_size=hidden,
        intermediate_size=count("feed_forward_length"), num_layers=count("block_count"),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=number("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=number("rope.freq_base", 10000.0),
        rope_scaling=rope_scaling,
        max_position_embeddings=count("context_length", 4096),
        hidden_act="relu2" if bitnet else "silu", tie_word_embeddings="output.weight" not in tensors_by_name,
        bos_token_id=tokenizer.bos_token_id, eos_token_ids=eos,
        # qwen2 always has q/k/v biases; a llama file has them when llama.cpp would load them
        attention_bias=arch == "qwen2" or (arch == "llama" and "blk.0.attn_q.bias" in tensors_by_name),
        o_bias=arch == "llama" and "blk.0.attn_output.bias" in tensors_by_name,
        mlp_bias=arch == "llama" and "blk.0.ffn_down.bias" in tensors_by_name,
        qk_norm=arch == "qwen3", sliding_window=window, full_attention_layers=full_layers).validate(path)


def _sliding_window(reader, arch, layers, path):
    """(window, full-attention layers) from `<arch>.attention.sliding_window[_pattern]`
    (llama.cpp's keys): no window key, 0: no window. The pattern is one bool per layer
    (true: the layer slides) or a period n (layer i slides unless i % n == n - 1)."""
    key = f"{arch}.attention.sliding_window"
    w = field_value(reader, key)
    if w is None or arch in BITNET_ARCHS:
        return 0, []
    w = config_int(w, f"metadata key {key}", path, minimum=0)
    pattern = field_value(reader, key + "_pattern")
    if not w or pattern is None:
        return w, []
    if isinstance(pattern, list):
        if len(pattern) != layers or not all(isinstance(b, (bool, int)) for b in pattern):
            raise ValueError(f"{path}: metadata key {key}_pattern must hold one bool per layer ({layers}), "
                             f"got {pattern!r:.100}")
        return w, [i for i, b in enumerate(pattern) if not b]
    n = config_int(pattern, f"metadata key {key}_pattern", path)
    if layers > len(reader.tensors):
        return w, []        # no list per layer: the layer count check refuses the file next
    return w, [i for i in range(layers) if i % n == n - 1]


def _llama3_scaling_from_freqs(reader, t, head_dim, path):
    """llama.cpp stores Llama-3 RoPE scaling as a `rope_freqs` tensor of per-frequency
    divisors f_i (1 at high frequency, `factor` at low, smooth in between):
        1/f = (1 - s)/factor + s,  s = old_ctx / (2 pi / inv_freq_i) / (hf - lf) - lf / (hf - lf).
    s is linear in inv_freq, so two points in the smooth band give a = old_ctx/(hf - lf) and
    b = lf/(hf - lf); every (old_ctx, lf, hf) with those a, b yields the same frequencies, so
    old_ctx is taken from the metadata (or 8192) and lf, hf follow."""
    if t.tensor_type.name not in ("F32", "F16") or t.data.size != (head_dim + 1) // 2:
        raise ValueError(f"{path}: rope_freqs is {t.tensor_type.name} with {t.data.size} entries "
                         f"(expected F32 or F16 with {(head_dim + 1) // 2}: one per rotary frequency)")
    f = np.asarray(t.data, dtype=np.float64).reshape(-1)
    theta = config_float(field_value(reader, "llama.rope.freq_base", 10000.0), "metadata key llama.rope.freq_base",
                         path)
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if not np.all(np.isfinite(f) & (f >= 1 - 1e-6)):
        raise ValueError(f"{path}: rope_freqs entries must be finite and >= 1")
    factor = float(f.max())
    if factor <= 1 + 1e-6:
        return None
    smooth_band = (f > 1 + 1e-4) & (f < factor - 1e-4)
    old_ctx = float(config_int(field_value(reader, "llama.rope.scaling.original_context_length", 8192),
                               "metadata key llama.rope.scaling.original_context_length", path))
    if smooth_band.sum() >= 2:
        s = (1 / f[smooth_band] - 1 / factor) / (1 - 1 / factor)
        wl_inv = inv_freq[smooth_band] / (2 * np.pi)          # 1 / wavelen
        a, minus_b = np.polyfit(wl_inv, s, 1)
        b = -minus_b
        lf, hf = b * old_ctx / a, (1 + b) * old_ctx / a
    else:   # no smooth band: any boundaries between the last 1 and the first `factor` do
        wl_inv = inv_freq / (2 * np.pi)
        lf = old_ctx * float(wl_inv[f >= factor - 1e-4].max()) * 1.0001
        hf = old_ctx * float(wl_inv[f <= 1 + 1e-4].min()) * 0.9999
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": float(lf),
            "high_freq_factor": float(hf), "original_max_position_embeddings": int(old_ctx)}


# ---- entry point -------------------------------------------------------------------------------
def load_gguf(path) -> Checkpoint:
    """Read a llama- or bitnet-architecture GGUF file into a Checkpoint (lazy where the format
    allows: float tensors stay views of the memory-mapped file)."""
    from .gguf_tokenizer import tokenizer_from_gguf
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file")
    reader = _open(path)
    by_name = {t.name: t for t in reader.tensors}
    tokenizer = tokenizer_from_gguf(reader, path)
    config = _config(reader, path, by_name, tokenizer)
    arch = gguf_arch(reader, path)
    schema.check_layer_count(config, len(reader.tensors), path, f"{arch}.block_count")

    specs = schema.specs(config)
    by_gguf_name = {s.gguf_name: s for s in specs}
    tensors, stored, scales = {}, {}, {}
    permuted = arch == "llama"
    for t in reader.tensors:
        spec = by_gguf_name.get(t.name)
        if spec is None:
            if t.name == "rope_freqs.weight" and permuted:
                continue                            # folded into config.rope_scaling
            if arch in BITNET_ARCHS and t.name.endswith(".scale") and t.name.split(".")[-2] in SCALED:
                scales[t.name[:-len(".scale")] + ".weight"] = _scalar_tensor(t, path)
                continue
            raise ValueError(f"{path}: tensor {t.name} is not part of a {arch} model ternlm knows")
        n_perm = None
        if permuted:
            n_perm = (config.num_heads if spec.kind in ("q", "q_bias") else
                      config.num_kv_heads if spec.kind in ("k", "k_bias") else None)
        value, fmt = read_tensor(t, spec.name, path, n_perm)
        tensors[spec.name] = value
        if spec.has_format:
            stored[spec.name] = fmt
    for gguf_name, s in scales.items():
        spec = by_gguf_name.get(gguf_name)
        if spec is None or spec.name not in tensors:
            raise ValueError(f"{path}: scale tensor {gguf_name[:-len('.weight')]}.scale has no matrix {gguf_name}")
        tensors[spec.name], stored[spec.name] = scale_matrix(tensors[spec.name], s)
    missing = [s.name for s in specs if s.name not in tensors]
    if missing:
        raise ValueError(f"{path}: missing tensors for {missing[:5]} (GGUF names like blk.N.attn_q.weight)")
    _check_shapes(specs, tensors, path)
    return Checkpoint(config=config, tensors=tensors, stored=stored, tokenizer=tokenizer, source=path)


def _scalar_tensor(t, path) -> float:
    """llama.cpp's bitnet `.scale` tensor: one finite F32 / F16 value."""
    if t.tensor_type.name not in ("F32", "F16") or np.asarray(t.data).size != 1:
        raise ValueError(f"{path}: tensor {t.name} is {t.tensor_type.name} {list(t.shape)}, expected one F32 value")
    v = float(np.asarray(t.data, dtype=np.float32).reshape(-1)[0])
    if not np.isfinite(v):
        raise ValueError(f"{path}: tensor {t.name} is {v} (not finite)")
    return v


def _check_shapes(specs, tensors, path):
    for spec in specs:
        shape = tuple(tensors[spec.name].shape)
        if shape != spec.shape:
            raise ValueError(f"{path}: tensor {spec.name} has shape {list(shape)}, "
                             f"the metadata implies {list(spec.shape)}")
