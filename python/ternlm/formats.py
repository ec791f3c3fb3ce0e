"""Weight formats and the matmul kernels, numpy in and numpy out.

    q = ternlm.quantize(w, "ternary")        # w: float32/float16 [out, in]
    q = ternlm.quantize(w, "int4", group_size=32)
    q = ternlm.quantize(w, "bf16")            # or "bf16c": the same values in ~12 bits
    q = ternlm.quantize_bf16(bits, "q6")      # bits: uint16 bf16 patterns; any format, no float32 copy
    q = ternlm.quantize(w, "int8")            # or "q6": near-lossless embedding / head formats
    y = ternlm.matmul(x, q)                  # x: float32 [in] or [n, in]

Numerics (each format's header under cpp/formats/ defines them; quantized_matrix.h lists
what quantize() does):
  ternary  absmean per tensor: s_w = 1/max(mean|W|, 1e-5), T = clamp(round(W s_w), -1, 1);
           activations int8 per row, s_x = 127/max(max|x|, 1e-5); the int32 sums are exact
           and y = (q . T) / s_x * row_multiplier (row_multiplier = 1/s_w after quantize());
           cpp/formats/ternary.h.
  int4     group-wise asymmetric w = scale*q + min, q in [0, 15], fp16 scale/min (GGUF Q4_1);
           matmul quantizes activations to int8 per block of 32 inputs (exact integer dots
           per block); the min term uses the sum of those dequantized activations (as
           GGUF Q8_1), so the error is sum w*(x̂-x) over the real, centred weights;
           cpp/formats/int4.h.
  bf16     round to nearest even; f32 activations and accumulation (cpp/formats/bf16.h).
  bf16c    bf16's values bit for bit in ~12 bits per weight (cpp/formats/bf16c.h: per 16-row
           tile a table of 15 high bytes, a 4-bit code + the low byte per weight, the rare
           others in an exception list); f32 activations and accumulation, like bf16.
  int8     symmetric per row: scale = max|w|/127, q in [-127, 127]; activations int8 per block
           of 32 (exact int32 dots per block), y = scale * sum_b dot_b / s_b; cpp/formats/int8.h.
  q6       GGUF Q6_K's numerics in ternlm's own tiles: w = d * sc * (u - 32), u 6 bits per
           weight, sc int8 per 16 weights, d fp16 per 256 (~6.6 bits per weight); activations
           as int8; from_q6 imports Q6_K fields without loss; cpp/formats/q6.h.

  nano     sub-1-bit: W ~ diag(s_out) U V^T diag(s_in) with sign matrices U [out, r], V [in, r]
           and fp16 scales; "nano:<bits>" (0 < bits < 2) picks the rank r; the matmul is two
           binary products on int8 activations (exact int32 sums); cpp/formats/nano.h,
           python/ternlm/nano.py (the factorization). from_nano(u, v, s_out, s_in) builds one.

Packed layouts are drawn in those headers; ``q.buffers()`` returns the stored arrays
(layout_version 2, the only one read: ternary matrices in 16-row tiles, rows padded to 64
weights) and ``QuantizedMatrix.from_buffers`` rebuilds a matrix from them without
conversion, validating every buffer. ``q.ternary_values()`` gives the stored {-1, 0, 1}.

pack_ternary(t) packs an int8 {-1, 0, 1} array of any shape, independent of the matrix
layout: the values in row-major (C) order, 4 per byte, element i stored as t + 1 in bits
2k..2k+1 (k = i % 4) of byte i // 4; the unused fields of the last byte hold 1 (a zero
weight). The result is a 1-D uint8 array of exactly ceil(t.size / 4) bytes.
unpack_ternary(packed, shape) is the inverse; it raises ValueError when packed does not
hold ceil(prod(shape) / 4) bytes or a value's field holds the invalid code 3.

Every function raises TypeError (wrong dtype or type) or ValueError (ndim, shape, contiguity,
values) naming the argument and the expected value.
"""
from ._native import core as _core

QuantizedMatrix = _core.QuantizedMatrix
pack_ternary = _core.pack_ternary
unpack_ternary = _core.unpack_ternary
from_ternary = _core.from_ternary
from_int4 = _core.from_int4
from_bf16 = _core.from_bf16
quantize_bf16 = _core.quantize_bf16
from_q6 = _core.from_q6
from_nano = _core.from_nano
concat_rows = _core.concat_rows
set_num_threads = _core.set_num_threads
get_num_threads = _core.get_num_threads


def quantize(w, format, group_size=32, threads=None):
    """w float32/float16 [out, in] -> QuantizedMatrix in `format` (see the module docstring);
    "nano:<bits>" factorizes w within that many bits per weight (ternlm.nano, weights only).

    Rows are quantized in blocks over a thread pool (threads: None uses the process pool,
    an int a pool of that size); the result is the same bit for bit for any count. float16
    weights are widened a few rows at a time, never as a float32 copy of the matrix
    (cpp/formats/quantize.h); so are bf16 bit patterns given to quantize_bf16."""
    from . import nano
    bits = nano.parse(format)
    if bits is not None:
        return nano.quantize_nano(w, bits)
    return _core.quantize(w, format, group_size, threads)


def matmul(x, q, threads=None):
    """y = x @ dequantized(q).T for x float32 [in] -> [out] or [n, in] -> [n, out].

    threads: None uses the process pool (set_num_threads); an int uses a pool of that
    size. The GIL is released while the kernel runs.
    """
    if not isinstance(q, QuantizedMatrix):
        raise TypeError(f"matmul: q must be a ternlm.QuantizedMatrix, got {type(q).__name__}")
    return _core.matmul(x, q, threads)


__all__ = [
    "QuantizedMatrix", "quantize", "quantize_bf16", "matmul", "pack_ternary", "unpack_ternary",
    "from_ternary", "from_int4", "from_bf16", "from_q6", "from_nano", "concat_rows", "set_num_threads", "get_num_threads",
]
