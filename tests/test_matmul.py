"""ternlm.matmul against numpy, on every Highway target this CPU supports.

Ternary: the numpy implementation of the numerics in cpp/formats/ternary.h below; the
kernel's int32 sums must be equal exactly, its outputs to float rounding. INT4 and BF16: error against the f32 product
of dequantize() within the bounds derived in each test.
"""
import os
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ternlm
from ternlm import _core

TARGETS = _core.supported_targets()
EPS32 = 2.0 ** -24


# On an AVX-512 VNNI CPU the AVX3 target's ternary/INT4 kernels use vpdpbusd (Cascade
# Lake); "AVX3-no-VNNI" runs that target with its pmaddubsw kernels, as on Skylake-SP. On
# aarch64 with the dot-product extension NEON uses vdotq_s32; "NEON-no-DOTPROD" runs the
# vmlal_s8 kernels of older cores (Cortex-A53/A72).
# On AMX CPUs (Sapphire Rapids+) the AVX3_DL / AVX3 ternary kernels multiply 16+ activation
# rows with AMX tiles; "AVX3_DL-no-AMX" runs their vpdpbusd kernel for those too.
KERNEL_PATHS = (TARGETS + (["AVX3-no-VNNI"] if "AVX3" in TARGETS and _core.avx3_vnni() else [])
                + (["NEON-no-DOTPROD"] if "NEON" in TARGETS and _core.arm_dotprod() else [])
                + (["AVX3_DL-no-AMX"] if "AVX3_DL" in TARGETS and _core.amx() else []))


@pytest.fixture(params=KERNEL_PATHS)
def target(request):
    name = request.param.replace("-no-VNNI", "").replace("-no-DOTPROD", "").replace("-no-AMX", "")
    _core.set_target(name)
    _core.set_avx3_vnni(not request.param.endswith("-no-VNNI"))
    _core.set_arm_dotprod(not request.param.endswith("-no-DOTPROD"))
    _core.set_amx(not request.param.endswith("-no-AMX"))
    assert _core.current_target() == name
    yield request.param
    _core.set_avx3_vnni(True)
    _core.set_arm_dotprod(True)
    _core.set_amx(True)
    _core.reset_target()


SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------ numpy references (cpp/formats/ternary.h, int4.h)

def ternary_weights_reference(w):
    """s_w = 1 / max(mean|W|, 1e-5); T = clamp(round_half_even(W * s_w), -1, 1)."""
    s_w = np.float32(1.0) / np.float32(max(np.float32(np.abs(w.astype(np.float64)).mean()),
                                           np.float32(1e-5)))
    return np.clip(np.rint(w * s_w), -1, 1).astype(np.int8), s_w


def activations_reference(x):
    """Per row: s_x = 127 / max(max|x|, 1e-5); q = clamp(round_half_even(x * s_x), -128, 127)."""
    x = np.atleast_2d(x)
    s_x = np.float32(127.0) / np.maximum(np.abs(x).max(axis=1), np.float32(1e-5))
    q = np.clip(np.rint(x * s_x[:, None]), -128, 127).astype(np.int8)
    return q, s_x.astype(np.float32)


def ternary_matmul_reference(x, t, row_multiplier):
    """Returns (int32 sums [n, out], y float32 [n, out]) = (q·Tᵀ, q·Tᵀ / s_x * row_multiplier)."""
    q, s_x = activations_reference(x)
    dots = q.astype(np.int32) @ t.astype(np.int32).T
    y = dots.astype(np.float32) / s_x[:, None] * row_multiplier[None, :]
    return dots, y


def random_matrix(rng, rows, cols, scale=1.0):
    return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)


shapes = st.tuples(st.integers(1, 300), st.integers(1, 1100), st.integers(1, 9))


# ------------------------------------------------------------------ ternary

