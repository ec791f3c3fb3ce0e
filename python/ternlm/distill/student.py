"""The student (and the teacher): a torch model of the architecture that ternlm.config.ModelConfig
describes (Llama, or BitNet with its sub-norms and squared ReLU), whose layer linears
(q k v o gate up down) are BitNet b1.58 linears. Embedding, lm_head and norms stay float
(hybrid precision, as BitNet and ternlm's ternary format).

BitLinear, one matrix W [out, in] kept as float32 latent weights; λ in [0, 1] blends the
quantization in (λ warmup of Hugging Face's "Fine-tuning LLMs to 1.58bit" recipe):

    s_w = 1 / max(mean|W|, 1e-5)                 one scale per matrix (absmean)
    T   = clamp(round(W s_w), -1, 1)             ternary, W_q = T / s_w
    s_x = 127 / max(max|x|, 1e-5)                one scale per token (absmax)
    q   = clamp(round(x s_x), -128, 127)         int8, x_q = q / s_x
    y   = (x + λ sg(x_q - x)) (W + λ sg(W_q - W))^T        sg: stop gradient

so at λ = 1 the forward is the quantized layer and the gradient reaches W straight through
the rounding. A QuantSpec other than BitNet's (quest.py: 4-bit weights and activations,
Hadamard-rotated inputs, Gaussian clipping, the trust estimator) replaces these quantizers
with quest.py's, the same blending and straight-through gradients otherwise. With `exact=True` (evaluation, export checks) and λ = 1 a layer computes
y = (q . T) / (s_x s_w) on the integers, as ternlm's kernels and transformers' BitLinear do
(exact in float32, also with TF32 inputs: |q . T| <= 128 * in < 2^24).

Canonical parameter names match ternlm's tensor names: embed, lm_head, norm,
layers.{i}.{attn_norm, q, k, v, attn_sub_norm, o, ffn_norm, gate, up, ffn_sub_norm, down}.
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LAYER_MATRICES = ("q", "k", "v", "o", "gate", "up", "down")
_SDPA_GQA = tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:2]) >= (2, 5)   # enable_gqa


def ternarize(w: torch.Tensor):
    """(T in {-1, 0, 1} as w's dtype, s_w as a 0-d tensor): absmean, one scale per matrix."""
    w = w.float()
    s = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * s).round().clamp(-1, 1), s


def quantize_activations(x: torch.Tensor):
    """(q as float integers in [-128, 127], s_x [..., 1]): absmax per token (last axis)."""
    x = x.float()
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * s).round().clamp(-128, 127), s


