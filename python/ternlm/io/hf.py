"""Hugging Face checkpoint folder -> Checkpoint (config + tensors under canonical names).

Supported: LlamaForCausalLM (Llama 2/3 incl. rope_scaling "llama3", SmolLM2, TinyLlama,
Falcon3; tied or untied embeddings; GQA; explicit head_dim), BitNetForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM and MistralForCausalLM, each float or with transformers'
BitNet quantizer. Every quirk of the checkpoint layout lives here and in hf_config.py
(config.json; mlx-lm's "sanitize" idea):

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
  (nn.Linear everywhere), and so it is to us. lm_head stays float unless
  modules_to_not_convert is a list that does not name it: transformers then converts the
  head too (its default skip list applies only to a null modules_to_not_convert), and so do
  we (a tied head that way is refused: transformers cannot load it either). The same
  quantization_config on any other class (LlamaForCausalLM as `ternlm distill` writes it,
  HF1BitLLM's and Falcon3-1.58bit's; Qwen2, Qwen3, Mistral) makes its layer linears BitNet
  linears in transformers, and ternary here, with the blocks of the class unchanged.
  A linear bias (Qwen2's q/k/v) is added after the linear's output; "autobitlinear"
  offline multiplies the biased output by weight_scale, so its bias is read times
  weight_scale. use_rms_norm: each converted linear's <module>.rms_norm.weight is its
  input norm (layers.{i}.q_in_norm, ...); a checkpoint without it gets transformers'
  initial value, ones. A layer linear that modules_to_not_convert leaves float is a plain
  nn.Linear with no input norm (ModelConfig.plain_linears).

Tensors are produced lazily (one at a time, when the converter asks), so a large bf16
checkpoint is never held twice in memory.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping

import numpy as np

from .. import schema
from ..config import BF16Bits, Checkpoint
from ..tokenizer import Tokenizer
from .hf_config import SUPPORTED_ARCHITECTURES, config_from_hf  # noqa: F401 (re-exported)
from .jsonfile import read_json
from .module_names import ModulePatterns
from .safetensors import SafetensorsFolder

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
    the converter makes its QuantizedMatrix straight from its bits (ternlm.from_bf16,
    ternlm.quantize_bf16), with no float32 copy, and drops its mapped pages afterwards."""

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
    """Whether transformers' BitNet quantizer converts the layer linear `module`
    (should_convert_module over modules_to_not_convert, io/module_names.py). The head is
    decided by quant["head_converted"] (hf_config.py); here lm_head is never converted."""
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

    if quant is not None and quant["head_converted"] and config.tie_word_embeddings:
        raise ValueError(f"{cfg_path}: quantization_config.modules_to_not_convert does not name lm_head, so "
                         f"transformers makes the output head a BitNet linear, but tie_word_embeddings ties it "
                         f"to the float embedding; add \"lm_head\" to modules_to_not_convert")
    if config.linear_norm and quant is not None:
        # a layer linear matched by modules_to_not_convert stays a plain nn.Linear: no input norm
        one = schema.specs(dataclasses.replace(config, plain_linears=[]))
        config.plain_linears = [spec.name for spec in one if spec.role == "matrix"
                                and not _converted_by_bitnet(spec.hf_name.removesuffix(".weight"), quant)]
        config.validate(cfg_path)
    specs = schema.specs(config)
    declared = {spec.hf_name for spec in specs}
    makers, stored = {}, {}
    for spec in specs:
        name, key, shape = spec.name, spec.hf_name, spec.shape
        if spec.kind.endswith("_in_norm"):
            # BitLinear's input norm (use_rms_norm): absent, transformers keeps its initial ones
            makers[name] = (_float_vector(st, key, shape) if key in st
                            else (lambda shape=shape: np.ones(shape, np.float32)))
            continue
        if key not in st:
            raise ValueError(f"{path}: tensor {key!r} (ternlm {name!r}) is missing from the checkpoint")
        if spec.role == "bias":
            module = key.removesuffix(".bias")
            scaled = (quant is not None and quant["linear_class"] == "autobitlinear"
                      and quant["quantization_mode"] == "offline" and _converted_by_bitnet(module, quant))
            makers[name] = (_scaled_bias(st, key, module + ".weight_scale", shape) if scaled
                            else _float_vector(st, key, shape))
            continue
        module = key.removesuffix(".weight")
        if module + ".bias" in st and module + ".bias" not in declared:
            raise ValueError(f"{path}: tensor {module + '.bias'!r}: a bias on this linear is not supported "
                             f"for this architecture")
        info = st.info(key)
        where = f"{st.file_of(key).path}: tensor {key!r}"
        if spec.is_norm:
            makers[name] = _float_vector(st, key, shape)
            continue
        ternary = quant is not None and (spec.role == "matrix" and _converted_by_bitnet(module, quant)
                                         or spec.role == "head" and quant["head_converted"])
        if not ternary:
            if info.dtype == "U8":
                raise ValueError(f"{where}: uint8 (packed) weight, but config.json has no BitNet "
                                 "quantization_config covering this module")
            _check_shape(where, info, shape)
            stored[name] = "bf16" if info.dtype == "BF16" else "f32"
            makers[name] = _float_matrix(st, key, info.dtype)
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


def _float_matrix(st, key, dtype):
    """A maker for a float matrix as the converter takes it: BF16 as its bits (BF16Tensor),
    F16 as the file's float16 view (both quantized a few rows at a time, with no float32 copy
    of the matrix), F32 as it is, anything else widened to float32."""
    if dtype == "BF16":
        return lambda: BF16Tensor(st, key)
    if dtype == "F16":
        return lambda: st.raw(key)
    return lambda: st.to_float32(key)


def _float_vector(st, key, shape):
    """A maker for the float32 vector (norm weight, bias) under key, its shape checked now."""
    _check_shape(f"{st.file_of(key).path}: tensor {key!r}", st.info(key), shape)
    return lambda: np.ascontiguousarray(st.to_float32(key))


def _scaled_bias(st, key, scale_key, shape):
    """A maker for an "autobitlinear" offline linear's bias times its weight_scale: that
    linear computes (x_hat . W + bias) * weight_scale."""
    read = _float_vector(st, key, shape)
    if scale_key not in st:
        raise ValueError(f"{st.file_of(key).path}: tensor {scale_key!r} is missing (needed for {key!r})")

    def make():
        scale = st.to_float32(scale_key).reshape(-1)
        if scale.size not in (1, shape[0]):
            raise ValueError(f"{st.file_of(key).path}: tensor {scale_key!r} has {scale.size} values, "
                             f"expected 1 or {shape[0]}")
        return np.ascontiguousarray(read() * scale, dtype=np.float32)
    return make


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
