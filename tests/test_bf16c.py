"""bf16c: bf16's values, bit for bit, in ~12 bits per weight (cpp/formats/bf16c.h).

Lossless against quantize(w, "bf16") for any finite input (rows far below their tile's
magnitude, zeros of both signs, subnormals, values near the bf16 maximum: the exception
list); matmul against the float64 product of dequantize() on every Highway target;
buffers round trip and every from_buffers check; models with head="bf16c" and
weights="bf16c" give bf16's logits; save/load keeps the format."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ternlm
from ternlm import _core

TARGETS = _core.supported_targets()
EPS32 = 2.0 ** -24
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(params=TARGETS)
def target(request):
    _core.set_target(request.param)
    yield request.param
    _core.reset_target()


def awkward_matrix(rng, rows, cols):
    """Gaussian weights plus what a per-tile table cannot hold: a row 1e-12 smaller than the
    rest, zeros of both signs, subnormals, values near the bf16 maximum (|w| >= 2^127)."""
    w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    if rows > 2:
        w[2] *= np.float32(1e-12)
    flat = w.reshape(-1)
    k = rng.integers(0, flat.size, size=min(flat.size, 8))
    flat[k[:2]] = 0.0
    flat[k[2:4]] = -0.0
    flat[k[4:6]] = np.float32(1e-39) * rng.choice([-1, 1], size=len(k[4:6]))
    flat[k[6:]] = np.float32(2.5e38) * rng.choice([-1, 1], size=len(k[6:]))
    return w


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@SETTINGS
@given(rows=st.integers(1, 70), cols=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_values_equal_bf16_bit_for_bit(rows, cols, seed):
    w = awkward_matrix(np.random.default_rng(seed), rows, cols)
    b, c = ternlm.quantize(w, "bf16"), ternlm.quantize(w, "bf16c")
    assert c.format == "bf16c" and c.shape == (rows, cols)
    ref = b.dequantize()
    np.testing.assert_array_equal(bits(c.dequantize()), bits(ref))
    for r in range(rows):
        np.testing.assert_array_equal(bits(c.dequantize_row(r)), bits(ref[r]))
    # from bf16 bit patterns directly (the checkpoint path): the same matrix
    bf = (bits(ref) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(bits(ternlm.from_bf16(bf, "bf16c").dequantize()), bits(ref))


def decode_tiles(tiles, rows, cols):
    """The layout of cpp/formats/bf16c.h, written out in numpy: bf16 bits [padded rows,
    padded cols] before exceptions."""
    pc = (cols + 31) // 32 * 32
    nt = (rows + 15) // 16
    t = tiles.reshape(nt, 64 + 24 * pc)
    table = t[:, :16]
    r = np.arange(16)[:, None]
    c = np.arange(pc)[None, :]
    p = (c % 8) // 2
    off = 64 + (c // 8) * 192 + 16 * (r // 4) + (p % 2) * 8 + 2 * (r % 4) + c % 2
    lo = t[:, off + (p // 2) * 64]
    code_byte = t[:, off + 128]
    code = np.where(p >= 2, code_byte >> 4, code_byte & 15)
    hi = np.take_along_axis(table, code.reshape(nt, -1), axis=1).reshape(code.shape)
    return ((hi.astype(np.uint16) << 8) | lo).reshape(nt * 16, pc)


@pytest.mark.parametrize("rows, cols", [(1, 1), (17, 33), (40, 100), (70, 300)])
def test_stored_layout_is_the_documented_one_with_zero_padding(rows, cols):
    w = awkward_matrix(np.random.default_rng(rows), rows, cols)
    q = ternlm.quantize(w, "bf16c")
    bufs = q.buffers()
    got = decode_tiles(bufs["tiles"], rows, cols)
    ptr, col, val = bufs["exc_row_ptr"], bufs["exc_col"], bufs["exc_value"]
    for r in range(rows):
        got[r, col[ptr[r]:ptr[r + 1]]] = val[ptr[r]:ptr[r + 1]]
    want = (bits(ternlm.quantize(w, "bf16").dequantize()) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(got[:rows, :cols], want)
    assert not got[rows:].any() and not got[:, cols:].any()     # padding stores +0


def test_shapes_too_large_are_refused():
    with pytest.raises(ValueError, match="too large"):
        ternlm.QuantizedMatrix.from_buffers("bf16c", (2**62, 2**30), 0, {})
    with pytest.raises(ValueError, match="too large"):
        ternlm.QuantizedMatrix.from_buffers("bf16", (2**40, 2**20), 0, {})


def test_size_and_exceptions_of_a_gaussian_matrix():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((512, 2560)) * 0.02).astype(np.float32)
    c, b = ternlm.quantize(w, "bf16c"), ternlm.quantize(w, "bf16")
    bufs = c.buffers()
    n_exc = bufs["exc_col"].size
    # |w| below 2^-15 of the tile's largest octaves: ~1.6e-4 of N(0, s) weights
    assert 0 < n_exc < 1e-3 * w.size
    assert c.nbytes == bufs["tiles"].nbytes + bufs["exc_row_ptr"].nbytes + 6 * n_exc
    assert 12.0 < c.bits_per_weight < 12.2 and b.bits_per_weight == 16.0
    np.testing.assert_array_equal(bits(c.dequantize()), bits(b.dequantize()))


@SETTINGS
@given(rows=st.integers(1, 90), cols=st.integers(1, 700), n=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_matmul_matches_f64_product_of_dequantize(target, rows, cols, n, seed):
    rng = np.random.default_rng(seed)
    w = awkward_matrix(rng, rows, cols)
    w[np.abs(w) > 1e30] = 1.0  # keep the product finite in f32
    q = ternlm.quantize(w, "bf16c")
    x = rng.standard_normal((n, cols)).astype(np.float32)
    deq = q.dequantize().astype(np.float64)
    ref = x.astype(np.float64) @ deq.T
    # f32 sums of at most cols sequential steps per lane (SCALAR: one lane), + exceptions
    bound = (cols + 16) * EPS32 * (np.abs(x).astype(np.float64) @ np.abs(deq).T) + 1e-37
    assert np.all(np.abs(ternlm.matmul(x, q) - ref) <= bound)
    assert np.all(np.abs(ternlm.matmul(x[0], q) - ref[0]) <= bound[0])


def test_threads_and_targets_agree():
    rng = np.random.default_rng(3)
    q = ternlm.quantize(awkward_matrix(rng, 1000, 520).clip(-1, 1), "bf16c")
    x = rng.standard_normal((7, 520)).astype(np.float32)
    y1 = ternlm.matmul(x, q, threads=1)
    for threads in (2, 3, 5):
        np.testing.assert_array_equal(ternlm.matmul(x, q, threads=threads), y1)
    try:
        for t in TARGETS:
            _core.set_target(t)
            np.testing.assert_allclose(ternlm.matmul(x, q), y1, rtol=1e-4, atol=1e-5, err_msg=t)
    finally:
        _core.reset_target()


def test_large_matrix_packed_in_parallel_parts():
    # > 8M weights: packed by several threads (one range of tiles each, exceptions merged)
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((4099, 2560)) * 0.02).astype(np.float32)
    w[::97] *= np.float32(1e-9)           # exception-heavy rows in every part
    q = ternlm.quantize(w, "bf16c")
    np.testing.assert_array_equal(bits(q.dequantize()), bits(ternlm.quantize(w, "bf16").dequantize()))
    bufs = q.buffers()
    assert bufs["exc_col"].size > 10000
    ternlm.QuantizedMatrix.from_buffers("bf16c", q.shape, 0, bufs)   # validates every field


def test_buffers_round_trip_and_concat():
    rng = np.random.default_rng(4)
    w = awkward_matrix(rng, 37, 100)
    q = ternlm.quantize(w, "bf16c")
    bufs = q.buffers()
    assert bufs["exc_col"].size > 0
    q2 = ternlm.QuantizedMatrix.from_buffers("bf16c", (37, 100), 0, bufs)
    np.testing.assert_array_equal(bits(q2.dequantize()), bits(q.dequantize()))
    both = ternlm.concat_rows([q, q2])
    np.testing.assert_array_equal(bits(both.dequantize()), bits(np.concatenate([q.dequantize()] * 2)))
    # parts of whole 16-row tiles are copied tile by tile (the tables stay per tile)
    w32 = awkward_matrix(rng, 32, 100)
    q32 = ternlm.quantize(w32, "bf16c")
    fast = ternlm.concat_rows([q32, q32, q])
    np.testing.assert_array_equal(bits(fast.dequantize()),
                                  bits(np.concatenate([q32.dequantize(), q32.dequantize(), q.dequantize()])))
    assert fast.buffers()["exc_col"].size == 2 * q32.buffers()["exc_col"].size + bufs["exc_col"].size
    with pytest.raises(ValueError, match="concat_rows: parts\\[1\\] is bf16 "):
        ternlm.concat_rows([q, ternlm.quantize(w, "bf16")])


def _bad(bufs, match, **changes):
    b = {k: v.copy() for k, v in bufs.items()}
    for k, f in changes.items():
        b[k] = f(b[k])
    with pytest.raises(ValueError, match=match):
        ternlm.QuantizedMatrix.from_buffers("bf16c", (37, 100), 0, b)


def test_from_buffers_names_what_is_wrong():
    w = awkward_matrix(np.random.default_rng(5), 37, 100)
    bufs = ternlm.quantize(w, "bf16c").buffers()
    r = int(np.nonzero(np.diff(bufs["exc_row_ptr"]))[0][0])  # a row with exceptions
    e = int(bufs["exc_row_ptr"][r])

    def set_at(i, v):
        def f(a):
            a[i] = v
            return a
        return f
    b = dict(bufs)
    del b["exc_col"]
    with pytest.raises(ValueError, match="missing buffer 'exc_col'"):
        ternlm.QuantizedMatrix.from_buffers("bf16c", (37, 100), 0, b)
    _bad(bufs, "buffer 'tiles' has dtype uint16", tiles=lambda a: a.view(np.uint16))
    _bad(bufs, "buffer 'tiles' has .* elements, expected", tiles=lambda a: a[:-64])
    _bad(bufs, "tile 1 table entry 3 is 127", tiles=set_at(1 * (64 + 24 * 128) + 3, 0x7F))
    _bad(bufs, "'exc_row_ptr' decreases at row %d" % (r + 1), exc_row_ptr=set_at(r + 1, 10**6))
    _bad(bufs, "'exc_row_ptr'\\[0\\] is 1", exc_row_ptr=set_at(0, 1))
    _bad(bufs, "buffer 'exc_col' has .* elements", exc_col=lambda a: a[:-1])
    _bad(bufs, "'exc_col' entry %d \\(row %d\\) is 100" % (e, r), exc_col=set_at(e, 100))
    _bad(bufs, "'exc_value' entry %d \\(row %d\\) is Inf or NaN" % (e, r), exc_value=set_at(e, 0x7FC0))
    # an exception where the tiles store a nonzero weight: move it to a stored column
    stored = [c for c in range(100) if c not in set(bufs["exc_col"][bufs["exc_row_ptr"][r]:bufs["exc_row_ptr"][r + 1]])
              and w[r, c] != 0]
    if int(bufs["exc_row_ptr"][r + 1]) - e == 1:
        _bad(bufs, "stores a nonzero weight at exception", exc_col=set_at(e, stored[0]))
    with pytest.raises(ValueError, match="unexpected buffer 'row_multiplier'"):
        ternlm.QuantizedMatrix.from_buffers("bf16c", (37, 100), 0, dict(bufs, row_multiplier=np.zeros(37, np.float32)))


def test_from_bf16_rejects_inf_nan_and_bad_format():
    b = np.zeros((2, 3), np.uint16)
    b[1, 2] = 0x7F80
    with pytest.raises(ValueError, match="Inf or NaN at flat index 5"):
        ternlm.from_bf16(b, "bf16c")
    with pytest.raises(ValueError, match="format must be 'bf16' or 'bf16c'"):
        ternlm.from_bf16(np.zeros((2, 3), np.uint16), "int4")
    with pytest.raises(ValueError, match="non-finite"):
        ternlm.quantize(np.array([[np.inf]], np.float32), "bf16c")


# ---- models ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["gqa_f32", "tied_bf16"])
def test_model_bf16c_gives_bf16_logits(llama_folders, tmp_path, variant):
    folder = llama_folders[variant]
    ids = list(range(3, 30))
    ref = ternlm.load(folder, weights="bf16", context=64, threads=2, progress=False).logits(ids)
    m = ternlm.load(folder, weights="bf16c", context=64, threads=2, progress=False)
    assert set(m.formats[k] for k in m.formats if "norm" not in k) == {"bf16c"}
    got = m.logits(ids)
    # the same weights; only f32 summation order (and exceptions added last) may differ
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())
    h = ternlm.load(folder, weights="ternary", head="bf16c", context=64, threads=2, progress=False)
    assert h.formats["embed"] == "bf16c" and h.formats["layers.0.q"] == "ternary"
    ht = ternlm.load(folder, weights="ternary", context=64, threads=2, progress=False)
    np.testing.assert_allclose(h.logits(ids), ht.logits(ids), rtol=2e-5, atol=2e-5 * np.abs(ref).max())
    assert h.generate("Hello", max_new_tokens=6) == ht.generate("Hello", max_new_tokens=6)
    h.save(tmp_path / "s")
    h2 = ternlm.load(tmp_path / "s", context=64, threads=2, progress=False)
    assert h2.formats == h.formats
    np.testing.assert_array_equal(h2.logits(ids), h.logits(ids))
