"""Teacher weights as float32 numpy arrays under ternlm's canonical names.

float_tensors(ckpt) takes any ternlm Checkpoint (Hugging Face folder, GGUF file, ternlm
folder: ternlm's own readers) and dequantizes each tensor: bf16 widened exactly, int4 as
scale * q + min, ternary as T * row multiplier.

A teacher stored ternary (a BitNet checkpoint) thus teaches as its dequantized weights with
float activations (the student then adds the int8 activations back).

gguf_float_tensors(path, config) reads a GGUF file with only numpy and the `gguf` package
(ternlm's pure-Python GGUF reader, no C++ core), for machines that have torch but not
ternlm's extension: F32/F16/BF16 as is, Q8_0 / Q4_0 / Q4_1 dequantized, q/k rows put back
in Hugging Face's order (ternlm.io.gguf.unpermute_rows).
"""
from __future__ import annotations

import numpy as np


def float_tensors(ckpt) -> dict:
    from ..config import BF16Bits
    out = {}
    for name in ckpt.config.tensor_names():
        value = ckpt.tensors[name]
        if hasattr(value, "dequantize"):              # ternlm.QuantizedMatrix
            value = value.dequantize()
        elif isinstance(value, BF16Bits):
            value = np.asarray(value)
        out[name] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def _dequantize(t) -> np.ndarray:
    kind = t.tensor_type.name
    shape = tuple(int(x) for x in reversed(t.shape))
    if kind in ("F32", "F16"):
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    if kind == "BF16":
        return (np.asarray(t.data).view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if kind == "Q8_0":                                # [d f16][32 x int8] per block
        b = np.asarray(t.data, dtype=np.uint8).reshape(shape[0], -1, 34)
        d = b[..., :2].copy().view(np.float16).astype(np.float32)
        q = b[..., 2:].view(np.int8).astype(np.float32)
        return (d * q).reshape(shape)
    if kind in ("Q4_0", "Q4_1"):
        from ..io.gguf import q4_codes
        size = 20 if kind == "Q4_1" else 18
        b = np.asarray(t.data, dtype=np.uint8).reshape(shape[0], -1, size)
        d = b[..., :2].copy().view(np.float16).astype(np.float32)
        if kind == "Q4_1":
            m = b[..., 2:4].copy().view(np.float16).astype(np.float32)
            q = q4_codes(b[..., 4:]).astype(np.float32)
        else:
            m = -8 * d
            q = q4_codes(b[..., 2:]).astype(np.float32)
        return (d * q + m).reshape(shape)
    raise ValueError(f"tensor {t.name}: GGUF type {kind} is not supported here (F32, F16, BF16, Q8_0, Q4_0, Q4_1)")


def gguf_names(config) -> dict:
    """canonical name -> GGUF tensor name (ternlm.schema, which needs the C++ core; pass its
    result to gguf_float_tensors where the core is absent)."""
    from .. import schema
    return {s.name: s.gguf_name for s in schema.specs(config)}


def gguf_float_tensors(path, config, names: dict | None = None) -> dict:
    """A llama GGUF file -> {canonical name: float32 array} for `config` (a ModelConfig);
    names: gguf_names(config), computed here when not given."""
    from ..io.gguf import unpermute_rows
    from ..io.gguf_reader import GGUFFile
    names = names or gguf_names(config)
    canonical = {g: c for c, g in names.items()}
    out = {}
    for t in GGUFFile(path).tensors:
        name = canonical.get(t.name)
        if name is None:
            continue
        a = _dequantize(t)
        part = name.rsplit(".", 1)[-1]
        if name.startswith("layers.") and part in ("q", "k"):
            a = unpermute_rows(a, config.num_heads if part == "q" else config.num_kv_heads)
        out[name] = np.ascontiguousarray(a, dtype=np.float32)
    missing = sorted(set(names) - set(out))
    if missing:
        raise ValueError(f"{path}: tensors missing for {missing[:4]}")
    return out
