"""A numpy re-implementation of the Llama / BitNet b1.58 forward pass (with Qwen2's q/k/v
biases, Qwen3's q/k norms, o and MLP biases, sliding windows per layer and the BitNet
quantizer's per-linear input norms when the config has them), written from the transformers modeling code and
the numerics of cpp/formats/ternary.h, as an independent reference for tests.

weights: canonical name -> float32 array (norms, float matrices) or ("ternary", T int8
[out, in], row_multiplier f32 [out]) for BitNet linears, whose product is
    q = clamp(round(x * s_x), -128, 127), s_x = 127 / max(|x|, 1e-5) per row
    y = (q . T^T) [exact int] / s_x * row_multiplier
Everything is float32 except the exact integer dot products.
"""
import numpy as np

from ternlm.config import ModelConfig


def rmsnorm(x, w, eps):
    x = x.astype(np.float32)
    var = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return w * (x / np.sqrt(var + np.float32(eps)))


def linear(x, w):
    if isinstance(w, tuple):
        _, t, mult = w
        s_x = np.float32(127.0) / np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-5))
        q = np.clip(np.round(x * s_x), -128, 127).astype(np.int64)
        acc = q @ t.astype(np.int64).T
        return (acc.astype(np.float32) / s_x) * mult
    return (x.astype(np.float64) @ w.astype(np.float64).T).astype(np.float32)


def rope_inv_freq(cfg: ModelConfig):
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    s = cfg.rope_scaling
    if s and s.get("rope_type") == "llama3":
        old, lo, hi, f = (s["original_max_position_embeddings"], s["low_freq_factor"],
                          s["high_freq_factor"], s["factor"])
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > old / lo, inv / f, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / f + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = np.where(medium, smoothed, scaled)
    return inv


def apply_rope(x, positions, inv_freq):
    """x [n, heads, d], HF's rotate-half layout (first half pairs with second half)."""
    ang = positions[:, None].astype(np.float64) * inv_freq[None, :]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return (x * cos + rot * sin).astype(np.float32)


def forward(cfg: ModelConfig, w: dict, ids, kv_dtype=None) -> np.ndarray:
    """logits [n, vocab] for token ids, causal, positions 0..n-1. kv_dtype=np.float16 rounds
    the keys (after RoPE) and values to half, saturated at +-65504, like an f16 KV cache."""
    ids = np.asarray(ids)
    n, hd = len(ids), cfg.head_dim
    x = w["embed"][ids].astype(np.float32)
    inv = rope_inv_freq(cfg)
    pos = np.arange(n)
    full_mask = np.triu(np.full((n, n), -np.inf, np.float32), 1)
    mask = full_mask.copy()
    if cfg.sliding_window:       # transformers: kv_idx > q_idx - sliding_window
        mask[pos[None, :] <= pos[:, None] - cfg.sliding_window] = -np.inf
    group = cfg.num_heads // cfg.num_kv_heads

    def proj(p, kind, h):
        """A layer linear: its own input norm first (linear_norm, unless in plain_linears),
        its bias after (attention_bias: q/k/v; o_bias; mlp_bias: gate/up/down)."""
        if cfg.linear_norm and p + kind not in cfg.plain_linears:
            h = rmsnorm(h, w[p + kind + "_in_norm"], cfg.linear_norm_eps)
        y = linear(h, w[p + kind])
        biased = ((cfg.attention_bias and kind in ("q", "k", "v")) or (cfg.o_bias and kind == "o")
                  or (cfg.mlp_bias and kind in ("gate", "up", "down")))
        return y + w[p + kind + "_bias"] if biased else y

    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        h = rmsnorm(x, w[p + "attn_norm"], cfg.rms_norm_eps)
        q = proj(p, "q", h).reshape(n, cfg.num_heads, hd)
        k = proj(p, "k", h).reshape(n, cfg.num_kv_heads, hd)
        if cfg.qk_norm:
            q, k = rmsnorm(q, w[p + "q_norm"], cfg.rms_norm_eps), rmsnorm(k, w[p + "k_norm"], cfg.rms_norm_eps)
        q, k = apply_rope(q, pos, inv), apply_rope(k, pos, inv)
        v = proj(p, "v", h).reshape(n, cfg.num_kv_heads, hd)
        if kv_dtype is not None:
            k, v = (np.clip(a, -65504, 65504).astype(kv_dtype).astype(np.float32) for a in (k, v))
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        layer_mask = full_mask if i in cfg.full_attention_layers else mask
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + layer_mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", probs, v).reshape(n, cfg.num_heads * hd).astype(np.float32)
        if cfg.arch == "bitnet":
            att = rmsnorm(att, w[p + "attn_sub_norm"], cfg.rms_norm_eps)
        x = x + proj(p, "o", att)
        h = rmsnorm(x, w[p + "ffn_norm"], cfg.rms_norm_eps)
        g, u = proj(p, "gate", h), proj(p, "up", h)
        if cfg.hidden_act == "relu2":
            a = np.square(np.maximum(g, 0)) * u
        else:
            a = g / (1 + np.exp(-g)) * u
        if cfg.arch == "bitnet":
            a = rmsnorm(a, w[p + "ffn_sub_norm"], cfg.rms_norm_eps)
        x = x + proj(p, "down", a.astype(np.float32))
    x = rmsnorm(x, w["norm"], cfg.rms_norm_eps)
    head = w["embed"] if cfg.tie_word_embeddings else w["lm_head"]
    return linear(x, head)


def weights_from_checkpoint(ckpt, hf_folder):
    """Reference weights for an HF folder: float tensors as f32; BitNet packed linears as
    ("ternary", T, multiplier) read by ternlm.io.hf.read_ternary; online master weights
    quantized here with absmean (conftest.absmean_ternary)."""
    import json
    import os

    from conftest import absmean_ternary
    from ternlm import schema
    from ternlm.io.hf import read_ternary
    from ternlm.io.safetensors import SafetensorsFolder
    st = SafetensorsFolder(hf_folder)
    quant = json.load(open(os.path.join(hf_folder, "config.json"))).get("quantization_config")
    out = {}
    for spec in schema.specs(ckpt.config):
        name = spec.name
        if ckpt.stored.get(name) != "ternary":
            out[name] = np.asarray(ckpt.tensors[name], dtype=np.float32)
            continue
        key = spec.hf_name
        if quant["quantization_mode"] == "online":
            t, s_w = absmean_ternary(st.to_float32(key))
            out[name] = ("ternary", t, np.full(t.shape[0], np.float32(1) / s_w, np.float32))
        else:
            rows, cols = spec.shape
            t, mult = read_ternary(st, key, key + "_scale", rows, cols, quant, key)
            out[name] = ("ternary", t, mult)
    return out
