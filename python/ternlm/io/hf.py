"""Hugging Face checkpoint folder -> Checkpoint (config + tensors under canonical names).

Supported: LlamaForCausalLM (Llama 2/3 incl. rope_scaling "llama3", SmolLM2, TinyLlama;
tied or untied embeddings; GQA; explicit head_dim) and BitNetForCausalLM. Every quirk of
the checkpoint layout lives in this file (mlx-lm's "sanitize" idea):

- config.json: rope parameters come either as rope_theta + rope_scaling (older files, key
  "type" or "rope_type") or as rope_parameters (transformers >= 5).
- Tensor names: model.layers.{i}.self_attn.q_proj.weight -> layers.{i}.q, etc. (the
  tensor schema's hf_name, ternlm/schema.py).
- BitNet (quantization_config.quant_method == "bitnet"): linear weights are either packed
  uint8 [ceil(out/4), in] + weight_scale, or float master weights. Packed row p holds output
  rows p, P+p, 2P+p, 3P+p (P = packed rows) in bit pairs 0-1, 2-3, 4-5, 6-7, as value+1 —
  exactly transformers/integrations/bitnet.py's unpack_weights. What weight_scale means
  depends on quantization_config; we turn it into the per-row multiplier of
  ternlm.formats.from_ternary, whose matmul computes y = int_dot(q, T) / s_x * multiplier
  (cpp/kernels/activations.h defines s_x):
      linear_class "bitlinear"        y = (q . T) / (s_x * weight_scale) -> multiplier 1/weight_scale
      "autobitlinear", mode offline   y = (x_hat . T) * weight_scale     -> multiplier weight_scale
      "autobitlinear", mode online    float master weights, quantized at load with absmean
  A BitNet checkpoint without quantization_config is a plain float model to transformers
  (nn.Linear everywhere), and so it is to us. lm_head is never ternary. The same
  quantization_config on a LlamaForCausalLM (what `ternlm distill` writes) makes its layer
  linears BitLinear in transformers, and ternary here, with the Llama blocks unchanged.

Tensors are produced lazily (one at a time, when the converter asks), so a large bf16
checkpoint is never held twice in memory.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np

from .. import schema
from ..config import BF16Bits, Checkpoint, ModelConfig, config_float, config_int
from ..tokenizer import Tokenizer
from .jsonfile import id_list, read_json
from .module_names import ModulePatterns
from .safetensors import SafetensorsFolder

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "BitNetForCausalLM": "bitnet"}

# ---- config.json ---------------------------------------------------------------------------
def _get(d: dict, key, default):
    """d[key], or default when the key is absent or null."""
    v = d.get(key)
    return default if v is None else v


def _object(d: dict, key, where) -> dict:
    """A field that must be a JSON object (or absent / null: {})."""
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError(f"{where}: {key} must be an object or null, got {v!r:.200}")
    return v


def _rope(cfg: dict, default_theta: float, where: str):
    """(rope_theta, rope_scaling or None) from either config.json dialect."""
    params = _object(cfg, "rope_parameters", where)
    scaling = _object(cfg, "rope_scaling", where)
    theta = config_float(_get(params, "rope_theta", _get(cfg, "rope_theta", default_theta)), "rope_theta", where)
    src = params if params.get("rope_type") else scaling
    rtype = src.get("rope_type") or src.get("type") or "default"
    if rtype == "default":
        return theta, None
    if rtype == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [k for k in keys if k not in src]
        if missing:
            raise ValueError(f"{where}: rope scaling 'llama3' lacks {', '.join(missing)}")
        out = {"rope_type": "llama3", **{k: config_float(src[k], f"rope_scaling.{k}", where) for k in keys[:3]}}
        out[keys[3]] = config_int(src[keys[3]], f"rope_scaling.{keys[3]}", where)
        return theta, out
    raise ValueError(f"{where}: rope scaling type {rtype!r:.100} is not supported (supported: default, llama3)")


def _quantization(quant, arch_name: str, where: str):
    """config.json's quantization_config -> the BitNet dict load_hf_folder uses, or None."""
    if quant is None:
        return None
    if not isinstance(quant, dict):
        raise ValueError(f"{where}: quantization_config must be an object, got {quant!r:.200}")
    method = quant.get("quant_method")
    if method != "bitnet":            # on Llama too: a Llama whose linears are BitLinear
        raise ValueError(f"{where}: quantization_config quant_method {method!r:.100} is not supported "
                         f"for {arch_name} (ternlm reads BitNet's 'bitnet' method)")
    skip = quant.get("modules_to_not_convert") or []
    if not isinstance(skip, list) or not all(isinstance(k, str) for k in skip):
        raise ValueError(f"{where}: quantization_config.modules_to_not_convert must be a list of "
                         f"module names, got {skip!r:.200}")
    quant = {"linear_class": quant.get("linear_class", "bitlinear"),
             "quantization_mode": quant.get("quantization_mode", "offline"),
             "modules_to_not_convert": skip,
             "not_converted": ModulePatterns(skip, where),
             "use_rms_norm": bool(quant.get("use_rms_norm", False))}
    if quant["linear_class"] not in ("bitlinear", "autobitlinear"):
        raise ValueError(f"{where}: quantization_config.linear_class {quant['linear_class']!r:.100} is unknown")
    if quant["quantization_mode"] not in ("online", "offline"):
        raise ValueError(f"{where}: quantization_mode {quant['quantization_mode']!r:.100} is unknown")
    if quant["use_rms_norm"]:
        raise ValueError(f"{where}: quantization_config.use_rms_norm = true is not supported")
    return quant