class BitLinear(nn.Module):
    """A linear layer without bias; `quantize=False` makes it a plain float linear (the teacher)."""

    def __init__(self, in_features: int, out_features: int, quantize: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.quantize = quantize
        self.exact = False
        # λ lives in a shared 0-d tensor (set by Transformer.set_lambda): changing it never
        # recompiles a torch.compile'd graph, as a Python float attribute would.
        self.lam = None
        self.spec = None            # a quest.QuantSpec other than BitNet's (set by Transformer)
        # this linear rotates its input (x·H); its latent weight then holds W·H (rotated once
        # at build: Transformer.rotate_latent_weights), as the engine stores it
        self.rotate = False

    def forward(self, x):
        if not self.quantize:
            return F.linear(x, self.weight)
        if self.spec is not None:
            return self._forward_spec(x)
        if self.exact:
            t, s_w = ternarize(self.weight)
            q, s_x = quantize_activations(x)
            with torch.autocast(x.device.type, enabled=False):   # float32 sums of integers: exact
                y = F.linear(q, t)
            return y / (s_x * s_w)
        lam = self.lam
        w = self.weight
        t, s_w = ternarize(w)
        w = w + lam * (t / s_w - w).detach()
        q, s_x = quantize_activations(x)
        xf = x.float()
        x = xf + lam * (q / s_x - xf).detach()
        return F.linear(x, w)

    def quantized(self):
        """(weight codes, weight unit) of a spec'd layer: int4: (k in 0..15 [out, in], step/2
        [out, 1]) with values (2k - 15) · unit; ternary: (T [out, in], 1 / s_w). Of the
        rotated weight W·H when this linear rotates its input (which its latent weight holds)."""
        return self._quantize_weight(self.weight.float())

    def _quantize_weight(self, w):
        from . import quest
        if self.spec.weights == "int4":
            k, step = quest.quantize_weights4(w, self.spec.clip)
            return k, step / 2
        t, s_w = ternarize(w)
        return t, 1.0 / s_w

    def _forward_spec(self, x):
        from . import quest
        spec = self.spec
        xf = x.float()
        w = self.weight.float()
        if self.rotate:
            xf = quest.hadamard(xf)
        codes, uw = self._quantize_weight(w)
        cw = 2 * codes - 15 if spec.weights == "int4" else codes
        if spec.activations == "int4":
            cx, ux = quest.quantize_activations4(xf, spec.clip)
        else:
            cx, s_x = quantize_activations(xf)
            ux = 1.0 / s_x
        if self.exact:
            with torch.autocast(x.device.type, enabled=False):   # float32 sums of integers: exact
                y = F.linear(cx, cw)
            return y * ux * (uw.reshape(-1) if uw.dim() else uw)
        lam, trust = self.lam, spec.trust
        wq, xq = cw * uw, cx * ux
        tw = (wq - w).abs() <= trust * uw if trust and spec.weights == "int4" else None
        tx = (xq - xf).abs() <= trust * ux if trust and spec.activations == "int4" else None
        return F.linear(quest.straight_through(xf, xq, lam, tx), quest.straight_through(w, wq, lam, tw))

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, quantize={self.quantize}"


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


def rope_inv_freq(cfg) -> torch.Tensor:
    """Per-pair rotation frequencies (Hugging Face's default and "llama3" rope types).
    Written again here, beside the engine's C++ RopeInverseFrequencies and the tests' numpy
    reference, because the student must run where neither the core nor the tests are (a
    torch-only GPU machine)."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    s = cfg.rope_scaling
    if s and s.get("rope_type") == "llama3":
        old, lo, hi, f = (s["original_max_position_embeddings"], s["low_freq_factor"],
                          s["high_freq_factor"], s["factor"])
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / f, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / f + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = np.where(medium, smoothed, scaled)
    return torch.from_numpy(inv)


def apply_rope(x, cos, sin):
    """x [B, heads, T, d] in the rotate-half layout: element j pairs with j + d/2."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


class Attention(nn.Module):
    def __init__(self, cfg, quantize: bool):
        super().__init__()
        h, hd = cfg.hidden_size, cfg.head_dim
        self.nh, self.nkv, self.hd = cfg.num_heads, cfg.num_kv_heads, hd
        self.q = BitLinear(h, self.nh * hd, quantize)
        self.k = BitLinear(h, self.nkv * hd, quantize)
        self.v = BitLinear(h, self.nkv * hd, quantize)
        self.sub_norm = RMSNorm(self.nh * hd, cfg.rms_norm_eps) if cfg.arch == "bitnet" else None
        self.o = BitLinear(self.nh * hd, h, quantize)

    def forward(self, x, cos, sin, cache=None, pos=0):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.nh, self.hd).transpose(1, 2)
        k = self.k(x).view(b, n, self.nkv, self.hd).transpose(1, 2)
        v = self.v(x).view(b, n, self.nkv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin).to(v.dtype), apply_rope(k, cos, sin).to(v.dtype)
        if cache is not None:                   # [B, kv_heads, context, d], filled in place
            kc, vc = cache
            kc[:, :, pos:pos + n] = k
            vc[:, :, pos:pos + n] = v
            k, v = kc[:, :, :pos + n], vc[:, :, :pos + n]
            if n > 1 and pos > 0:
                raise ValueError("a multi-token forward on a KV cache must start at position 0")
        if self.nkv != self.nh and not _SDPA_GQA:
            k = k.repeat_interleave(self.nh // self.nkv, dim=1)
            v = v.repeat_interleave(self.nh // self.nkv, dim=1)
        gqa = {"enable_gqa": True} if self.nkv != self.nh and _SDPA_GQA else {}
        o = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1, **gqa)
        o = o.transpose(1, 2).reshape(b, n, self.nh * self.hd)
        if self.sub_norm is not None:
            o = self.sub_norm(o)
        return self.o(o)


class MLP(nn.Module):
    def __init__(self, cfg, quantize: bool):
        super().__init__()
        h, m = cfg.hidden_size, cfg.intermediate_size
        self.gate = BitLinear(h, m, quantize)
        self.up = BitLinear(h, m, quantize)
        self.sub_norm = RMSNorm(m, cfg.rms_norm_eps) if cfg.arch == "bitnet" else None
        self.down = BitLinear(m, h, quantize)
        self.relu2 = cfg.hidden_act == "relu2"

    def forward(self, x):
        g = self.gate(x)
        g = F.relu(g).square() if self.relu2 else F.silu(g)
        y = g * self.up(x)
        if self.sub_norm is not None:
            y = self.sub_norm(y)
        return self.down(y)


class Block(nn.Module):
    def __init__(self, cfg, quantize: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, quantize)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, quantize)

    def forward(self, x, cos, sin, cache=None, pos=0):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, pos)
        return x + self.mlp(self.ffn_norm(x))


