"""GGUF file -> Checkpoint (architecture `llama`).

    ckpt = load_gguf("model.gguf")       # ternlm.load("model.gguf", ...) calls this

Tensors, read through the `gguf` package's memory-mapped reader:
    F32            float32 array                    stored "f32"
    F16            float32 array (exact)            stored "f32"
    BF16           float32 array (exact)            stored "bf16"
    Q8_0           dequantized to float32 (exact)   stored "f32"
    Q4_0, Q4_1     ternlm INT4 group 32, lossless   stored "int4"
    TQ1_0, TQ2_0   ternlm ternary with one multiplier per row when every non-zero 256-block
                   of the row has the same fp16 scale (exact); otherwise the row's blocks
                   cannot share one scale, and the tensor becomes INT4 group 32 with
                   scale = d, min = -d, q = t + 1 -- still exact, at 5 bits per weight --
                   with a warning (see _ternary_tensor).
Anything else raises ValueError naming the file, tensor and type. Tensor names
(blk.N.attn_q.weight -> layers.N.q, ...) and shapes are the tensor schema's (ternlm/schema.py).

Block layouts (ggml, one block = 32 or 256 consecutive weights of a row):
    Q4_0   [d f16][16 bytes]          w = d * (q - 8)
    Q4_1   [d f16][m f16][16 bytes]   w = d * q + m
           byte j holds element j in its low nibble and element j+16 in its high nibble.
    Q8_0   [d f16][32 x int8]         w = d * q
    TQ2_0  [64 bytes][d f16]          byte 32*c+j, bits 2k..2k+1 hold element 128*c+32*k+j, as t+1
    TQ1_0  [48 bytes][4 bytes][d f16] base-3 digits, 5 per byte (4 in the last 4 bytes);
           decoded with gguf.quants, which is the reference.

llama.cpp's converter permutes the rows of attn_q / attn_k within each head so that its
interleaved ("GPT-J") RoPE applies; ternlm (like Hugging Face) rotates halves, so the
permutation is undone here, as transformers' GGUF loader does.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from .. import schema
from ..config import Checkpoint, ModelConfig, config_float, config_int

GROUP = 32          # Q4_0 / Q4_1 / Q8_0 block
TQ_BLOCK = 256      # TQ1_0 / TQ2_0 block


def _open(path):
    from .gguf_reader import GGUFFile
    try:
        return GGUFFile(path)
    except ValueError as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e


def field_value(reader, key, default=None):
    """A metadata value as a Python scalar, str or list; default when the key is absent."""
    return reader.fields.get(key, default)


def unpermute_rows(a: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation. Its converter writes, per head of `dim` rows,
    row (2*i + j) <- HF row (j*dim/2 + i); here we put each row back. `a` is any array
    whose first axis is the rows (weights, or int4 codes/scales/mins of those rows)."""
    rows = a.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot undo the RoPE row permutation: {rows} rows, {n_head} heads")
    half = rows // n_head // 2
    return np.ascontiguousarray(a.reshape(n_head, half, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape))


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
                  stacklevel=3)
    q = (tern + 1).astype(np.uint8)
    scale = np.repeat(d, TQ_BLOCK // GROUP, axis=1)
    return fm.from_int4(q, scale, (-scale.astype(np.float32)).astype(np.float16), GROUP), "int4"


def _read_tensor(t, name, path, n_head_perm):
    """One GGUF tensor -> (value, stored format). n_head_perm: heads of a q/k matrix whose
    rows must be un-permuted, else None."""
    import gguf
    from .. import formats as fm
    kind = t.tensor_type.name
    shape = tuple(int(x) for x in reversed(t.shape))        # ggml ne is [cols, rows]
    perm = (lambda a: unpermute_rows(a, n_head_perm)) if n_head_perm else (lambda a: a)
    if kind in ("F32", "F16"):
        a = np.asarray(t.data).reshape(shape)
        return perm(a.astype(np.float32) if kind == "F16" else a), "f32"
    if kind == "BF16":
        raw = np.asarray(t.data).view(np.uint16).reshape(shape).astype(np.uint32) << 16
        return perm(raw.view(np.float32)), "bf16"
    if kind == "Q8_0":
        return perm(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)), "f32"
    if kind in ("Q4_0", "Q4_1"):
        if len(shape) != 2:
            raise ValueError(f"{path}: tensor {t.name}: {kind} with shape {shape}, expected 2-D")
        _check_block_scales(_blocks(t, 20 if kind == "Q4_1" else 18)[..., 0:2].copy().view(np.float16)[..., 0],
                            t.name, path)
        if kind == "Q4_1":
            _check_block_scales(_blocks(t, 20)[..., 2:4].copy().view(np.float16)[..., 0], t.name, path, "block min")
        parts = decode_q4(t, kind)
        if parts is None:
            return perm(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)), "f32"
        q, s, m = (perm(x) for x in parts)
        return fm.from_int4(q, s, m, GROUP), "int4"
    if kind in ("TQ1_0", "TQ2_0"):
        if len(shape) != 2:
            raise ValueError(f"{path}: tensor {t.name}: {kind} with shape {shape}, expected 2-D")
        tern, d = decode_tq(t, kind)
        _check_block_scales(d, t.name, path)
        return _ternary_tensor(perm(tern), perm(d), t.name, path)
    raise ValueError(f"{path}: tensor {t.name} has GGUF type {kind}, which ternlm cannot import "
                     f"(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, TQ1_0, TQ2_0)")


