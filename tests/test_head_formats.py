"""The near-lossless head formats int8 (cpp/formats/int8.h) and q6 (cpp/formats/q6.h): the
kernels' exact int32 block sums against numpy on every Highway target (plus scalar), the
f32 matmul against the numpy numerics, quantization error, from_q6 without loss (GGUF
Q6_K's numerics), the stored buffers' round trip and checks, many threads, and models
loaded / saved with head="int8" / "q6"."""
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ternlm
from ternlm import _core
from head_reference import head_block_dots_ref, head_matmul_ref, int8_fields, q6_fields

TARGETS = _core.supported_targets()
# On an AVX-512 VNNI CPU the AVX3 target uses vpdpbusd; "AVX3-no-VNNI" runs its pmaddubsw path.
# On aarch64 with the dot-product extension NEON uses SDOT; "NEON-no-DOTPROD" runs its
# portable path (as on Cortex-A53/A72).
KERNEL_PATHS = (TARGETS + (["AVX3-no-VNNI"] if "AVX3" in TARGETS and _core.avx3_vnni() else [])
                + (["NEON-no-DOTPROD"] if "NEON" in TARGETS and _core.arm_dotprod() else []))
FORMATS = ["int8", "q6"]
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(params=KERNEL_PATHS)
def target(request):
    name = request.param.replace("-no-VNNI", "").replace("-no-DOTPROD", "")
    _core.set_target(name)
    _core.set_avx3_vnni(not request.param.endswith("-no-VNNI"))
    _core.set_arm_dotprod(not request.param.endswith("-no-DOTPROD"))
    assert _core.current_target() == name
    yield request.param
    _core.set_avx3_vnni(True)
    _core.set_arm_dotprod(True)
    _core.reset_target()


def random_matrix(rng, rows, cols):
    return (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 3.0, (rows, 1))).astype(np.float32)


@pytest.mark.parametrize("fmt", FORMATS)
@SETTINGS
@given(rows=st.integers(1, 70), cols32=st.integers(1, 20), tail=st.sampled_from([0, 0, 16, 5]),
       seed=st.integers(0, 2**32 - 1))
