"""QuEST-style quantization for the student (arXiv 2502.05003): Hadamard-rotated inputs,
4-bit weights and activations with MSE-optimal Gaussian clipping, and the trust gradient
estimator. The torch twins of the engine's kernels (cpp/kernels/hadamard.h,
cpp/kernels/activations.h): given the same input they give the same floats (rotation)
and codes (quantizers), so an exported model runs in ternlm as it was trained.

Rotation (the input of a linear, and its weight rows): x <- x·H, H block-diagonal with
Hadamard blocks of b = the largest power of two dividing the width (>= 16), normalized
by 1/sqrt(b); x·Wᵀ = (x·H)·(W·H)ᵀ. Computed as the engine does: butterflies in stages
h = 1, 2, ..., b/2, then one f32 multiply.

4-bit grid (16 levels, no zero, as QuEST's): clip alpha, s = 7.5 / alpha, codes
c = clamp(2 floor(x s) + 1, -15, 15) (odd), value c · u with u = 1 / (2 s):
    activations, per token:   alpha = max|x| ("absmax") or 2.5139 · RMS(x) ("gaussian":
                              the MSE-optimal clip of a 16-level grid for a Gaussian, and
                              x·H is close to Gaussian whatever x's outliers)
    weights, per output row:  the same alpha; the level spacing 2 u is rounded to 7
                              significant bits so that u·2 and 7.5·(2u) are exact fp16
                              (the int4 format's scale and min: export.py)
Trust estimator: the straight-through gradient reaches only the elements whose
quantization error is at most trust · u (trust = 1: every element inside [-alpha, alpha]
and those within half a step beyond; clipped outliers get none), as QuEST's trust mask.

QuantSpec says what a student's layer linears do; MODES are the presets of `--mode`.
"""
from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass

import torch

GAUSSIAN_CLIP4 = 2.513930578568423       # alpha / sigma minimizing the MSE of a 16-level grid
# the same rounded to float32 (what the engine multiplies by), as a Python float: no tensor
# built per call, so torch.compile traces it as a constant (no .item() graph break)
GAUSSIAN_CLIP4_F32 = struct.unpack("<f", struct.pack("<f", GAUSSIAN_CLIP4))[0]
SITES = ("qkv", "o", "gate_up", "down")
SITE_OF = {"q": "qkv", "k": "qkv", "v": "qkv", "o": "o", "gate": "gate_up", "up": "gate_up", "down": "down"}
MIN_BLOCK = 16


@dataclass(frozen=True)
class QuantSpec:
    weights: str = "ternary"        # "ternary" (absmean, BitNet b1.58) | "int4" (per-row 4-bit grid)
    activations: str = "int8"       # "int8" (absmax per token, BitNet) | "int4" (4-bit grid per token)
    clip: str = "absmax"            # clip of the 4-bit grids: "absmax" | "gaussian"
    rotate: str = ""                # linear inputs rotated: comma-separated SITES
    trust: float | None = None      # trust-estimator bound in units u (None: plain straight-through)

    def check(self) -> "QuantSpec":
        if self.weights not in ("ternary", "int4"):
            raise ValueError(f"weights must be 'ternary' or 'int4', got {self.weights!r}")
        if self.activations not in ("int8", "int4"):
            raise ValueError(f"activations must be 'int8' or 'int4', got {self.activations!r}")
        if self.weights == "int4" and self.activations == "int8":
            raise ValueError("int4 weights need int4 activations: ternlm's int4 kernel quantizes int8 activations "
                             "per block of 32, not per token as a trained model's would be")
        if self.clip not in ("absmax", "gaussian"):
            raise ValueError(f"clip must be 'absmax' or 'gaussian', got {self.clip!r}")
        bad = [s for s in self.sites() if s not in SITES]
        if bad:
            raise ValueError(f"rotate: {bad[0]!r} is not one of {', '.join(SITES)}")
        if self.trust is not None and not (isinstance(self.trust, (int, float)) and self.trust > 0):
            raise ValueError(f"trust must be None or a number > 0, got {self.trust!r}")
        return self

    def sites(self) -> list:
        return [s for s in self.rotate.split(",") if s]

    @property
    def is_bitnet(self) -> bool:
        """BitNet b1.58 as transformers runs it: exported as a Hugging Face bitnet folder."""
        return self.weights == "ternary" and self.activations == "int8" and not self.rotate

    def config_fields(self) -> dict:
        """The ModelConfig fields that make the engine run this student's layer inputs."""
        return {"rotate_inputs": ",".join(s for s in SITES if s in self.sites()),
                "activation_bits": 4 if self.activations == "int4" else 8,
                "activation_clip": self.clip if self.activations == "int4" else "absmax"}

    def to_dict(self) -> dict:
        return asdict(self)