# ---- config ------------------------------------------------------------------------------------
def _config(reader, path, tensors_by_name, tokenizer) -> ModelConfig:
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture is {arch!r:.100}; ternlm imports GGUF files of "
                         f"architecture 'llama' only (convert other models from their Hugging Face folder)")

    def count(key, default=None, minimum=1):
        v = field_value(reader, f"llama.{key}", default)
        if v is None:
            raise ValueError(f"{path}: metadata key llama.{key} is missing")
        return config_int(v, f"metadata key llama.{key}", path, minimum)

    def number(key, default):
        return config_float(field_value(reader, f"llama.{key}", default), f"metadata key llama.{key}", path)

    hidden = count("embedding_length")
    heads = count("attention.head_count")
    kv_heads = count("attention.head_count_kv", heads)
    head_dim = (count("attention.key_length", 0, minimum=0) or count("rope.dimension_count", 0, minimum=0)
                or hidden // heads)
    embd = tensors_by_name.get("token_embd.weight")
    vocab = field_value(reader, "llama.vocab_size")
    if vocab is None:
        vocab = int(embd.shape[1]) if embd is not None and len(embd.shape) > 1 else tokenizer.vocab_size
    rope_scaling = None
    stype = field_value(reader, "llama.rope.scaling.type")
    if stype not in (None, "none"):
        raise ValueError(f"{path}: llama.rope.scaling.type {stype!r:.100} is not supported by ternlm")
    if "rope_freqs.weight" in tensors_by_name:
        rope_scaling = _llama3_scaling_from_freqs(reader, tensors_by_name["rope_freqs.weight"], head_dim, path)

    eos = [tokenizer.eos_token_ids[0]] if tokenizer.eos_token_ids else []
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        v = field_value(reader, key)
        if v is not None:
            v = config_int(v, f"metadata key {key}", path, minimum=0)
            if v not in eos:
                eos.append(v)
    return ModelConfig(
        arch="llama", vocab_size=config_int(vocab, "metadata key llama.vocab_size", path), hidden_size=hidden,
        intermediate_size=count("feed_forward_length"), num_layers=count("block_count"),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=number("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=number("rope.freq_base", 10000.0),
        rope_scaling=rope_scaling,
        max_position_embeddings=count("context_length", 4096),
        hidden_act="silu", tie_word_embeddings="output.weight" not in tensors_by_name,
        bos_token_id=tokenizer.bos_token_id, eos_token_ids=eos).validate(path)


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
    """Read a llama-architecture GGUF file into a Checkpoint (lazy where the format allows:
    float tensors stay views of the memory-mapped file)."""
    from .gguf_tokenizer import tokenizer_from_gguf
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file")
    reader = _open(path)
    by_name = {t.name: t for t in reader.tensors}
    tokenizer = tokenizer_from_gguf(reader, path)
    config = _config(reader, path, by_name, tokenizer)
    schema.check_layer_count(config, len(reader.tensors), path, "llama.block_count")

    specs = schema.specs(config)
    by_gguf_name = {s.gguf_name: s for s in specs}
    tensors, stored = {}, {}
    for t in reader.tensors:
        spec = by_gguf_name.get(t.name)
        if spec is None:
            if t.name == "rope_freqs.weight":
                continue                            # folded into config.rope_scaling
            raise ValueError(f"{path}: tensor {t.name} is not part of a llama model ternlm knows")
        n_perm = config.num_heads if spec.kind == "q" else config.num_kv_heads if spec.kind == "k" else None
        value, fmt = _read_tensor(t, spec.name, path, n_perm)
        tensors[spec.name] = value
        if spec.has_format:
            stored[spec.name] = fmt
    missing = [s.name for s in specs if s.name not in tensors]
    if missing:
        raise ValueError(f"{path}: missing tensors for {missing[:5]} (GGUF names like blk.N.attn_q.weight)")
    _check_shapes(specs, tensors, path)
    return Checkpoint(config=config, tensors=tensors, stored=stored, tokenizer=tokenizer, source=path)


def _check_shapes(specs, tensors, path):
    for spec in specs:
        shape = tuple(tensors[spec.name].shape)
        if shape != spec.shape:
            raise ValueError(f"{path}: tensor {spec.name} has shape {list(shape)}, "
                             f"the metadata implies {list(spec.shape)}")
