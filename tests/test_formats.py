"""Weight formats: quantize/dequantize numerics and error bounds, packing, sizes,
constructors from already-quantized data, buffers round trip, and bad inputs."""
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ternlm

SETTINGS = settings(max_examples=25, deadline=None)


def rand(rows, cols, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((rows, cols)) * scale).astype(np.float32)


def round_up(a, b):
    return (a + b - 1) // b * b


# ------------------------------------------------------------------ ternary

@SETTINGS
@given(rows=st.integers(1, 50), cols=st.integers(1, 700), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from([1e-8, 1e-3, 1.0, 300.0]))
def test_ternary_quantize_is_absmean_round_clamp(rows, cols, seed, scale):
    w = rand(rows, cols, seed, scale)
    q = ternlm.quantize(w, "ternary")
    s_w = np.float32(1) / np.float32(max(np.float32(np.abs(w.astype(np.float64)).mean()), np.float32(1e-5)))
    t = np.clip(np.rint(w * s_w), -1, 1)
    np.testing.assert_array_equal(q.ternary_values(), t)
    np.testing.assert_array_equal(q.buffers()["row_multiplier"], np.full(rows, np.float32(1) / s_w))
    np.testing.assert_array_equal(q.dequantize(), t.astype(np.float32) * (np.float32(1) / s_w))


def test_ternary_dequantize_error_is_bounded_by_the_clamp():
    # |w - deq| <= 0.5/s_w where |w s_w| <= 1.5, and = |w| - 1/s_w where clamped.
    w = rand(64, 512, 1)
    q = ternlm.quantize(w, "ternary")
    mean = np.abs(w).mean()
    err = np.abs(w - q.dequantize())
    inside = np.abs(w) <= 1.5 * mean
    assert np.all(err[inside] <= 0.5 * mean * (1 + 1e-5))
    np.testing.assert_allclose(err[~inside], np.abs(w[~inside]) - mean, rtol=1e-4)


def numpy_pack_ternary(t):
    """The plain layout of cpp/formats/ternary.h: row-major values, 4 per byte, t + 1 in
    bits 2k..2k+1 of byte i // 4 for element i (k = i % 4), the last byte padded with 1."""
    codes = (t.ravel().astype(np.int16) + 1).astype(np.uint8)
    codes = np.concatenate([codes, np.ones(-codes.size % 4, np.uint8)]).reshape(-1, 4)
    return (codes[:, 0] | codes[:, 1] << 2 | codes[:, 2] << 4 | codes[:, 3] << 6).astype(np.uint8)


