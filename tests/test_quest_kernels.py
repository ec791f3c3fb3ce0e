"""The engine's side of QuEST-trained models (cpp/kernels/hadamard.h, activations.h): the
online Hadamard rotation, the 4-bit per-token activation quantizer and every format's
MatMul on 4-bit activations, on every Highway target this CPU has plus the scalar path,
against numpy and against the trainer's torch twins (ternlm.distill.quest).

Tolerances: the rotation runs the same f32 butterflies in the same order everywhere, so
targets, the numpy butterfly reference and the torch twin agree bit for bit; against the
exact product x·H (float64) the error is that of log2(b) rounded f32 additions and one
multiply: within 1e-6 x log2(b) x max|x·H| here. The quantizer's codes and units are
compared exactly. MatMul on 4-bit activations: its integer dots are exact, so it is
compared with a float64 numpy evaluation of the same integers to 1e-5 of max|y| (the f32
epilogue's rounding).
"""
import threading

import numpy as np
import pytest

import ternlm
from ternlm import _core

TARGETS = _core.supported_targets()
WIDTHS = [16, 64, 96, 576, 1536, 4096]


def each_target(fn):
    """fn() on every target (and with VNNI off on AVX3 where the CPU has it): {name: result}."""
    out = {}
    try:
        for t in TARGETS:
            _core.set_target(t)
            out[t] = fn()
            if t == "AVX3" and _core.avx3_vnni():
                _core.set_avx3_vnni(False)
                try:
                    out["AVX3-novnni"] = fn()
                finally:
                    _core.set_avx3_vnni(True)
    finally:
        _core.reset_target()
    return out


