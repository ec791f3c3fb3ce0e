"""A checkpoint's layer matrices in nano, calibrated block by block (ternlm.nano documents the
factorization; loading.convert_checkpoint calls this for weights="nano:<bits>").

The calibration activations come from the model's own float32 forward in numpy (the same
block math as cpp/model/transformer.cc: RMSNorm, q/k/v with Qwen2 biases and Qwen3 q/k
norms, rotate-half RoPE with Llama-3 scaling, causal grouped-query attention with a
sliding window, BitNet's sub-norms, SiLU or squared-ReLU gating) over the first
CALIBRATION_TOKENS tokens of the Python Language Reference. Block i is converted on the
hidden states that blocks 0..i-1 produce *after* their conversion, and inside the block each
matrix on the inputs the already converted matrices before it produce (q k v, then o,
then gate up, then down), so each refinement also absorbs the error upstream of it.
"""
from __future__ import annotations

import numpy as np

from . import nano
from .config import BF16Bits

LAYER_ORDER = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))


def _float(value):
    from .formats import QuantizedMatrix
    if isinstance(value, QuantizedMatrix):
        return value.dequantize()
    if isinstance(value, BF16Bits):
        value = np.asarray(value)
    return np.ascontiguousarray(value, dtype=np.float32)


def _rms(x, w, eps):
    return (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w).astype(np.float32)


def _inv_freq(c):
    inv = 1.0 / (c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.float64) / c.head_dim))
    s = c.rope_scaling
    if s:
        old = s["original_max_position_embeddings"]
        low_wl, high_wl = old / s["low_freq_factor"], old / s["high_freq_factor"]
        wl = 2 * np.pi / inv
        smooth = (old / wl - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
        scaled = np.where(wl > low_wl, inv / s["factor"], inv)
        mid = (wl <= low_wl) & (wl >= high_wl)
        inv = np.where(mid, (1 - smooth) * inv / s["factor"] + smooth * inv, scaled)
    return inv


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rot * sin).astype(np.float32)


def _attention(q, k, v, c):
    t = q.shape[0]
    group = c.num_heads // c.num_kv_heads
    pos = np.arange(t)
    mask = pos[None, :] > pos[:, None]
    if c.sliding_window:
        mask |= pos[None, :] <= pos[:, None] - c.sliding_window
    out = np.empty((t, c.num_heads, c.head_dim), np.float32)
    for h in range(c.num_heads):
        s = (q[:, h] @ k[:, h // group].T) / np.sqrt(c.head_dim)
        s[mask] = -np.inf
        p = np.exp(s - s.max(1, keepdims=True))
        out[:, h] = (p / p.sum(1, keepdims=True)) @ v[:, h // group]
    return out.reshape(t, -1)


def _calibration_ids(ckpt, tokens):
    from .texts import _python_reference_text
    ids = ckpt.tokenizer.encode(_python_reference_text().text[:20 * tokens])
    return np.asarray(ids[:tokens], dtype=np.int64)


def convert_checkpoint_nano(ckpt, formats: dict, progress=True, tokens=nano.CALIBRATION_TOKENS) -> dict:
    """convert_checkpoint for a `formats` whose layer matrices are 'nano:<bits>' (one budget)."""
    from . import formats as fm
    from .loading import _convert_one
    from .progress import progress_bar
    c = ckpt.config
    if c.linear_norm:
        raise ValueError(f"{ckpt.source}: nano calibration does not support per-linear input norms "
                         "(transformers' BitNet use_rms_norm); convert such a model to ternary or int4")
    out = {}
    nano_names = {n for n, f in formats.items() if isinstance(f, str) and f.startswith(nano.NANO + ":")}
    for name in c.tensor_names():
        if name not in nano_names:
            out[name] = _convert_one(ckpt.tensors[name], formats.get(name), fm)
    ids = _calibration_ids(ckpt, tokens)
    embed = ckpt.tensors["embed"]
    if isinstance(embed, fm.QuantizedMatrix):
        h = np.stack([embed.dequantize_row(int(i)) for i in ids]).astype(np.float32)
    else:
        h = _float(embed)[ids]
    ang = np.arange(len(ids))[:, None] * _inv_freq(c)[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=1).astype(np.float32)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=1).astype(np.float32)[:, None, :]
    act = (lambda g: np.maximum(g, 0) ** 2) if c.hidden_act == "relu2" else (lambda g: g / (1 + np.exp(-g)))
    bar = progress_bar(range(c.num_layers), enabled=progress, delay=0.5, desc="nano: calibrating blocks",
                       unit="block", leave=False)
    for i in bar:
        pre = f"layers.{i}."
        norm = lambda key: out[pre + key]  # noqa: E731 (norm weights, already float32)

        def linear(key, x):
            name = pre + key
            if name in nano_names:
                try:
                    q = nano.quantize_nano(_float(ckpt.tensors[name]), nano.parse(formats[name]), x=x)
                except ValueError as e:
                    raise ValueError(f"{ckpt.source}: tensor {name!r}: {e}") from e
                out[name] = q
                w = q.dequantize()
            else:
                w = _float(out[name]) if isinstance(out[name], fm.QuantizedMatrix) else _float(ckpt.tensors[name])
            y = x @ w.T
            if pre + key + "_bias" in out:
                y = y + out[pre + key + "_bias"]
            return y.astype(np.float32)

        xa = _rms(h, norm("attn_norm"), c.rms_norm_eps)
        t = h.shape[0]
        q = linear("q", xa).reshape(t, c.num_heads, c.head_dim)
        k = linear("k", xa).reshape(t, c.num_kv_heads, c.head_dim)
        v = linear("v", xa).reshape(t, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = _rms(q, norm("q_norm"), c.rms_norm_eps), _rms(k, norm("k_norm"), c.rms_norm_eps)
        a = _attention(_rope(q, cos, sin), _rope(k, cos, sin), v, c)
        if c.arch == "bitnet":
            a = _rms(a, norm("attn_sub_norm"), c.rms_norm_eps)
        h = h + linear("o", a)
        xf = _rms(h, norm("ffn_norm"), c.rms_norm_eps)
        g = act(linear("gate", xf)) * linear("up", xf)
        if c.arch == "bitnet":
            g = _rms(g, norm("ffn_sub_norm"), c.rms_norm_eps)
        h = (h + linear("down", g)).astype(np.float32)
    return {name: out[name] for name in c.tensor_names()}