@SETTINGS
@given(shape=st.lists(st.integers(1, 600), min_size=1, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(shape, seed):
    t = np.random.default_rng(seed).integers(-1, 2, shape).astype(np.int8)
    packed = ternlm.pack_ternary(t)
    assert packed.dtype == np.uint8
    assert packed.shape == (-(-t.size // 4),)  # exactly ceil(n / 4) bytes for any shape
    np.testing.assert_array_equal(packed, numpy_pack_ternary(t))
    np.testing.assert_array_equal(ternlm.unpack_ternary(packed, tuple(shape)), t)


def test_pack_layout_is_the_documented_one():
    # element i: t + 1 in bits 2k..2k+1 (k = i % 4) of byte i // 4; padding fields hold 1.
    t = np.zeros(10, np.int8)
    t[4], t[5], t[6], t[7], t[9] = 1, -1, 1, 0, -1
    packed = ternlm.pack_ternary(t)
    assert packed.tolist() == [0b01010101, (2 << 0) | (0 << 2) | (2 << 4) | (1 << 6), 1 | (0 << 2) | (1 << 4) | (1 << 6)]
    # row-major over the whole array, not per row: a [3, 3] array is 9 values in 3 bytes
    t2 = np.arange(9).reshape(3, 3) % 3 - 1
    np.testing.assert_array_equal(ternlm.pack_ternary(t2.astype(np.int8)), numpy_pack_ternary(t2))
    assert ternlm.pack_ternary(t2.astype(np.int8)).shape == (3,)
    assert ternlm.pack_ternary(np.zeros((0, 5), np.int8)).shape == (0,)
    assert ternlm.unpack_ternary(np.zeros(0, np.uint8), (0, 5)).shape == (0, 5)


def test_ternary_sizes():
    q = ternlm.quantize(rand(10, 577), "ternary")
    # 16-row tiles (10 rows -> 16) of 640 columns (577 -> multiple of 64) + f32 row multipliers
    assert q.nbytes == 16 * (640 // 4) + 10 * 4
    assert q.bits_per_weight == pytest.approx(q.nbytes * 8 / (10 * 577))
    q = ternlm.quantize(rand(2560, 2560), "ternary")
    assert q.bits_per_weight == pytest.approx(2 + 32 / 2560)


def test_from_ternary_keeps_the_given_scale():
    rng = np.random.default_rng(2)
    t = rng.integers(-1, 2, (7, 300)).astype(np.int8)
    mult = rng.uniform(0.1, 1, 7).astype(np.float32)
    q = ternlm.from_ternary(t, mult)
    np.testing.assert_array_equal(q.dequantize(), t * mult[:, None])
    np.testing.assert_array_equal(ternlm.from_ternary(t, 0.5).dequantize(), t * np.float32(0.5))


# ------------------------------------------------------------------ int4

@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_dequantize_error_bound(group):
    w = rand(40, 1024, 3) * np.linspace(0.01, 10, 1024, dtype=np.float32) + 0.5
    q = ternlm.quantize(w, "int4", group_size=group)
    assert q.group_size == group
    deq = q.dequantize()
    g = w.reshape(40, -1, group)
    lo, hi = g.min(axis=2, keepdims=True), g.max(axis=2, keepdims=True)
    step = (hi - lo) / 15
    # half a step, plus the fp16 rounding of scale (over up to 15 steps) and of min.
    bound = 0.5 * step + 15 * step * 2.0 ** -11 + np.abs(lo) * 2.0 ** -11 + 1e-7
    err = np.abs(deq.reshape(40, -1, group) - g)
    assert np.all(err <= bound)
    assert err.max() > 0.2 * (0.5 * step).max()  # the bound is tight, not vacuous


def test_int4_matches_q4_1_codes_for_exact_grids():
    # Weights already on a fp16-exact grid scale*q + min come back exactly.
    rng = np.random.default_rng(4)
    q = rng.integers(0, 16, (6, 64)).astype(np.uint8)
    q[:, ::32] = 0
    q[:, 1::32] = 15  # each group spans the full range, so Q4_1 finds scale and min
    scale = rng.uniform(0.01, 1, (6, 2)).astype(np.float16).astype(np.float32)
    mins = rng.uniform(-2, 0, (6, 2)).astype(np.float16).astype(np.float32)
    w = (np.repeat(scale, 32, 1) * q + np.repeat(mins, 32, 1)).astype(np.float32)
    deq = ternlm.quantize(w, "int4").dequantize()
    np.testing.assert_allclose(deq, w, atol=np.abs(w).max() * 2e-3)


def test_from_int4_is_lossless():
    rng = np.random.default_rng(5)
    q = rng.integers(0, 16, (9, 192)).astype(np.uint8)
    scale = rng.uniform(0.001, 1, (9, 3)).astype(np.float16)
    mins = rng.uniform(-1, 1, (9, 3)).astype(np.float16)
    m = ternlm.from_int4(q, scale, mins, 64)
    expected = np.repeat(scale.astype(np.float32), 64, 1) * q + np.repeat(mins.astype(np.float32), 64, 1)
    np.testing.assert_array_equal(m.dequantize(), expected.astype(np.float32))
    assert m.format == "int4" and m.shape == (9, 192) and m.group_size == 64


def test_int4_sizes():
    q = ternlm.quantize(rand(3, 576), "int4", group_size=32)
    padded = 576  # columns are padded to 32, which the group always divides
    # 16-row tiles: 3 rows are stored as 16 (codes, scales and mins)
    assert q.nbytes == 16 * padded // 2 + 2 * 16 * (padded // 32) * 2
    q = ternlm.quantize(rand(256, 2560), "int4", group_size=32)
    assert q.bits_per_weight == pytest.approx(4 + 32 / 32)  # Q4_1: 4 bits + fp16 scale and min
    q = ternlm.quantize(rand(256, 2560), "int4", group_size=128)
    assert q.bits_per_weight == pytest.approx(4 + 32 / 128)


# ------------------------------------------------------------------ bf16 / f32

def bf16_round_reference(w):
    u = w.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


def test_bf16_is_round_to_nearest_even():
    w = rand(17, 333, 6, 100.0)
    # ties: mantissa low half exactly 0x8000, with odd and even kept bits
    w[0, :4] = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F80C000], np.uint32).view(np.float32)
    q = ternlm.quantize(w, "bf16")
    np.testing.assert_array_equal(q.dequantize(), bf16_round_reference(w))
    assert q.dequantize()[0, 0] == np.uint32(0x3F800000).view(np.float32)
    assert q.dequantize()[0, 1] == np.uint32(0x3F820000).view(np.float32)
    rel = np.abs(q.dequantize() - w) / np.abs(w)
    assert rel.max() <= 2.0 ** -8  # 8 significant bits


def test_float_sizes_and_f32_is_exact():
    w = rand(5, 100, 7)
    assert ternlm.quantize(w, "bf16").nbytes == 16 * 128 * 2  # 16-row tiles, 32-column padding
    assert ternlm.quantize(rand(32, 2560, 7), "bf16").bits_per_weight == 16.0
    assert ternlm.quantize(w, "f32").nbytes == 5 * 112 * 4
    np.testing.assert_array_equal(ternlm.quantize(w, "f32").dequantize(), w)
    np.testing.assert_array_equal(ternlm.quantize(w.astype(np.float16), "f32").dequantize(),
                                  w.astype(np.float16).astype(np.float32))


# ------------------------------------------------------------------ concat, buffers, repr

@pytest.mark.parametrize("fmt", ["ternary", "int4", "bf16", "f32", "int8", "q6"])
def test_concat_rows_stacks_dequantized_rows_and_products(fmt):
    # (16, 32, 5): whole 16-row tiles copied as they are, then a partial one
    aligned = [ternlm.quantize(rand(r, 256, r), fmt) for r in (16, 32, 5)]
    np.testing.assert_array_equal(ternlm.concat_rows(aligned).dequantize(),
                                  np.vstack([p.dequantize() for p in aligned]))
    parts = [ternlm.quantize(rand(r, 256, r), fmt) for r in (3, 64, 1)]  # tiles do not line up
    c = ternlm.concat_rows(parts)
    assert c.shape == (68, 256) and c.format == fmt
    np.testing.assert_array_equal(c.dequantize(), np.vstack([p.dequantize() for p in parts]))
    x = rand(2, 256, 9)
    np.testing.assert_allclose(ternlm.matmul(x, c), np.hstack([ternlm.matmul(x, p) for p in parts]),
                               rtol=1e-6, atol=1e-6)


def test_concat_rows_rejects_mismatched_parts():
    with pytest.raises(ValueError, match=r"concat_rows: parts\[1\] is int4 \[3, 256\]"):
        ternlm.concat_rows([ternlm.quantize(rand(3, 256), "ternary"), ternlm.quantize(rand(3, 256), "int4")])
    with pytest.raises(ValueError, match=r"concat_rows: parts\[1\] is ternary \[3, 128\]"):
        ternlm.concat_rows([ternlm.quantize(rand(3, 256), "ternary"), ternlm.quantize(rand(3, 128), "ternary")])
    with pytest.raises(ValueError, match="concat_rows: parts is empty"):
        ternlm.concat_rows([])


@pytest.mark.parametrize("fmt", ["ternary", "int4", "bf16", "f32", "int8", "q6"])
def test_buffers_round_trip(fmt):
    q = ternlm.quantize(rand(33, 320, 10), fmt, group_size=64)
    b = q.buffers()
    assert b["layout_version"].tolist() == [2]
    r = ternlm.QuantizedMatrix.from_buffers(fmt, q.shape, q.group_size, b)
    np.testing.assert_array_equal(r.dequantize(), q.dequantize())
    assert r.nbytes == q.nbytes == sum(v.nbytes for v in b.values()) - 4
    x = rand(1, 320, 11)[0]
    np.testing.assert_array_equal(ternlm.matmul(x, r), ternlm.matmul(x, q))


def test_from_buffers_validates_every_buffer():
    q = ternlm.quantize(rand(4, 256), "int4")
    b = q.buffers()
    with pytest.raises(ValueError, match="buffer 'scale' has 127 elements, expected 128"):
        ternlm.QuantizedMatrix.from_buffers("int4", (4, 256), 32, {**b, "scale": b["scale"][:127]})
    with pytest.raises(ValueError, match="buffer 'q4' has dtype int8, expected uint8"):
        ternlm.QuantizedMatrix.from_buffers("int4", (4, 256), 32, {**b, "q4": b["q4"].view(np.int8)})
    with pytest.raises(ValueError, match="missing buffer 'min'"):
        ternlm.QuantizedMatrix.from_buffers("int4", (4, 256), 32, {k: v for k, v in b.items() if k != "min"})
    with pytest.raises(ValueError, match="layout_version is 3, expected 2"):
        ternlm.QuantizedMatrix.from_buffers("int4", (4, 256), 32, {**b, "layout_version": np.array([3], np.uint32)})
    with pytest.raises(ValueError, match="unexpected buffer 'extra'"):
        ternlm.QuantizedMatrix.from_buffers("int4", (4, 256), 32, {**b, "extra": b["min"]})
    t = ternlm.quantize(rand(4, 256), "ternary").buffers()
    bad = t["packed"].copy()
    bad[3] = 0xFF
    with pytest.raises(ValueError, match="buffer 'packed' row 0 holds the invalid 2-bit code 3"):
        ternlm.QuantizedMatrix.from_buffers("ternary", (4, 256), 0, {**t, "packed": bad})
    with pytest.raises(ValueError, match="buffer 'packed' has 512 elements, expected 1024"):
        ternlm.QuantizedMatrix.from_buffers("ternary", (4, 256), 0, {**t, "packed": t["packed"][:512]})


@pytest.mark.parametrize("fmt", ["ternary", "int4", "bf16", "f32", "bf16c"])
def test_layout_version_1_buffers_are_refused_clearly(fmt):
    # Only layout_version 2 is read; a buffer set of version 1 is refused by name, with
    # what to do, before any of its buffers is looked at.
    q = ternlm.quantize(rand(37, 256), fmt)
    v1 = {**q.buffers(), "layout_version": np.array([1], np.uint32)}
    with pytest.raises(ValueError, match="from_buffers: layout_version is 1, a layout this ternlm no longer "
                                         r"reads \(expected 2\); convert the model again"):
        ternlm.QuantizedMatrix.from_buffers(fmt, q.shape, q.group_size, v1)
    with pytest.raises(ValueError, match="missing buffer 'layout_version'"):
        ternlm.QuantizedMatrix.from_buffers(fmt, q.shape, q.group_size,
                                            {k: v for k, v in q.buffers().items() if k != "layout_version"})


def test_repr_and_properties():
    q = ternlm.quantize(rand(8, 64), "int4", group_size=32)
    assert repr(q).startswith("QuantizedMatrix(format='int4', shape=(8, 64), group_size=32, bits_per_weight=")
    assert q.format == "int4" and q.shape == (8, 64)
    np.testing.assert_array_equal(q.dequantize_row(3), q.dequantize()[3])


# ------------------------------------------------------------------ bad inputs

def test_quantize_rejects_non_finite_weights():
    for bad in (np.nan, np.inf, -np.inf):
        w = rand(4, 64)
        w[2, 7] = bad
        for fmt in ("ternary", "int4", "bf16", "f32"):
            with pytest.raises(ValueError, match="quantize: w has a non-finite value .* at flat index 135"):
                ternlm.quantize(w, fmt)


def test_quantize_rejects_bad_group_size():
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128, got 48"):
        ternlm.quantize(rand(4, 96), "int4", group_size=48)
    with pytest.raises(ValueError, match="group_size 64 does not divide cols = 96"):
        ternlm.quantize(rand(4, 96), "int4", group_size=64)
    with pytest.raises(ValueError, match="group_size 32 does not divide cols = 577"):
        ternlm.quantize(rand(4, 577), "int4")


def test_quantize_rejects_bad_arrays():
    with pytest.raises(TypeError, match="quantize: w must have dtype float32 or float16, got float64"):
        ternlm.quantize(np.zeros((4, 4)), "ternary")
    with pytest.raises(ValueError, match=r"quantize: w must be 2-D, got shape \(16,\)"):
        ternlm.quantize(np.zeros(16, np.float32), "ternary")
    with pytest.raises(ValueError, match="quantize: w must be C-contiguous"):
        ternlm.quantize(np.zeros((8, 4), np.float32).T, "ternary")
    with pytest.raises(ValueError, match="format must be one of 'ternary', 'int4', 'q6', 'int8', 'bf16', 'bf16c', 'f32', got 'int3'"):
        ternlm.quantize(np.zeros((4, 4), np.float32), "int3")
    with pytest.raises(ValueError, match=r"shape must be non-empty, got \[0, 4\]"):
        ternlm.quantize(np.zeros((0, 4), np.float32), "bf16")
    with pytest.raises(ValueError, match="int4 needs"):
        ternlm.quantize(np.full((1, 32), 1e6, np.float32), "int4")


def test_pack_unpack_reject_bad_inputs():
    with pytest.raises(ValueError, match="pack_ternary: t must hold only -1, 0, 1; got 2 at flat index 3"):
        ternlm.pack_ternary(np.array([0, 1, -1, 2], np.int8))
    with pytest.raises(TypeError, match="pack_ternary: t must have dtype int8, got int64"):
        ternlm.pack_ternary(np.array([0, 1, -1]))
    with pytest.raises(ValueError, match=r"unpack_ternary: packed has 2 bytes, expected 3"):
        ternlm.unpack_ternary(np.zeros(2, np.uint8), (10,))
    with pytest.raises(ValueError, match=r"unpack_ternary: packed has 4 bytes, expected 3"):
        ternlm.unpack_ternary(np.zeros(4, np.uint8), (2, 5))
    with pytest.raises(ValueError, match="invalid 2-bit code 3"):
        ternlm.unpack_ternary(np.full(3, 0xFF, np.uint8), (10,))
    packed = ternlm.pack_ternary(np.zeros(10, np.int8))
    packed[2] |= 3 << 2                                      # element 9
    with pytest.raises(ValueError, match="unpack_ternary: element 9 holds the invalid 2-bit code 3"):
        ternlm.unpack_ternary(packed, (10,))
    packed = ternlm.pack_ternary(np.zeros(10, np.int8))
    packed[2] |= 3 << 4                                      # a padding field is not read
    np.testing.assert_array_equal(ternlm.unpack_ternary(packed, (10,)), np.zeros(10, np.int8))


def test_from_ternary_and_from_int4_reject_bad_inputs():
    t = np.zeros((3, 8), np.int8)
    with pytest.raises(ValueError, match=r"from_ternary: row_multiplier has shape \(2,\), expected \(3,\)"):
        ternlm.from_ternary(t, np.ones(2, np.float32))
    with pytest.raises(ValueError, match="from_ternary: t must hold only -1, 0, 1; got 5"):
        ternlm.from_ternary(np.full((3, 8), 5, np.int8), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="row_multiplier\\[1\\] is not finite"):
        ternlm.from_ternary(t, np.array([1, np.nan, 1], np.float32))
    q = np.zeros((2, 64), np.uint8)
    s = np.ones((2, 2), np.float16)
    with pytest.raises(ValueError, match=r"from_int4: scale has shape \(2, 1\), expected \(2, 2\)"):
        ternlm.from_int4(q, np.ones((2, 1), np.float16), s, 32)
    with pytest.raises(TypeError, match="from_int4: min must be a numpy float16 array"):
        ternlm.from_int4(q, s, s.astype(np.float32), 32)
    with pytest.raises(ValueError, match="from_int4: q must be in \\[0, 15\\]; got 16"):
        ternlm.from_int4(np.full((2, 64), 16, np.uint8), s, s, 32)
    with pytest.raises(ValueError, match="from_int4: group_size 128 does not divide q.shape\\[1\\] = 64"):
        ternlm.from_int4(q, s, s, 128)


def test_from_bf16_is_quantize_of_the_same_values_bit_for_bit():
    w = rand(37, 100, 3)
    bits = (w.view(np.uint32) >> 16).astype(np.uint16)      # truncation: exact bf16 values
    exact = (bits.astype(np.uint32) << 16).view(np.float32)
    q = ternlm.from_bf16(bits)
    assert q.format == "bf16" and q.shape == (37, 100)
    np.testing.assert_array_equal(q.dequantize(), exact)
    for k, v in ternlm.quantize(exact, "bf16").buffers().items():
        np.testing.assert_array_equal(q.buffers()[k], v)
    bad = bits.copy()
    bad[3, 7] = 0x7FC0                                       # NaN
    with pytest.raises(ValueError, match="from_bf16: bits hold Inf or NaN at flat index 307"):
        ternlm.from_bf16(bad)
    with pytest.raises(TypeError, match="from_bf16: bits must have dtype uint16"):
        ternlm.from_bf16(w)
    with pytest.raises(ValueError, match="from_bf16: bits must be 2-D"):
        ternlm.from_bf16(bits[0])


# ------------------------------------------------------------------ weight memory (formats/weight_arena.h)

def _rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the huge-page arena is Linux only")
def test_large_matrices_start_zeroed_and_give_their_memory_back():
    # Large buffers come from a bump arena of huge-page chunks; a freed piece is returned
    # to the system and an emptied chunk starts over. Every new matrix must still see
    # zero padding (bf16 pads 2500 -> 2528 columns; a non-zero pad would leak into x·w).
    w = rand(1000, 2500, 3)
    x = np.zeros((1, 2500), np.float32)
    x[0, :7] = 1
    expected = ternlm.matmul(x, ternlm.quantize(w, "bf16"))
    base = _rss_mb()
    for i in range(40):                       # 40 x 5 MB, each freed before the next
        junk = ternlm.quantize(np.full((1000, 2500), 1e30 * (i + 1), np.float32), "bf16")
        del junk
        q = ternlm.quantize(w, "bf16")
        pad = q.buffers()["weight"].reshape(-1, 2528 // 2, 16, 2)[:, 1250:]  # [tile, col pair, row, 2]
        assert not pad.any(), f"round {i}: padding columns are not zero"
        np.testing.assert_array_equal(ternlm.matmul(x, q), expected)
        del q
    assert _rss_mb() - base < 100, "freed matrices kept their memory"
    big = [ternlm.quantize(w, "ternary") for _ in range(30)]  # pieces side by side in chunks
    np.testing.assert_array_equal(big[0].dequantize(), big[-1].dequantize())