def butterfly(x, b):
    """numpy FWHT in the engine's stage order (h = 1, 2, ..., b/2), f32, then * f32(1/sqrt(b))."""
    x = np.array(x, dtype=np.float32)
    n = x.shape[-1]
    v = x.reshape(-1, n // b, b)
    h = 1
    while h < b:
        w = v.reshape(v.shape[0], n // b, b // (2 * h), 2, h)
        a, c = w[..., 0, :].copy(), w[..., 1, :].copy()
        w[..., 0, :], w[..., 1, :] = a + c, a - c
        h *= 2
    return (v.reshape(x.shape) * np.float32(1.0 / np.sqrt(b))).astype(np.float32)


def sylvester(b):
    h = np.ones((1, 1))
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(b)


@pytest.mark.parametrize("n", WIDTHS)
def test_hadamard_exact_on_every_target(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((5, n)).astype(np.float32)
    x[0, 3] = 40.0                                  # an outlier channel, as real activations have
    results = each_target(lambda: _core.hadamard_rotate(x))
    b = (n & -n)
    ref = butterfly(x, b)
    dense = (x.astype(np.float64).reshape(5, n // b, b) @ sylvester(b)).reshape(5, n)
    for t, (y, block) in results.items():
        assert block == b
        np.testing.assert_array_equal(y, ref, err_msg=t)
    err = np.abs(ref - dense).max() / np.abs(dense).max()
    assert err < 1e-6 * np.log2(b), err
    # orthogonal: norms kept, and rotating twice is the identity (H symmetric)
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    np.testing.assert_allclose(_core.hadamard_rotate(ref)[0], x, rtol=1e-4, atol=1e-4 * np.abs(x).max())


def test_hadamard_torch_twin_is_bit_exact():
    torch = pytest.importorskip("torch")
    from ternlm.distill.quest import hadamard, hadamard_block
    rng = np.random.default_rng(1)
    for n in WIDTHS:
        x = rng.standard_normal((3, n)).astype(np.float32)
        assert hadamard_block(n) == _core.hadamard_rotate(x)[1]
        np.testing.assert_array_equal(hadamard(torch.from_numpy(x)).numpy(), _core.hadamard_rotate(x)[0])


@pytest.mark.parametrize("n", [8, 40, 100, 577])
def test_hadamard_refuses_widths_without_a_block_of_16(n):
    with pytest.raises(ValueError, match=f"width {n} is not a multiple of 16"):
        _core.hadamard_rotate(np.zeros((1, n), np.float32))


def numpy_codes(x, clip):
    """activations.h QuantizeActivationsInt4 in numpy (f32 steps, the Gaussian RMS in float64)."""
    x = np.asarray(x, dtype=np.float32)
    if clip == "gaussian":
        ms = np.sum(x.astype(np.float64) ** 2, axis=-1, keepdims=True) / x.shape[-1]
        alpha = (np.float64(np.float32(2.513930578568423)) * np.sqrt(ms)).astype(np.float32)
    else:
        alpha = np.abs(x).max(axis=-1, keepdims=True)
    s = np.float32(7.5) / np.maximum(alpha, np.float32(1e-5))
    c = np.clip(np.floor(x * s), -8, 7) * 2 + 1
    return c.astype(np.int8), (np.float32(1) / (np.float32(2) * s))[..., 0]


def torch_codes(x, clip):
    torch = pytest.importorskip("torch")
    from ternlm.distill.quest import quantize_activations4
    c, u = quantize_activations4(torch.from_numpy(x), clip)
    return c.numpy().astype(np.int8), u.numpy()[..., 0]


@pytest.mark.parametrize("clip", ["absmax", "gaussian"])
@pytest.mark.parametrize("n", [37, 64, 576, 1536])
def test_int4_activation_codes_match_the_trainer_bit_for_bit(clip, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((6, n)).astype(np.float32) * np.float32(0.3)
    x[1, 5] = 25.0                                   # clipped by the Gaussian fit
    x[2] = np.round(x[2] * 4) / 4                    # many values on ties of some grids
    x[3] = 0.0                                       # an all-zero row (alpha floor 1e-5)
    ref_c, ref_u = numpy_codes(x, clip)
    try:
        t_c, t_u = torch_codes(x, clip)                # the trainer's twin (where torch is)
        np.testing.assert_array_equal(t_c, ref_c)
        np.testing.assert_array_equal(t_u, ref_u)
    except pytest.skip.Exception:
        pass
    results = each_target(lambda: [_core.quantize_activations_int4(row, clip) for row in x])
    for t, rows in results.items():
        for i, (c, u) in enumerate(rows):
            np.testing.assert_array_equal(c, ref_c[i], err_msg=f"{t} row {i}")
            assert np.float32(u) == ref_u[i], (t, i)
    c = ref_c
    assert set(np.unique(c)) <= set(range(-15, 16, 2))
    if clip == "gaussian":                           # the outlier sits on the top level
        assert c[1, 5] == 15


@pytest.mark.parametrize("fmt", ["int4", "ternary", "int8", "q6", "bf16", "f32"])
@pytest.mark.parametrize("clip", ["absmax", "gaussian"])
def test_matmul_on_int4_activations(fmt, clip):
    rng = np.random.default_rng(7)
    rows, cols = 40, 576
    w = rng.standard_normal((rows, cols)).astype(np.float32) * np.float32(0.05)
    q = ternlm.quantize(w, fmt) if fmt != "int4" else ternlm.quantize(w, "int4", group_size=64)
    wd = q.dequantize().astype(np.float64)
    x = rng.standard_normal((3, cols)).astype(np.float32)
    codes = [_core.quantize_activations_int4(r, clip) for r in x]
    ref = np.stack([wd @ (c.astype(np.float64) * u) for c, u in codes])
    results = each_target(lambda: _core.matmul(x, q, activations=f"int4-{clip}"))
    for t, y in results.items():
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max(), t
    base = results[TARGETS[-1]]
    if fmt == "ternary":                             # exact integer sums, same scaling
        for t, y in results.items():
            np.testing.assert_array_equal(y, base, err_msg=t)
    # the format's own quantization is another computation
    assert not np.array_equal(ternlm.matmul(x, q), base)


def test_nano_matmul_on_int4_activations_reads_the_dequantized_codes():
    """nano's two-stage driver takes float inputs: a 4-bit-activation model gives it c * u."""
    rng = np.random.default_rng(5)
    q = ternlm.quantize(rng.standard_normal((64, 256)).astype(np.float32), "nano:1.0")
    x = rng.standard_normal((3, 256)).astype(np.float32)
    dq = np.stack([c.astype(np.float32) * np.float32(u) for c, u in
                   (_core.quantize_activations_int4(r, "gaussian") for r in x)])
    np.testing.assert_array_equal(_core.matmul(x, q, activations="int4-gaussian"), ternlm.matmul(dq, q))


def test_matmul_int4_activations_from_many_threads():
    rng = np.random.default_rng(3)
    q = ternlm.quantize(rng.standard_normal((64, 512)).astype(np.float32), "int4")
    xs = [rng.standard_normal((2, 512)).astype(np.float32) for _ in range(8)]
    want = [_core.matmul(x, q, threads=1, activations="int4-gaussian") for x in xs]
    got = [None] * len(xs)

    def work(i):
        for _ in range(20):
            got[i] = _core.matmul(xs[i], q, threads=2, activations="int4-gaussian")
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_bad_activation_names():
    q = ternlm.quantize(np.ones((16, 32), np.float32), "int4")
    with pytest.raises(ValueError, match="activations must be 'format', 'int4-absmax' or 'int4-gaussian'"):
        _core.matmul(np.ones(32, np.float32), q, activations="int3")
    with pytest.raises(ValueError, match="clip must be 'absmax' or 'gaussian'"):
        _core.quantize_activations_int4(np.ones(32, np.float32), "rms")


def test_trust_estimator_masks_the_outliers():
    """The straight-through gradient reaches an element only where |Q(x) - x| <= trust * u:
    at λ = 1 the clipped outliers get none, everything inside [-alpha, alpha] gets 1."""
    torch = pytest.importorskip("torch")
    from ternlm.distill.quest import quantize_activations4, straight_through
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 256, generator=g)
    outliers = [(0, 3), (1, 100), (2, 7), (3, 255)]
    for r, c in outliers:
        x[r, c] = 30.0 if c % 2 else -30.0
    x.requires_grad_(True)
    codes, u = quantize_activations4(x.detach(), "gaussian")
    xq = codes * u
    trusted = (xq - x.detach()).abs() <= 1.0 * u
    y = straight_through(x, xq, torch.tensor(1.0), trusted)
    torch.testing.assert_close(y.detach(), xq, rtol=0, atol=1e-6)   # the forward: the quantized value (x + (xq - x))
    y.sum().backward()
    mask = torch.ones_like(x)
    for r, c in outliers:
        mask[r, c] = 0
    alpha = 7.5 * 2 * u
    beyond = x.detach().abs() > alpha + u                      # more than half a step past the clip
    assert torch.equal(beyond, mask == 0)                      # exactly the planted outliers
    assert torch.equal(x.grad, mask)
    # half-way blending (λ = 0.5): untrusted elements keep 1 - λ of the gradient
    x.grad = None
    straight_through(x, xq, torch.tensor(0.5), trusted).sum().backward()
    assert torch.equal(x.grad, torch.where(mask == 0, 0.5, 1.0))
    # no trust mask: plain straight-through
    x.grad = None
    straight_through(x, xq, torch.tensor(1.0)).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