def test_activation_quantization_matches_design_formula():
    rng = np.random.default_rng(0)
    for x in [rng.standard_normal(577).astype(np.float32) * 3,
              np.zeros(40, np.float32),  # max(|x|) floored at 1e-5
              np.array([0.5, -0.5, 1.5, 2.5, -127.0, 127.0], np.float32),  # ties -> even
              rng.standard_normal(3000).astype(np.float32) * 1e-7]:
        q, inv = _core.quantize_activations_int8(x)
        q_ref, s_ref = activations_reference(x)
        np.testing.assert_array_equal(q, q_ref[0])
        assert np.float32(inv) == np.float32(1.0) / s_ref[0]


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_ternary_int32_sums_match_numpy_exactly(target, shape, seed):
    rows, cols, _ = shape
    rng = np.random.default_rng(seed)
    q = ternlm.quantize(random_matrix(rng, rows, cols), "ternary")
    t = q.ternary_values()
    x = rng.integers(-128, 128, cols).astype(np.int8)
    got = _core.ternary_int_dots(q, x)
    np.testing.assert_array_equal(got, t.astype(np.int32) @ x.astype(np.int32))


def test_ternary_int32_sums_at_the_extremes(target):
    # All weights +1 / -1 against all-(-128) and all-127 activations: the largest sums.
    cols = 6912
    t = np.ones((4, cols), np.int8)
    t[1] = -1
    t[2, ::2] = -1
    t[3] = 0
    q = ternlm.from_ternary(t, np.ones(4, np.float32))
    for v in (-128, 127):
        x = np.full(cols, v, np.int8)
        np.testing.assert_array_equal(_core.ternary_int_dots(q, x),
                                      t.astype(np.int32) @ x.astype(np.int32))

    # Rows longer than the kernel's overflow-safe run (2^14 blocks of 16 columns on the
    # VNNI path) are summed in runs: all +1 against -128 over 270,000 columns.
    cols = 270_000
    t = np.ones((17, cols), np.int8)
    t[5] = -1
    q = ternlm.from_ternary(t, np.ones(17, np.float32))
    for v in (-128, 127):
        x = np.full(cols, v, np.int8)
        np.testing.assert_array_equal(_core.ternary_int_dots(q, x),
                                      t.astype(np.int64) @ x.astype(np.int64))


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**32 - 1), one_d=st.booleans())
def test_ternary_matmul_matches_numpy_reference(target, shape, seed, one_d):
    rows, cols, n = shape
    rng = np.random.default_rng(seed)
    w = random_matrix(rng, rows, cols)
    q = ternlm.quantize(w, "ternary")
    t_ref, s_w = ternary_weights_reference(w)
    np.testing.assert_array_equal(q.ternary_values(), t_ref)
    x = random_matrix(rng, 1 if one_d else n, cols, scale=2.0)
    if one_d:
        x = x[0]
    dots, y_ref = ternary_matmul_reference(x, t_ref, np.full(rows, 1 / s_w, np.float32))
    y = ternlm.matmul(x, q)
    assert y.shape == ((rows,) if one_d else (n, rows)) and y.dtype == np.float32
    # Outputs to float rounding: a few ulps of (sum * 1/s_x * multiplier) vs (sum / s_x * multiplier).
    np.testing.assert_allclose(np.atleast_2d(y), y_ref, rtol=4 * 2.0 ** -23, atol=0)


@pytest.mark.parametrize("rows,cols,n", [(16, 64, 16), (17, 577, 17), (48, 1100, 33), (300, 2560, 40),
                                         (33, 64, 64)])
def test_ternary_prefill_rows_equal_decode_rows_exactly(target, rows, cols, n):
    """Many activation rows (prefill: the AMX kernel from 16 rows on AMX CPUs, the 4-row
    passes elsewhere) give bit-identical outputs to one row at a time (decode), odd tile
    counts and activation-row tails included, and match the numpy reference."""
    rng = np.random.default_rng(rows * 7 + n)
    t = rng.integers(-1, 2, (rows, cols)).astype(np.int8)
    mult = rng.uniform(0.01, 2.0, rows).astype(np.float32)
    q = ternlm.from_ternary(t, mult)
    x = random_matrix(rng, n, cols, scale=3.0)
    x[0, :] = 0.0  # an all-zero row: q = 0, sum q = 0
    y = ternlm.matmul(x, q)
    for j in range(n):
        np.testing.assert_array_equal(y[j], ternlm.matmul(x[j], q))
    _, y_ref = ternary_matmul_reference(x, t, mult)
    np.testing.assert_allclose(y, y_ref, rtol=4 * 2.0 ** -23, atol=0)


