"""GGUF tensors -> ternlm values: the block decoders and the per-tensor conversion of
ternlm.io.gguf (which reads the header and the config).

    F32            float32 array                    stored "f32"
    F16            float16 array (the file's view;  stored "f32"
                   the converter widens it exactly, a few rows at a time)
    BF16           GGUFBF16Tensor: the bf16 bits    stored "bf16"
                   (ternlm.config.BF16Bits; no float32 copy)
    Q8_0           dequantized to float32 (exact)   stored "f32"
    Q4_0, Q4_1     ternlm INT4 group 32, lossless   stored "int4"
    Q6_K           ternlm q6 (cpp/formats/q6.h: the same numerics), lossless   stored "q6"
    TQ1_0, TQ2_0   ternlm ternary with one multiplier per row when every non-zero 256-block
                   of the row has the same fp16 scale (exact); otherwise the row's blocks
                   cannot share one scale, and the tensor becomes INT4 group 32 with
                   scale = d, min = -d, q = t + 1 -- still exact, at 5 bits per weight --
                   with a warning (see _ternary_tensor).
    I2_S           bitnet.cpp's ternary type (GGML type id 36 in its llama.cpp fork):
                   ternlm ternary with its one f32 scale per tensor, lossless
    TL1, TL2       bitnet.cpp's lookup-table types (ids 38, 39): refused by the reader
                   (ternlm.io.gguf_reader) with a message naming them
Anything else raises ValueError naming the file, tensor and type.

Block layouts (ggml, one block = 32, 128 or 256 consecutive weights of a row):
    Q4_0   [d f16][16 bytes]          w = d * (q - 8)
    Q4_1   [d f16][m f16][16 bytes]   w = d * q + m
           byte j holds element j in its low nibble and element j+16 in its high nibble.
    Q8_0   [d f16][32 x int8]         w = d * q
    Q6_K   [ql 128][qh 64][sc 16 x int8][d f16], 256 weights, w = d * sc[j / 16] * (u - 32):
           for half h = 0, 1 (elements 128h ..) and l = 0..31, with L = ql[64h ..], H = qh[32h ..]:
             u[128h + l]      = L[l] & 15      | (H[l] & 3) << 4
             u[128h + l + 32] = L[l + 32] & 15 | (H[l] >> 2 & 3) << 4
             u[128h + l + 64] = L[l] >> 4      | (H[l] >> 4 & 3) << 4
             u[128h + l + 96] = L[l + 32] >> 4 | (H[l] >> 6 & 3) << 4
    TQ2_0  [64 bytes][d f16]          byte 32*c+j, bits 2k..2k+1 hold element 128*c+32*k+j, as t+1
    TQ1_0  [48 bytes][4 bytes][d f16] base-3 digits, 5 per byte (4 in the last 4 bytes);
           decoded with gguf.quants, which is the reference.
    I2_S   the whole tensor (rows * cols weights, flattened) in blocks of 128 weights, 32
           bytes each: weight j of a block in byte j % 32, bits 6 - 2 (j / 32) .. 7 - 2 (j / 32),
           as t + 1 (3 is invalid); then 32 bytes whose first 4 are the f32 scale s:
           w = s * t. (This is the layout bitnet.cpp's x86 build writes, and that of the
           published ggml-model-i2_s.gguf files; its aarch64 build and its 4-row variant
           write 64-weight blocks / interleaved rows, which the file does not mark.)
"""
from __future__ import annotations

import warnings

import numpy as np

from ..config import BF16Bits
from .safetensors import bf16_bits_to_float32

GROUP = 32          # Q4_0 / Q4_1 / Q8_0 block
TQ_BLOCK = 256      # TQ1_0 / TQ2_0 / Q6_K block
I2S_BLOCK = 128
SUPPORTED = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q6_K, TQ1_0, TQ2_0, I2_S"