# canonical ternlm name suffix -> attribute path inside Block
_BLOCK_PATHS = {"attn_norm": "attn_norm", "q": "attn.q", "k": "attn.k", "v": "attn.v",
                "attn_sub_norm": "attn.sub_norm", "o": "attn.o", "ffn_norm": "ffn_norm",
                "gate": "mlp.gate", "up": "mlp.up", "ffn_sub_norm": "mlp.sub_norm", "down": "mlp.down"}


class Transformer(nn.Module):
    """logits = model(ids [B, T]) -> [B, T, vocab]. quantize=False: every linear is a plain
    float linear (the teacher); True: BitLinear (the student)."""

    def __init__(self, cfg, quantize: bool = True, spec=None):
        super().__init__()
        self.config = cfg
        # BitNet's spec runs BitLinear's own (original) path; any other, quest.py's quantizers
        self.spec = None if spec is None or spec.is_bitnet else spec
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, quantize) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg).float(), persistent=False)
        self.register_buffer("lam", torch.ones(()), persistent=False)
        for m in self.bitlinears():
            m.lam = self.lam
        if self.spec is not None and quantize:
            sites = self.spec.sites()
            from .quest import SITE_OF
            for i in range(cfg.num_layers):
                for part in LAYER_MATRICES:
                    m = self.module_for(f"layers.{i}.{part}")
                    m.spec, m.rotate = self.spec, SITE_OF[part] in sites

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        for m in self.bitlinears():             # .to(device) replaced the buffer: re-share it
            m.lam = self.lam
        return out

    # ---- names ----------------------------------------------------------------------------
    def bitlinears(self):
        return [m for m in self.modules() if isinstance(m, BitLinear)]

    def module_for(self, name: str) -> nn.Module:
        """ternlm canonical name -> its module (embed, lm_head, norm, layers.{i}.<part>)."""
        if name in ("embed", "norm"):
            return getattr(self, name)
        if name == "lm_head":
            return self.embed if self.lm_head is None else self.lm_head
        _, i, part = name.split(".", 2)
        m = self.layers[int(i)]
        for attr in _BLOCK_PATHS[part].split("."):
            m = getattr(m, attr)
        if m is None:
            raise KeyError(f"{name}: not part of a {self.config.arch} model")
        return m

    def tensor_names(self) -> list:
        """Canonical names of this model's weights, from its own modules (no C++ schema needed)."""
        names = ["embed"]
        for i, block in enumerate(self.layers):
            for part, path in _BLOCK_PATHS.items():
                m = block
                for attr in path.split("."):
                    m = getattr(m, attr)
                if m is not None:
                    names.append(f"layers.{i}.{part}")
        return names + ["norm"] + ([] if self.lm_head is None else ["lm_head"])

    def load_tensors(self, tensors) -> None:
        """Copy float32 weights by canonical name (every name of config.tensor_names())."""
        with torch.no_grad():
            for name in self.tensor_names():
                p = self.module_for(name).weight
                value = torch.from_numpy(np.array(tensors[name], dtype=np.float32))
                if tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"tensor {name}: shape {list(value.shape)}, the model needs {list(p.shape)}")
                p.copy_(value)

    # ---- modes ----------------------------------------------------------------------------
    def set_lambda(self, lam: float) -> None:
        self.lam.fill_(float(lam))

    def rotate_latent_weights(self) -> None:
        """W <- W·H in every linear that rotates its input (build() calls it once)."""
        from .quest import hadamard
        with torch.no_grad():
            for m in self.bitlinears():
                if m.rotate:
                    m.weight.copy_(hadamard(m.weight.float()))

    def set_exact(self, exact: bool) -> None:
        for m in self.bitlinears():
            m.exact = bool(exact)

    # ---- forward --------------------------------------------------------------------------
    def _rope(self, pos: int, n: int, device):
        t = torch.arange(pos, pos + n, device=device, dtype=torch.float32)
        ang = t[:, None] * self.inv_freq.to(device)[None, :]
        ang = torch.cat([ang, ang], dim=-1)
        return ang.cos(), ang.sin()

    def hidden(self, ids, cache=None, pos=0):
        x = self.embed(ids).float()
        cos, sin = self._rope(pos, ids.shape[1], ids.device)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, None if cache is None else cache[i], pos)
        return self.norm(x)

    def head(self, h):
        w = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, w)

    def forward(self, ids, cache=None, pos=0):
        return self.head(self.hidden(ids, cache, pos))

    def new_cache(self, batch: int, length: int, dtype=None, device=None):
        c = self.config
        dtype = dtype or torch.float32
        shape = (batch, c.num_kv_heads, length, c.head_dim)
        return [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
                for _ in range(c.num_layers)]

    # ---- the quantized weights ------------------------------------------------------------
    def ternary_weights(self) -> dict:
        """canonical name -> (T int8 numpy [out, in], s_w float) of every BitLinear."""
        out = {}
        with torch.no_grad():
            for i in range(self.config.num_layers):
                for part in LAYER_MATRICES:
                    t, s = ternarize(self.module_for(f"layers.{i}.{part}").weight)
                    out[f"layers.{i}.{part}"] = (t.to(torch.int8).cpu().numpy(), float(s))
        return out

    def quantized_weights(self) -> dict:
        """canonical name -> BitLinear.quantized() as numpy of every layer matrix (a spec'd
        student): int4 (uint8 k [out, in], float32 step/2 [out]); ternary (int8 T, 1/s_w)."""
        out = {}
        with torch.no_grad():
            for i in range(self.config.num_layers):
                for part in LAYER_MATRICES:
                    codes, unit = self.module_for(f"layers.{i}.{part}").quantized()
                    if self.spec.weights == "int4":
                        out[f"layers.{i}.{part}"] = (codes.to(torch.uint8).cpu().numpy(),
                                                     unit.reshape(-1).float().cpu().numpy())
                    else:
                        out[f"layers.{i}.{part}"] = (codes.to(torch.int8).cpu().numpy(), float(unit))
        return out

    def float_weights(self) -> dict:
        """canonical name -> float32 numpy of every weight that is not a layer matrix."""
        out = {}
        with torch.no_grad():
            for name in self.tensor_names():
                if name.rsplit(".", 1)[-1] in LAYER_MATRICES and name.startswith("layers."):
                    continue
                out[name] = self.module_for(name).weight.detach().float().cpu().numpy()
        return out


def build(cfg, tensors, quantize: bool, device=None, spec=None) -> Transformer:
    """A Transformer with the given float32 weights (canonical names) on `device`; spec: a
    quest.QuantSpec (None: BitNet b1.58)."""
    model = Transformer(cfg, quantize=quantize, spec=spec)
    model.load_tensors(tensors)
    model.rotate_latent_weights()
    return model.to(device) if device is not None else model