def test_ternary_matmul_with_per_row_multiplier(target):
    rng = np.random.default_rng(3)
    t = rng.integers(-1, 2, (67, 577)).astype(np.int8)
    mult = rng.uniform(0.01, 2.0, 67).astype(np.float32)
    q = ternlm.from_ternary(t, mult)
    x = random_matrix(rng, 5, 577)
    _, y_ref = ternary_matmul_reference(x, t, mult)
    np.testing.assert_allclose(ternlm.matmul(x, q), y_ref, rtol=4 * 2.0 ** -23, atol=0)


def test_ternary_matmul_out_1_in_577(target):
    rng = np.random.default_rng(4)
    w = random_matrix(rng, 1, 577)
    q = ternlm.quantize(w, "ternary")
    t_ref, s_w = ternary_weights_reference(w)
    x = random_matrix(rng, 1, 577)[0]
    _, y_ref = ternary_matmul_reference(x, t_ref, np.array([1 / s_w], np.float32))
    y = ternlm.matmul(x, q)
    assert y.shape == (1,)
    np.testing.assert_allclose(y, y_ref[0], rtol=4 * 2.0 ** -23)


# ------------------------------------------------------------------ int4

def int4_error_bound(x, q):
    """|y - x·deq(W)ᵀ| bound for int8 activations per block of 32 (formats/int4.h):
    each activation is off by at most 0.5/s_b, times |w| of its weight (the min term uses
    the sum of the same dequantized activations, so the error is sum w*(x̂-x)), plus f32
    rounding of the accumulation."""
    x = np.atleast_2d(x)
    rows, cols = q.shape
    g = q.group_size
    deq = q.dequantize().astype(np.float64)
    b = q.buffers()
    tiles = -(-rows // 16)
    ng_pad = b["scale"].size // (16 * tiles)

    def per_row(buf):  # stored in tile order [tile][group][16 rows] (formats/int4.h)
        t = buf.view(np.float16).astype(np.float64).reshape(tiles, ng_pad, 16)
        return t.transpose(0, 2, 1).reshape(tiles * 16, ng_pad)[:rows, :cols // g]

    scale, mins = per_row(b["scale"]), per_row(b["min"])
    scaled_q = np.abs(deq - np.repeat(mins, g, axis=1))  # |scale * q|
    xb = np.abs(x.astype(np.float64)).reshape(x.shape[0], cols // 32, 32).max(axis=2)
    half_step = 0.5 * np.maximum(xb, 1e-5) / 127.0  # 0.5 / s_b per block
    act_err = np.abs(deq) @ np.repeat(half_step, 32, axis=1).T  # [rows, n]
    mag = np.abs(deq) @ np.abs(x.astype(np.float64)).T + np.abs(scaled_q) @ np.abs(x).T
    return act_err.T * 1.0001 + (cols / 2 + 64) * EPS32 * mag.T + 1e-30, scale


@SETTINGS
@given(rows=st.integers(1, 200), groups=st.integers(1, 24), group=st.sampled_from([32, 64, 128]),
       n=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_int4_matmul_within_activation_quantization_bound(target, rows, groups, group, n, seed):
    cols = groups * group
    rng = np.random.default_rng(seed)
    q = ternlm.quantize(random_matrix(rng, rows, cols) + 0.3, "int4", group_size=group)
    x = random_matrix(rng, n, cols)
    y = ternlm.matmul(x, q)
    ref = x.astype(np.float64) @ q.dequantize().astype(np.float64).T
    bound, _ = int4_error_bound(x, q)
    assert np.all(np.abs(y - ref) <= bound), np.max(np.abs(y - ref) / bound)
    # The bound is not vacuous: under 10% of sum |w||x| (0.5/127 of max|x_b| per input).
    mag = np.abs(x).astype(np.float64) @ np.abs(q.dequantize().astype(np.float64)).T
    assert np.all(bound <= 0.1 * mag + 1e-6)


@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("rows,cols,n", [(16, 64, 16), (17, 96, 17), (48, 1024, 33), (300, 2560, 40)])
def test_int4_prefill_rows_equal_decode_rows_exactly(target, group, rows, cols, n):
    """Many activation rows (the AMX kernel from 16 rows on AMX CPUs, group 32; the 4-row
    passes elsewhere) give bit-identical outputs to one row at a time, odd tile counts and
    activation-row tails included."""
    if cols % group:
        cols = (cols // group + 1) * group
    rng = np.random.default_rng(rows * 5 + n + group)
    q = ternlm.quantize(random_matrix(rng, rows, cols), "int4", group_size=group)
    x = random_matrix(rng, n, cols, scale=3.0)
    x[0, :] = 0.0
    y = ternlm.matmul(x, q)
    for j in range(n):
        np.testing.assert_array_equal(y[j], ternlm.matmul(x[j], q))


def test_int4_matmul_1d_equals_2d(target):
    rng = np.random.default_rng(5)
    q = ternlm.quantize(random_matrix(rng, 33, 576), "int4", group_size=64)
    x = random_matrix(rng, 3, 576)
    y2 = ternlm.matmul(x, q)
    # Same int8 activations and integer dots; GEMV and GEMM only sum the scaled blocks
    # in another order, so they agree to f32 rounding of sum |w||x|.
    mag = np.abs(x) @ np.abs(q.dequantize()).T
    for i in range(3):
        assert np.all(np.abs(ternlm.matmul(x[i], q) - y2[i]) <= 1e-6 * mag[i])


# ------------------------------------------------------------------ bf16 / f32

@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**32 - 1), fmt=st.sampled_from(["bf16", "bf16c", "f32"]))
def test_float_matmul_matches_f32_product_of_dequantize(target, shape, seed, fmt):
    rows, cols, n = shape
    rng = np.random.default_rng(seed)
    q = ternlm.quantize(random_matrix(rng, rows, cols), fmt)
    x = random_matrix(rng, n, cols)
    deq = q.dequantize().astype(np.float64)
    ref = x.astype(np.float64) @ deq.T
    # f32 accumulation in at most cols/2 + a few sequential steps per lane (SCALAR: 2 lanes;
    # bf16c on SCALAR: one lane, plus the exceptions added last).
    bound = ((cols if fmt == "bf16c" else cols / 2) + 16) * EPS32 * (np.abs(x).astype(np.float64) @ np.abs(deq).T) + 1e-30
    y = ternlm.matmul(x, q)
    assert np.all(np.abs(y - ref) <= bound)
    # 1-D x takes the GEMV kernel (another summation order): same bound.
    assert np.all(np.abs(ternlm.matmul(x[0], q) - ref[0]) <= bound[0])


# ------------------------------------------------------------------ software prefetch

@pytest.mark.parametrize("fmt,group", [("ternary", 0), ("int4", 32), ("int4", 64), ("bf16", 0), ("bf16c", 0)])
def test_prefetch_distance_changes_no_result(target, fmt, group):
    """The kernels' software prefetch (on by default on Intel AVX-512 CPUs) only reads ahead:
    every distance, including ones past the end of the weights, gives identical outputs,
    for decode (1 activation row) and prefill (7 rows, the 4-row and 3-row passes)."""
    rng = np.random.default_rng(11)
    q = ternlm.quantize(random_matrix(rng, 77, 640), fmt, **({"group_size": group} if group else {}))
    x = random_matrix(rng, 7, 640)
    before = _core.prefetch_distance()
    try:
        _core.set_prefetch_distance(0)
        ref1, ref7 = ternlm.matmul(x[0], q), ternlm.matmul(x, q)
        for dist in (64, 4096, 1 << 20):
            _core.set_prefetch_distance(dist)
            np.testing.assert_array_equal(ternlm.matmul(x[0], q), ref1)
            np.testing.assert_array_equal(ternlm.matmul(x, q), ref7)
    finally:
        _core.set_prefetch_distance(before)


def test_set_prefetch_distance_rejects_bad_values():
    before = _core.prefetch_distance()
    for bad in (1, 100, (1 << 20) + 64):
        with pytest.raises(ValueError, match="multiple of 64 bytes"):
            _core.set_prefetch_distance(bad)
    with pytest.raises(TypeError):
        _core.set_prefetch_distance(-64)
    assert _core.prefetch_distance() == before


# ------------------------------------------------------------------ threads

@pytest.mark.parametrize("fmt", ["ternary", "int4", "bf16", "f32"])
def test_thread_counts_give_identical_results(fmt):
    rng = np.random.default_rng(6)
    q = ternlm.quantize(random_matrix(rng, 1000, 512), fmt)
    x = random_matrix(rng, 7, 512)
    y1 = ternlm.matmul(x, q, threads=1)
    for threads in (2, 3, 5):
        np.testing.assert_array_equal(ternlm.matmul(x, q, threads=threads), y1)
    try:
        ternlm.set_num_threads(2)
        assert ternlm.get_num_threads() == 2
        np.testing.assert_array_equal(ternlm.matmul(x, q), y1)
    finally:
        ternlm.set_num_threads(0)
    assert ternlm.get_num_threads() == os.cpu_count()  # 0 means all cores


def test_matmul_from_several_python_threads_releases_gil_and_stays_correct():
    rng = np.random.default_rng(7)
    q = ternlm.quantize(random_matrix(rng, 2000, 1024), "ternary")
    xs = [random_matrix(rng, 2, 1024) for _ in range(4)]
    expected = [ternlm.matmul(x, q, threads=1) for x in xs]
    results = [None] * 4

    def work(i):
        for _ in range(5):
            results[i] = ternlm.matmul(xs[i], q, threads=2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for r, e in zip(results, expected):
        np.testing.assert_array_equal(r, e)


# ------------------------------------------------------------------ bad inputs

@pytest.fixture(scope="module")
def q576():
    return ternlm.quantize(np.random.default_rng(8).standard_normal((16, 576)).astype(np.float32),
                           "ternary")


def test_matmul_rejects_wrong_dtype(q576):
    with pytest.raises(TypeError, match="matmul: x must have dtype float32, got float64"):
        ternlm.matmul(np.zeros(576), q576)
    with pytest.raises(TypeError, match="matmul: x must be a numpy array"):
        ternlm.matmul([0.0] * 576, q576)
    with pytest.raises(TypeError, match="matmul: q must be a ternlm.QuantizedMatrix"):
        ternlm.matmul(np.zeros(576, np.float32), np.zeros((16, 576), np.float32))


def test_matmul_rejects_shape_mismatch(q576):
    with pytest.raises(ValueError, match=r"matmul: x has 577 columns, expected q.shape\[1\] = 576"):
        ternlm.matmul(np.zeros((2, 577), np.float32), q576)
    with pytest.raises(ValueError, match=r"matmul: x must be 1-D \[in\] or 2-D \[n, in\], got shape \(1, 2, 576\)"):
        ternlm.matmul(np.zeros((1, 2, 576), np.float32), q576)


def test_matmul_rejects_non_contiguous_and_non_finite(q576):
    with pytest.raises(ValueError, match="matmul: x must be C-contiguous"):
        ternlm.matmul(np.zeros((576, 2), np.float32).T, q576)
    x = np.zeros(576, np.float32)
    x[100] = np.nan
    with pytest.raises(ValueError, match="matmul: x has a non-finite value at flat index 100"):
        ternlm.matmul(x, q576)


def test_matmul_rejects_bad_thread_count(q576):
    with pytest.raises(ValueError, match="matmul: threads must be >= 1"):
        ternlm.matmul(np.zeros(576, np.float32), q576, threads=0)
    with pytest.raises(ValueError, match="set_num_threads: n must be >= 0"):
        ternlm.set_num_threads(-1)


def test_matmul_of_empty_batch_returns_empty(q576):
    y = ternlm.matmul(np.zeros((0, 576), np.float32), q576)
    assert y.shape == (0, 16)


def test_many_small_calls_through_the_pool_stay_correct():
    # Thousands of short jobs exercise the pool's wake / finish handshake.
    rng = np.random.default_rng(9)
    q = ternlm.quantize(random_matrix(rng, 64, 256), "ternary")
    x = random_matrix(rng, 1, 256)[0]
    expected = ternlm.matmul(x, q, threads=1)
    for _ in range(3000):
        np.testing.assert_array_equal(ternlm.matmul(x, q, threads=2), expected)