def config_from_hf(cfg: dict, gen: dict | None = None, where: str = "config.json",
                   gen_where: str = "generation_config.json"):
    """config.json (+ generation_config.json) -> (ModelConfig, BitNet quantization dict or None).
    Every field is type- and range-checked (ModelConfig.validate): a bad value is a
    ValueError naming the file and the field."""
    gen = gen or {}
    archs = cfg.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ValueError(f"{where}: architectures must be a list of names, got {archs!r:.200}")
    arch_name = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch_name is None:
        model_type = cfg.get("model_type")
        by_type = {"llama": "LlamaForCausalLM", "bitnet": "BitNetForCausalLM"}
        if archs or not isinstance(model_type, str) or model_type not in by_type:
            raise ValueError(f"{where}: architecture {archs or model_type!r:.200} is not supported "
                             f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        arch_name = by_type[model_type]
    arch = SUPPORTED_ARCHITECTURES[arch_name]

    def need(key):
        if key not in cfg or cfg[key] is None:
            raise ValueError(f"{where}: missing required field {key!r} for {arch_name}")
        return config_int(cfg[key], key, where)

    hidden, heads = need("hidden_size"), need("num_attention_heads")
    kv_heads = config_int(_get(cfg, "num_key_value_heads", heads), "num_key_value_heads", where)
    head_dim = config_int(_get(cfg, "head_dim", hidden // heads), "head_dim", where)
    if heads % kv_heads:
        raise ValueError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError(f"{where}: attention_bias / mlp_bias = true is not supported")
    act = cfg.get("hidden_act", "silu" if arch == "llama" else "relu2")
    if act != ("silu" if arch == "llama" else "relu2"):
        raise ValueError(f"{where}: hidden_act {act!r:.100} is not supported for {arch_name}")
    theta, scaling = _rope(cfg, 10000.0 if arch == "llama" else 500000.0, where)
    quant = _quantization(cfg.get("quantization_config"), arch_name, where)

    eos = []
    for v in (id_list(cfg.get("eos_token_id"), "eos_token_id", where),
              id_list(gen.get("eos_token_id"), "eos_token_id", gen_where)):
        eos += [i for i in v if i not in eos]
    bos = cfg.get("bos_token_id", gen.get("bos_token_id"))
    mc = ModelConfig(
        arch=arch, vocab_size=need("vocab_size"), hidden_size=hidden,
        intermediate_size=need("intermediate_size"), num_layers=need("num_hidden_layers"),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=config_float(_get(cfg, "rms_norm_eps", 1e-6 if arch == "llama" else 1e-5), "rms_norm_eps", where),
        rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=config_int(_get(cfg, "max_position_embeddings", 4096), "max_position_embeddings",
                                           where),
        hidden_act=act, tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=None if bos is None else config_int(bos, "bos_token_id", where, minimum=0), eos_token_ids=eos)
    return mc.validate(where), quant


# ---- BitNet packed weights ------------------------------------------------------------------
def unpack_bitnet_weight(packed: np.ndarray, out_rows: int, where: str = "") -> np.ndarray:
    """uint8 [P, in] -> int8 [out_rows, in] in {-1, 0, 1}; row i*P + p is bits 2i..2i+1 of row p."""
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f"{where}: packed BitNet weight must be a 2-D uint8 array, got {packed.dtype} {packed.shape}")
    p = packed.shape[0]
    if not (4 * p >= out_rows > 4 * (p - 1)):
        raise ValueError(f"{where}: packed shape {packed.shape} cannot hold {out_rows} rows "
                         f"(expected {math.ceil(out_rows / 4)} packed rows)")
    t = np.empty((4 * p, packed.shape[1]), dtype=np.int8)
    for i in range(4):
        t[i * p:(i + 1) * p] = (packed >> (2 * i)) & 3
    t = t[:out_rows]
    if (t == 3).any():
        raise ValueError(f"{where}: packed BitNet weight holds the 2-bit code 3, which is not a ternary value")
    t -= 1
    return t


def pack_bitnet_weight(t: np.ndarray) -> np.ndarray:
    """int8 [out_rows, in] in {-1, 0, 1} -> uint8 [ceil(out_rows/4), in], the inverse of
    unpack_bitnet_weight: row i*P + p goes to bits 2i..2i+1 of packed row p as value + 1;
    the padding rows past out_rows hold 0 (code 1)."""
    t = np.asarray(t)
    if t.ndim != 2 or (t.size and (t.min() < -1 or t.max() > 1)):
        raise ValueError(f"a BitNet weight to pack must be 2-D and ternary ({{-1, 0, 1}}), "
                         f"got {t.dtype} {t.shape}")
    out_rows, cols = t.shape
    p = (out_rows + 3) // 4
    codes = np.ones((4 * p, cols), dtype=np.uint8)
    codes[:out_rows] = t + 1
    packed = codes[:p].copy()
    for i in range(1, 4):
        packed |= codes[i * p:(i + 1) * p] << np.uint8(2 * i)
    return packed


def bitnet_row_multiplier(weight_scale: float, quant: dict) -> float:
    """The float that multiplies int_dot(q, T) / s_x for one matrix (see module docstring)."""
    if quant["linear_class"] == "bitlinear":
        return 1.0 / weight_scale
    return weight_scale


# ---- the folder -----------------------------------------------------------------------------
class BF16Tensor(BF16Bits):
    """A BF16 safetensors tensor not yet read: np.asarray() widens it to float32 (exact);
    the converter turns it into a bf16 QuantizedMatrix straight from its bits
    (ternlm.from_bf16), with no float32 copy, and drops its mapped pages afterwards."""

    def __init__(self, st, key):
        self._st, self.key = st, key
        self.shape = tuple(st.info(key).shape)

    def bits(self) -> np.ndarray:
        return self._st.raw(self.key)                 # uint16 view of the mapped file

    def release(self) -> None:
        self._st.release(self.key)

    def __array__(self, dtype=None, copy=None):
        a = self._st.to_float32(self.key)
        return a if dtype is None else a.astype(dtype, copy=False)


class LazyTensors(Mapping):
    """name -> value, computed by a zero-argument function when first asked for (not cached:
    the converter takes each tensor once and lets it go)."""

    def __init__(self, makers: dict):
        self._makers = makers

    def __getitem__(self, name):
        return self._makers[name]()

    def __iter__(self):
        return iter(self._makers)

    def __len__(self):
        return len(self._makers)


def _converted_by_bitnet(module: str, quant: dict) -> bool:
    """transformers' should_convert_module over modules_to_not_convert (io/module_names.py);
    lm_head is never converted."""
    patterns = quant.get("not_converted") or ModulePatterns(quant["modules_to_not_convert"], "config.json")
    return module != "lm_head" and not patterns.matches(module)


def load_hf_folder(path) -> Checkpoint:
    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face model folder)")
    gen_path = os.path.join(path, "generation_config.json")
    gen = read_json(gen_path, missing_ok=True)
    config, quant = config_from_hf(read_json(cfg_path), gen, cfg_path, gen_path)
    st = SafetensorsFolder(path)
    schema.check_layer_count(config, len(st.keys()), cfg_path, "num_hidden_layers")
    tok = Tokenizer.from_folder(path)
    if config.bos_token_id is None:
        config.bos_token_id = tok.bos_token_id
    config.eos_token_ids += [i for i in tok.eos_token_ids if i not in config.eos_token_ids]

    makers, stored = {}, {}
    for spec in schema.specs(config):
        name, key, shape = spec.name, spec.hf_name, spec.shape
        module = key.removesuffix(".weight")
        if key not in st:
            raise ValueError(f"{path}: tensor {key!r} (ternlm {name!r}) is missing from the checkpoint")
        if module + ".bias" in st:
            raise ValueError(f"{path}: tensor {module + '.bias'!r}: linear biases are not supported")
        info = st.info(key)
        where = f"{st.file_of(key).path}: tensor {key!r}"
        if spec.is_norm:
            _check_shape(where, info, shape)
            makers[name] = (lambda k=key: np.ascontiguousarray(st.to_float32(k)))
            continue
        ternary = quant is not None and spec.role == "matrix" and _converted_by_bitnet(module, quant)
        if not ternary:
            if info.dtype == "U8":
                raise ValueError(f"{where}: uint8 (packed) weight, but config.json has no BitNet "
                                 "quantization_config covering this module")
            _check_shape(where, info, shape)
            stored[name] = "bf16" if info.dtype == "BF16" else "f32"
            makers[name] = ((lambda k=key: BF16Tensor(st, k)) if info.dtype == "BF16"
                            else (lambda k=key: st.to_float32(k)))
            continue
        stored[name] = "ternary"
        if quant["quantization_mode"] == "online" and quant["linear_class"] == "autobitlinear":
            _check_shape(where, info, shape)     # bf16/f32 master weights, absmean at load
            makers[name] = (lambda k=key: st.to_float32(k))
            continue
        scale_key = module + ".weight_scale"
        if scale_key not in st:
            raise ValueError(f"{path}: tensor {scale_key!r} is missing (BitNet {quant['linear_class']} "
                             f"{quant['quantization_mode']} needs a weight_scale for {key!r})")
        makers[name] = (lambda k=key, s=scale_key, rows=shape[0], cols=shape[1], w=where:
                        _ternary_matrix(st, k, s, rows, cols, quant, w))
    return Checkpoint(config=config, tensors=LazyTensors(makers), stored=stored, tokenizer=tok, source=path)


def _check_shape(where, info, shape):
    if tuple(info.shape) != tuple(shape):
        raise ValueError(f"{where}: shape {list(info.shape)} does not match config.json (expected {list(shape)})")


def read_ternary(st, key, scale_key, rows, cols, quant, where):
    """(int8 T [rows, cols], float32 row multiplier [rows]) for one BitNet linear."""
    info = st.info(key)
    if info.dtype == "U8":
        packed = st.raw(key)
        if packed.ndim != 2 or packed.shape[1] != cols:
            raise ValueError(f"{where}: packed shape {list(packed.shape)} does not fit [{rows}, {cols}]")
        t = unpack_bitnet_weight(np.asarray(packed), rows, where)
    else:
        # autobitlinear offline may also hold the ternary values unpacked, as floats.
        _check_shape(where, info, (rows, cols))
        w = st.to_float32(key)
        t = w.astype(np.int8)
        if not np.array_equal(t, w) or np.abs(t).max(initial=0) > 1:
            raise ValueError(f"{where}: offline BitNet weight is not ternary ({{-1, 0, 1}})")
    scale = st.to_float32(scale_key).reshape(-1)
    if scale.size not in (1, rows):
        raise ValueError(f"{where}: weight_scale has {scale.size} values, expected 1 or {rows}")
    if not np.all(np.isfinite(scale)) or np.any(scale == 0):
        raise ValueError(f"{where}: weight_scale must be finite and non-zero, got {scale[:4]}")
    mult = np.broadcast_to(np.array([bitnet_row_multiplier(float(s), quant) for s in scale],
                                    dtype=np.float32), (rows,))
    return t, np.ascontiguousarray(mult)


def _ternary_matrix(st, key, scale_key, rows, cols, quant, where):
    from ..formats import from_ternary
    t, mult = read_ternary(st, key, scale_key, rows, cols, quant, where)
    m = from_ternary(t, mult)
    st.release(key)                  # packed bytes copied: drop their mapped pages
    return m
