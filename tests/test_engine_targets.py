"""The whole engine (embedding, RMSNorm, RoPE, attention with the f32 and f16 KV caches,
the prefill chunks, decode with positions split over two threads, the head) on every
compiled Highway target, against the portable fallback (SCALAR / EMU128). Needs no torch,
so it also runs on the emulated aarch64 build (tests/arm_qemu_tests.sh), where it checks the
NEON paths end to end. Weights: a tiny random BitNet checkpoint (ternlm.synthetic), stored
ternary and converted to bf16 and int4. With bf16 weights the tolerance is f32
summation-order differences. Ternary and int4 quantize their activations to int8, and a
rounding tie flips with the summation order (about 6e-3 of the largest logit here, as in
test_engine.py's BitNet comparisons), so for them the bound is loose: it catches a broken
kernel (errors of order 1), not the last bits; test_matmul.py checks those kernels exactly."""
import numpy as np
import pytest

import ternlm
from ternlm import _core
from ternlm.synthetic import write_synthetic_bitnet

TARGETS = _core.supported_targets()
FALLBACK = TARGETS[-1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_synthetic_bitnet(str(tmp_path_factory.mktemp("synthetic") / "tiny"), "tiny", seed=3)


def logits(folder, target, weights, kv):
    """Prefill of 290 tokens (5 chunks), then 10 single-token steps; 2 threads, so decode
    splits the cached positions into parts."""
    _core.set_target(target)
    try:
        m = ternlm.load(folder, weights=weights, threads=2, context=320, progress=False, kv_dtype=kv)
        ids = np.random.default_rng(0).integers(0, m.config.vocab_size, 300).astype(np.int32)
        engine = m._engine
        rows = [engine.forward(ids[:290], logits="all")[-5:]]
        rows += [engine.forward(ids[i:i + 1])[None] for i in range(290, 300)]
        return np.concatenate(rows)
    finally:
        _core.reset_target()


@pytest.mark.parametrize("weights,kv,tol", [("bf16", "f32", 1e-5), ("bf16", "f16", 1e-4),
                                            ("int4", "f32", 3e-2), ("ternary", "f16", 3e-2)])
def test_every_target_agrees_with_the_fallback(folder, weights, kv, tol):
    want = logits(folder, FALLBACK, weights, kv)
    assert np.isfinite(want).all()
    for t in TARGETS[:-1]:
        got = logits(folder, t, weights, kv)
        err = float(np.abs(got - want).max() / np.abs(want).max())
        print(f"{weights} / {kv} KV on {t} vs {FALLBACK}: {err:.2e}")
        assert err < tol, t