def unpermute_rows(a: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation. Its converter writes, per head of `dim` rows,
    row (2*i + j) <- HF row (j*dim/2 + i); here we put each row back. `a` is any array
    whose first axis is the rows (weights, or int4 codes/scales/mins of those rows)."""
    rows = a.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot undo the RoPE row permutation: {rows} rows, {n_head} heads")
    half = rows // n_head // 2
    return np.ascontiguousarray(a.reshape(n_head, half, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape))


class GGUFBF16Tensor(BF16Bits):
    """A GGUF BF16 tensor, a view of the memory-mapped file (q/k rows put back in order when
    the bits are taken): the converter quantizes or keeps the bits as they are (no float32
    copy of the matrix); np.asarray widens it exactly."""

    def __init__(self, bits: np.ndarray, perm):
        self._bits, self._perm = bits, perm
        self.shape = tuple(bits.shape)

    def bits(self) -> np.ndarray:
        return self._perm(self._bits)

    def __array__(self, dtype=None, copy=None):
        a = bf16_bits_to_float32(self.bits())
        return a if dtype is None else a.astype(dtype, copy=False)


# ---- block decoders (numpy, bit-exact with gguf.quants) --------------------------------------
def _blocks(t, block_bytes):
    rows = int(t.shape[1]) if len(t.shape) > 1 else 1
    data = np.asarray(t.data, dtype=np.uint8).reshape(rows, -1)
    return data.reshape(rows, -1, block_bytes)


def q4_codes(qs: np.ndarray) -> np.ndarray:
    """[..., 16] packed bytes -> [..., 32] codes 0..15 (low nibbles = elements 0..15)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def decode_q4(t, kind: str):
    """Q4_0 / Q4_1 tensor -> (q uint8 [rows, cols], scale f16 [rows, cols/32], min f16 same)
    with w = scale * q + min exactly. Q4_0's min is -8 d, exact in fp16 unless |d| > 8188."""
    if kind == "Q4_1":
        b = _blocks(t, 20)
        d = b[..., 0:2].copy().view(np.float16)[..., 0]
        m = b[..., 2:4].copy().view(np.float16)[..., 0]
        q = q4_codes(b[..., 4:20])
    else:
        b = _blocks(t, 18)
        d = b[..., 0:2].copy().view(np.float16)[..., 0]
        with np.errstate(over="ignore"):
            m = (d.astype(np.float32) * np.float32(-8)).astype(np.float16)
        if not np.array_equal(m.astype(np.float32), d.astype(np.float32) * np.float32(-8)):
            return None   # a block scale so large that -8 d overflows fp16: caller falls back
        q = q4_codes(b[..., 2:18])
    rows = q.shape[0]
    return q.reshape(rows, -1), np.ascontiguousarray(d), np.ascontiguousarray(m)


def decode_q6k(t):
    """Q6_K -> (u uint8 [rows, cols] in 0..63, sc int8 [rows, cols/16], d f16 [rows, cols/256])
    with w = d * sc * (u - 32) (layout in the module docstring)."""
    b = _blocks(t, 210)
    rows, nb = b.shape[:2]
    ql, qh = b[..., 0:128].reshape(rows, nb, 2, 64), b[..., 128:192].reshape(rows, nb, 2, 32)
    lo_a, lo_b = ql[..., :32], ql[..., 32:]
    u = np.concatenate([lo_a & 15 | (qh & 3) << 4, lo_b & 15 | (qh >> 2 & 3) << 4,
                        lo_a >> 4 | (qh >> 4 & 3) << 4, lo_b >> 4 | (qh >> 6 & 3) << 4], axis=-1)
    sc = np.ascontiguousarray(b[..., 192:208].view(np.int8).reshape(rows, nb * 16))
    d = np.ascontiguousarray(b[..., 208:210].copy().view(np.float16)[..., 0])
    return np.ascontiguousarray(u.reshape(rows, nb * 256)), sc, d


def decode_tq(t, kind: str):
    """TQ1_0 / TQ2_0 -> (ternary int8 [rows, cols], block scale f16 [rows, cols/256])."""
    import gguf
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    b = _blocks(t, block_bytes)
    d = b[..., block_bytes - 2:].copy().view(np.float16)[..., 0]
    # dequantize with every scale set to 1 gives the ternary digits themselves
    ones = b.copy()
    ones[..., block_bytes - 2:] = np.frombuffer(np.float16(1).tobytes(), dtype=np.uint8)
    tern = gguf.quants.dequantize(ones.reshape(b.shape[0], -1), qtype)
    return tern.astype(np.int8).reshape(b.shape[0], -1), d


def decode_i2s(t, path):
    """I2_S -> (ternary int8 [rows, cols], scale float32). The reader (gguf_reader) has checked
    that the tensor holds rows * cols / 4 + 32 bytes."""
    cols, rows = int(t.shape[0]), int(np.prod(t.shape[1:]))
    n = rows * cols
    if n % I2S_BLOCK:
        raise ValueError(f"{path}: tensor {t.name}: I2_S with {n} weights, not a multiple of its "
                         f"{I2S_BLOCK}-weight block")
    raw = np.asarray(t.data, dtype=np.uint8).reshape(-1)
    packed = raw[: n // 4].reshape(-1, 1, 32)
    shifts = np.array([6, 4, 2, 0], np.uint8).reshape(1, 4, 1)
    codes = (packed >> shifts) & 3                       # [block][j / 32][j % 32]
    if np.any(codes == 3):
        i = int(np.argwhere(codes.reshape(-1) == 3)[0][0])
        raise ValueError(f"{path}: tensor {t.name}: I2_S weight {i} (row {i // cols}) holds the invalid code 3")
    scale = raw[n // 4: n // 4 + 4].copy().view(np.float32)[0]
    if not np.isfinite(scale):
        raise ValueError(f"{path}: tensor {t.name}: I2_S scale is {scale} (not finite)")
    return (codes.astype(np.int8) - 1).reshape(rows, cols), np.float32(scale)


# ---- per-tensor conversion ---------------------------------------------------------------------
def _check_block_scales(d, name, path, what="block scale"):
    """Every block's fp16 scale must be finite: a NaN scale would otherwise vanish (an
    all-NaN row of TQ scales reads as an all-zero row) or poison every logit."""
    bad = ~np.isfinite(d.astype(np.float32))
    if bad.any():
        r, b = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{path}: tensor {name}: {int(bad.sum())} {what}(s) are Inf or NaN "
                         f"(first: row {r}, block {b})")


def _ternary_tensor(tern, d, name, path):
    """Ternary codes + per-block scales -> a ternlm matrix.

    ternlm's ternary format has one multiplier per row. A row is exact when all of its
    blocks that hold a non-zero weight share one scale (all-zero blocks fit any scale);
    llama.cpp's TQ conversion of BitNet checkpoints gives exactly that. Otherwise the
    blocks are kept exactly as INT4 group 32 (q = t + 1, scale = d, min = -d) and a
    warning says so."""
    from .. import formats as fm
    d32 = d.astype(np.float32)
    nz = np.any(tern.reshape(tern.shape[0], d.shape[1], TQ_BLOCK) != 0, axis=2)
    masked = np.where(nz, d32, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # all-NaN rows (all-zero rows)
        lo, hi = np.nanmin(masked, axis=1), np.nanmax(masked, axis=1)
    row_scale = np.where(np.isnan(lo), 0.0, lo).astype(np.float32)
    if np.all(np.isnan(lo) | (lo == hi)):
        return fm.from_ternary(np.ascontiguousarray(tern), row_scale), "ternary"
    warnings.warn(f"{path}: tensor {name}: the 256-weight blocks of a row have different scales, "
                  f"which ternlm's per-row ternary format cannot keep; importing it exactly as INT4 "
                  f"group 32 instead (load with weights='ternary' to requantize to one scale per tensor)",
                  stacklevel=4)
    q = (tern + 1).astype(np.uint8)
    scale = np.repeat(d, TQ_BLOCK // GROUP, axis=1)
    return fm.from_int4(q, scale, (-scale.astype(np.float32)).astype(np.float16), GROUP), "int4"


def read_tensor(t, name, path, n_head_perm):
    """One GGUF tensor -> (value, stored format). n_head_perm: heads of a q/k matrix whose
    rows must be un-permuted, else None."""
    import gguf
    from .. import formats as fm
    kind = t.tensor_type.name
    shape = tuple(int(x) for x in reversed(t.shape))        # ggml ne is [cols, rows]
    perm = (lambda a: unpermute_rows(a, n_head_perm)) if n_head_perm else (lambda a: a)
    if kind in ("F32", "F16"):
        return perm(np.asarray(t.data).reshape(shape)), "f32"
    if kind == "BF16":
        return GGUFBF16Tensor(np.asarray(t.data).view(np.uint16).reshape(shape), perm), "bf16"
    if kind == "Q8_0":
        return perm(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)), "f32"
    if kind in ("Q4_0", "Q4_1", "Q6_K", "TQ1_0", "TQ2_0", "I2_S") and len(shape) != 2:
        raise ValueError(f"{path}: tensor {t.name}: {kind} with shape {shape}, expected 2-D")
    if kind in ("Q4_0", "Q4_1"):
        _check_block_scales(_blocks(t, 20 if kind == "Q4_1" else 18)[..., 0:2].copy().view(np.float16)[..., 0],
                            t.name, path)
        if kind == "Q4_1":
            _check_block_scales(_blocks(t, 20)[..., 2:4].copy().view(np.float16)[..., 0], t.name, path, "block min")
        parts = decode_q4(t, kind)
        if parts is None:
            return perm(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)), "f32"
        q, s, m = (perm(x) for x in parts)
        return fm.from_int4(q, s, m, GROUP), "int4"
    if kind == "Q6_K":
        u, sc, d = decode_q6k(t)
        _check_block_scales(d, t.name, path)
        return fm.from_q6(*(perm(x) for x in (u, sc, d))), "q6"
    if kind in ("TQ1_0", "TQ2_0"):
        tern, d = decode_tq(t, kind)
        _check_block_scales(d, t.name, path)
        return _ternary_tensor(perm(tern), perm(d), t.name, path)
    if kind == "I2_S":
        tern, scale = decode_i2s(t, path)
        return fm.from_ternary(perm(tern), np.full(shape[0], scale, np.float32)), "ternary"
    raise ValueError(f"{path}: tensor {t.name} has GGUF type {kind}, which ternlm cannot import "
                     f"(supported: {SUPPORTED})")


def scale_matrix(value, s: float):
    """A matrix times a per-tensor scalar (llama.cpp's optional `blk.N.*.scale` tensors of the
    bitnet architecture): folded into the row multipliers of a ternary matrix, the values of
    a float one; other formats are dequantized to f32 (exact for the scale 1 of real files)."""
    from .. import formats as fm
    if isinstance(value, fm.QuantizedMatrix):
        if value.format == "ternary":
            mult = value.buffers()["row_multiplier"] * np.float32(s)
            return fm.from_ternary(np.ascontiguousarray(value.ternary_values()), mult), "ternary"
        if s == 1.0:
            return value, value.format
        return (value.dequantize() * np.float32(s)).astype(np.float32), "f32"
    return (np.asarray(value, dtype=np.float32) * np.float32(s)), "f32"