MODES = {
    "bitnet": QuantSpec(),
    "quest4": QuantSpec(weights="int4", activations="int4", clip="gaussian", rotate=",".join(SITES), trust=1.0),
}


def spec_for(mode: str = "bitnet", **overrides) -> QuantSpec:
    """MODES[mode] with the given fields replaced (None: keep the mode's)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    d = MODES[mode].to_dict()
    for k, v in overrides.items():
        if k not in d:
            raise TypeError(f"unknown quantization option {k!r}")
        if v is not None:
            d[k] = v
    if overrides.get("trust") == 0:
        d["trust"] = None
    return QuantSpec(**d).check()


def hadamard_block(n: int) -> int:
    """The block of the rotation of an n-vector (the largest power of two dividing n), or 0
    when it is below MIN_BLOCK (not supported)."""
    b = n & -n
    return b if b >= MIN_BLOCK else 0


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """x·H over the last axis (module docstring), differentiable; x float32."""
    n = x.shape[-1]
    b = hadamard_block(n)
    if not b:
        raise ValueError(f"hadamard: width {n} is not a multiple of {MIN_BLOCK}")
    lead = x.shape[:-1]
    h = 1
    while h < b:
        v = x.reshape(*lead, n // (2 * h), 2, h)
        a, c = v[..., 0, :], v[..., 1, :]
        x = torch.stack((a + c, a - c), dim=-2).reshape(*lead, n)
        h *= 2
    return x * torch.tensor(1.0 / math.sqrt(b), dtype=torch.float32, device=x.device)


def _alpha(x: torch.Tensor, clip: str) -> torch.Tensor:
    if clip == "gaussian":
        # in float64 with one rounding, as the engine (torch's float32 sqrt is not always
        # correctly rounded; float64's error vanishes in the rounding to float32)
        ms = x.double().square().sum(-1, keepdim=True) / x.shape[-1]
        return (ms.sqrt() * GAUSSIAN_CLIP4_F32).float()
    return x.abs().amax(-1, keepdim=True)


def quantize_activations4(x: torch.Tensor, clip: str):
    """(codes c as float odd integers in [-15, 15], unit u [..., 1]) per row of x (float32):
    the engine's QuantizeActivationsInt4."""
    x = x.float()
    alpha = _alpha(x, clip).clamp(min=1e-5)
    s = torch.full_like(alpha, 7.5) / alpha
    c = (x * s).floor().clamp(-8, 7) * 2 + 1
    return c, torch.ones_like(s) / (2 * s)


def weight_step(w: torch.Tensor, clip: str) -> torch.Tensor:
    """Level spacing 2u per row [out, 1]: 2 alpha / 15 rounded to 7 significant bits, in
    [2^-14, 2^13] (so the int4 format's fp16 scale 2u and min -7.5·2u are exact)."""
    step = 2 * _alpha(w.float(), clip).clamp(min=1e-8) / 15
    m, e = torch.frexp(step)
    step = torch.ldexp(torch.round(m * 128) / 128, e)
    return step.clamp(2.0 ** -14, 2.0 ** 13)


def quantize_weights4(w: torch.Tensor, clip: str):
    """(codes k in 0..15 as float [out, in], step [out, 1]): w ≈ (k - 7.5) · step."""
    step = weight_step(w, clip)
    k = (w.float() / step + 8).floor().clamp(0, 15)
    return k, step


def straight_through(v: torch.Tensor, vq: torch.Tensor, lam, trusted=None) -> torch.Tensor:
    """Forward v + λ (vq - v); gradient 1, or 1 - λ where not trusted (trust estimator)."""
    out = v + lam * (vq - v).detach()
    if trusted is not None:
        out = out - lam * (~trusted) * (v - v.detach())
    return out