def test_block_dots_exact_on_every_target(target, fmt, rows, cols32, tail, seed):
    cols = 32 * cols32 - (0 if tail == 0 else 32 - tail) if cols32 > 1 or tail == 0 else 32
    rng = np.random.default_rng(seed)
    q = ternlm.quantize(random_matrix(rng, rows, cols), fmt)
    x = rng.integers(-127, 128, cols).astype(np.int8)
    np.testing.assert_array_equal(_core.head_block_dots(q, x), head_block_dots_ref(q, x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_block_dots_extremes_do_not_overflow(target, fmt):
    """Largest codes and activations (q6: u = 0 and 63, |sc| = 127 or -128 from Q6_K)."""
    rows, cols = 33, 512
    if fmt == "int8":
        q = ternlm.quantize(np.where(np.arange(cols) % 3 == 0, -1.0, 1.0).astype(np.float32) *
                            np.ones((rows, 1), np.float32), "int8")
    else:
        u = np.where(np.arange(rows * cols).reshape(rows, cols) % 2 == 0, 0, 63).astype(np.uint8)
        sc = np.full((rows, cols // 16), -128, np.int8)
        sc[::2] = 127
        q = ternlm.from_q6(u, sc, np.ones((rows, cols // 256), np.float16))
    for x in (np.full(cols, 127, np.int8), np.full(cols, -127, np.int8), np.full(cols, -128, np.int8)):
        np.testing.assert_array_equal(_core.head_block_dots(q, x), head_block_dots_ref(q, x))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(1, 32), (37, 576), (50, 300), (20, 2560), (16, 48)])
def test_matmul_equals_numpy_numerics(target, fmt, shape):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    q = ternlm.quantize(random_matrix(rng, *shape), fmt)
    for n in (1, 3, 5, 70):
        x = random_matrix(rng, n, shape[1])
        y = ternlm.matmul(x, q)
        ref = head_matmul_ref(q, x)
        # same integers; f32 products and sums over <= 80 blocks / 10 super-blocks
        mag = np.abs(ref).max() + 1e-30
        assert np.max(np.abs(y - ref)) <= 2e-5 * mag, np.max(np.abs(y - ref)) / mag
    np.testing.assert_array_equal(ternlm.matmul(x[0], q), ternlm.matmul(x[:1], q)[0])


def test_int8_quantize_error_and_layout():
    rng = np.random.default_rng(1)
    w = random_matrix(rng, 45, 200)
    q = ternlm.quantize(w, "int8")
    qw, scale = int8_fields(q)
    np.testing.assert_allclose(scale, np.abs(w).max(axis=1) / 127, rtol=1e-6)
    assert np.abs(qw).max() == 127 and qw.min() >= -127
    np.testing.assert_array_equal(q.dequantize(), (scale[:, None] * qw.astype(np.float32)))
    assert np.all(np.abs(q.dequantize() - w) <= scale[:, None] * 0.5001)
    assert q.format == "int8" and q.bits_per_weight < 8.0 * 224 / 200 * 48 / 45 + 1


def test_q6_quantize_error_and_size():
    rng = np.random.default_rng(2)
    w = random_matrix(rng, 64, 2560)
    q = ternlm.quantize(w, "q6")
    assert q.bits_per_weight <= 6.6
    u, sc, d = q6_fields(q)
    deq = (d.astype(np.float32).repeat(256, axis=1)[:, :2560] * sc.astype(np.float32).repeat(16, axis=1)) * \
        (u.astype(np.float32) - 32)
    np.testing.assert_array_equal(q.dequantize(), deq)
    rel = np.linalg.norm(q.dequantize() - w) / np.linalg.norm(w)
    assert rel < 0.02, rel      # 6-bit codes: about 1.7% on Gaussian rows
    q576 = ternlm.quantize(np.ascontiguousarray(w[:, :576]), "q6")
    assert q576.bits_per_weight < 6.6


def test_from_q6_is_lossless_and_checks_values():
    rng = np.random.default_rng(3)
    rows, cols = 21, 768
    u = rng.integers(0, 64, (rows, cols)).astype(np.uint8)
    sc = rng.integers(-128, 128, (rows, cols // 16)).astype(np.int8)
    d = (rng.standard_normal((rows, cols // 256)) * 1e-3).astype(np.float16)
    q = ternlm.from_q6(u, sc, d)
    want = d.astype(np.float32).repeat(256, axis=1) * sc.astype(np.float32).repeat(16, axis=1) * \
        (u.astype(np.float32) - 32)
    np.testing.assert_array_equal(q.dequantize(), want)
    gu, gsc, gd = q6_fields(q)
    np.testing.assert_array_equal(gu, u)
    np.testing.assert_array_equal(gsc, sc)
    np.testing.assert_array_equal(gd.view(np.uint16), d.view(np.uint16))
    with pytest.raises(ValueError, match=r"u must be in \[0, 63\]"):
        ternlm.from_q6(np.full((1, 16), 64, np.uint8), np.zeros((1, 1), np.int8), np.zeros((1, 1), np.float16))
    with pytest.raises(ValueError, match="not finite"):
        ternlm.from_q6(u, sc, np.full((rows, 3), np.inf, np.float16))
    with pytest.raises(ValueError, match="sc has shape"):
        ternlm.from_q6(u, np.ascontiguousarray(sc[:, :3]), d)
    with pytest.raises(ValueError, match="multiple of 16"):
        ternlm.from_q6(np.ascontiguousarray(u[:, :20]), sc, d)
    with pytest.raises(TypeError, match="float16"):
        ternlm.from_q6(u, sc, d.astype(np.float32))


@pytest.mark.parametrize("fmt", FORMATS)
def test_buffers_round_trip_and_checks(fmt):
    rng = np.random.default_rng(4)
    q = ternlm.quantize(random_matrix(rng, 35, 320), fmt)
    b = q.buffers()
    q2 = ternlm.QuantizedMatrix.from_buffers(fmt, q.shape, 0, b)
    np.testing.assert_array_equal(q2.dequantize(), q.dequantize())
    x = random_matrix(rng, 2, 320)
    np.testing.assert_array_equal(ternlm.matmul(x, q2), ternlm.matmul(x, q))
    bad = {k: v.copy() for k, v in b.items()}
    if fmt == "int8":
        bad["q8"][5] = 0x80
        with pytest.raises(ValueError, match="'q8'.*-128"):
            ternlm.QuantizedMatrix.from_buffers(fmt, q.shape, 0, bad)
        bad = {k: v.copy() for k, v in b.items()}
        bad["row_multiplier"][3] = np.nan
        with pytest.raises(ValueError, match="row_multiplier"):
            ternlm.QuantizedMatrix.from_buffers(fmt, q.shape, 0, bad)
    else:
        # the fp16 d of tile 1's second super-block (the last 32 bytes of the tile)
        tile = bad["tiles"].size // 3
        bad["tiles"][2 * tile - 32: 2 * tile - 30] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
        with pytest.raises(ValueError, match="tile 1, super-block 1"):
            ternlm.QuantizedMatrix.from_buffers(fmt, q.shape, 0, bad)
    with pytest.raises(ValueError, match="elements"):
        ternlm.QuantizedMatrix.from_buffers(fmt, (q.shape[0] + 16, q.shape[1]), 0, b)


@pytest.mark.parametrize("fmt", FORMATS)
def test_concat_and_many_threads(fmt):
    rng = np.random.default_rng(5)
    a, b = (ternlm.quantize(random_matrix(rng, r, 96), fmt) for r in (21, 30))
    c = ternlm.concat_rows([a, b])
    np.testing.assert_array_equal(c.dequantize(), np.concatenate([a.dequantize(), b.dequantize()]))
    x = random_matrix(rng, 4, 96)
    want = ternlm.matmul(x, c, threads=1)
    np.testing.assert_array_equal(ternlm.matmul(x, c, threads=3), want)
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(ternlm.matmul(x, c))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 120
    for r in results:
        np.testing.assert_array_equal(r, want)


@pytest.mark.parametrize("head", FORMATS)
def test_models_with_small_heads(llama_folders, tmp_path, head):
    folder = llama_folders["gqa_f32"]
    ids = list(range(3, 30))
    ref = ternlm.load(folder, weights="ternary", context=64, threads=2, progress=False)
    m = ternlm.load(folder, weights="ternary", head=head, context=64, threads=2, progress=False)
    assert m.formats["embed"] == head and m.formats["layers.0.q"] == "ternary"
    got, want = m.logits(ids), ref.logits(ids)
    # near-lossless: logits within a few percent of their spread
    assert np.abs(got - want).max() < 0.05 * (want.max() - want.min())
    m.save(tmp_path / "s")
    m2 = ternlm.load(tmp_path / "s", context=64, threads=2, progress=False)
    assert m2.formats == m.formats
    np.testing.assert_array_equal(m2.logits(ids), got)
    with pytest.raises(ValueError, match="'int8', 'q6'"):
        ternlm.load(folder, head="q5", context=64, progress=False)
