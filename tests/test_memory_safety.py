"""Memory safety of the C++ core under bad values and bad calls (issue 18, items 1-4):
non-finite logits and tiny temperatures in the sampler, contexts beyond memory, thread
pools (creation failure, lifetime, cap) and unaligned or emptied inputs. Needs no torch:
`make test-sanitize` runs this file under ASan + UBSan (tests/sanitize_env.sh)."""
import gc
import json
import os
import warnings

import numpy as np
import pytest

import ternlm
from ternlm._native import core
from ternlm.hints import TernlmWarning, available_cores
from ternlm.io.safetensors import SafetensorsFile, float32_to_bf16_bits, save_safetensors
from ternlm.synthetic import write_synthetic_bitnet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random BitNet checkpoint (Hugging Face layout, 2 layers, hidden 256, vocab 1024,
    max_position_embeddings 1024)."""
    return write_synthetic_bitnet(tmp_path_factory.mktemp("tiny") / "m", "tiny")


def load(folder, **kw):
    kw.setdefault("context", 64)
    kw.setdefault("threads", 1)
    return ternlm.load(folder, progress=False, **kw)


def task_count():
    return len(os.listdir("/proc/self/task"))


# ---- 1. sampler: non-finite logits, tiny temperatures ---------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kwargs", [dict(), dict(temperature=1.0), dict(temperature=0.7, top_k=3, min_p=0.1),
                                    dict(temperature=1.0, top_p=0.5), dict(repetition_penalty=1.3)])
def test_non_finite_logits_raise_naming_the_logit(bad, kwargs):
    lg = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    lg[17] = bad
    recent = np.array([1, 2], np.int32)
    with pytest.raises(core.NonFiniteLogitsError, match="logit 17 is"):
        core.Sampler(0).sample(lg, recent_tokens=recent, **kwargs)
    with pytest.raises(ValueError):                       # NonFiniteLogitsError is a ValueError
        core.Sampler(0).sample(np.full(50, np.nan, np.float32), **kwargs)


@pytest.mark.parametrize("kwargs", [dict(min_p=0.1), dict(top_k=5), dict(top_p=0.9), dict(top_k=3, min_p=0.5),
                                    dict(top_k=1, top_p=0.5, min_p=1.0, repetition_penalty=1.5)])
@pytest.mark.parametrize("temperature", [1e-40, 1e-45, 1e-30])
def test_tiny_temperature_is_argmax_not_garbage(kwargs, temperature):
    """logits / 1e-40 overflows float32 (Inf - Inf = NaN before the filters): computed in
    double it is the argmax."""
    s = core.Sampler(3)
    for seed in range(10):
        lg = (np.random.default_rng(seed).standard_normal(300) * 5).astype(np.float32)
        want = int(np.argmax(lg)) if "repetition_penalty" not in kwargs else None
        got = s.sample(lg, temperature=temperature, **kwargs)
        assert 0 <= got < 300
        if want is not None:
            assert got == want


def test_extreme_logits_and_penalties_stay_in_range():
    """Logits near the float32 limits: the penalty saturates instead of reaching Inf."""
    lg = np.array([3e38, -3e38, 1.0, 3.3e38, -3.4e38], np.float32)
    s = core.Sampler(1)
    for penalty in (1e-3, 1e3):
        for temperature in (0.0, 1e-40, 1.0, 100.0):
            for kw in (dict(), dict(top_k=2), dict(min_p=0.5), dict(top_p=0.3)):
                got = s.sample(lg, temperature, repetition_penalty=penalty,
                               recent_tokens=np.arange(5, dtype=np.int32), **kw)
                assert 0 <= got < 5


def test_ties_at_tiny_temperature_are_shared():
    lg = np.array([0.0, 2.0, 2.0, 1.0], np.float32)
    s = core.Sampler(5)
    drawn = {s.sample(lg, 1e-40, min_p=0.5) for _ in range(200)}
    assert drawn == {1, 2}


def test_generation_with_overflowing_weights_names_the_step(tiny, tmp_path):
    """All-finite weights whose forward overflows float32 (final norm weights near 3e38):
    the logits are NaN/Inf, and generation stops with a ValueError naming the step."""
    folder = tmp_path / "overflow"
    os.makedirs(folder)
    for name in os.listdir(tiny):
        if name != "model.safetensors":
            with open(os.path.join(tiny, name), "rb") as src, open(folder / name, "wb") as dst:
                dst.write(src.read())
    st = SafetensorsFile(os.path.join(tiny, "model.safetensors"))
    tensors = {}
    for name in st.keys():
        info = st.info(name)
        arr = np.array(st.raw(name)).reshape(info.shape)
        tensors[name] = ("BF16", arr) if info.dtype == "BF16" else arr
    hidden = tensors["model.norm.weight"][1].shape if isinstance(tensors["model.norm.weight"], tuple) \
        else tensors["model.norm.weight"].shape
    tensors["model.norm.weight"] = ("BF16", float32_to_bf16_bits(np.full(hidden, 3e38, np.float32)))
    del st
    save_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})
    m = load(folder)
    with pytest.raises(ValueError, match=r"logits at step 0 are not finite \(NaN weights or overflow\)"):
        m.generate("hello", max_new_tokens=4)
    with pytest.raises(ValueError, match="at step 0 .*position 5"):
        list(m.stream([1, 2, 3, 4, 5, 6], max_new_tokens=4, temperature=0.8, top_k=5, seed=1))
    logits = m.logits([1, 2, 3])                          # scoring returns what the forward computes
    assert not np.isfinite(logits).all()


def test_tiny_temperature_generation_equals_greedy(tiny):
    m = load(tiny)
    greedy = m.generate([5, 6, 7], max_new_tokens=8)
    for kw in (dict(min_p=0.05), dict(top_k=3), dict(top_p=0.9, min_p=0.2, top_k=40)):
        assert m.generate([5, 6, 7], max_new_tokens=8, temperature=1e-40, seed=2, **kw) == greedy


# ---- 2. context beyond memory, RoPE tables filled as used --------------------------------------
@pytest.mark.filterwarnings("ignore::ternlm.hints.TernlmWarning")   # beyond max_position_embeddings
@pytest.mark.parametrize("context", [10**10, 2**62, 2**64 + 5, 10**30])
def test_context_beyond_memory_is_refused_naming_the_bytes(tiny, context):
    with pytest.raises(ValueError, match=r"context=\d+ needs .* GB \(\d+ bytes\) for the KV cache"):
        load(tiny, context=context)


def test_engine_refuses_huge_or_bad_contexts_directly(tiny):
    from ternlm.loading import convert_checkpoint, read_checkpoint, target_formats
    ckpt = read_checkpoint(tiny)
    for context, match in [(2**63, "physical memory|any machine"), (2**80, "physical memory|any machine"),
                           (np.int64(2**62), "physical memory|any machine"),
                           (0, "context must be >= 1"), (-2**70, "context must be >= 1")]:
        tensors = convert_checkpoint(ckpt, target_formats(ckpt, None, None), progress=False)
        with pytest.raises(ValueError, match=match):
            core.Transformer(ckpt.config.to_dict(), tensors, context, 1)
    with pytest.raises(TypeError):
        core.Transformer(ckpt.config.to_dict(), tensors, 16.0, 1)


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_a_long_context_costs_nothing_until_used(tiny):
    """context=500k reserves ~1.2 GB (KV cache, RoPE tables, scores) but commits none of it
    at load; its logits are those of a short context, bit for bit."""
    short = load(tiny, context=64)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    want = short.logits(ids)
    del short
    gc.collect()
    before = rss_bytes()
    with pytest.warns(TernlmWarning, match="max_position_embeddings"):
        m = load(tiny, context=500_000)
    assert m.memory_bytes > 500_000 * 2048                # the KV cache alone: 2 KiB per position
    assert rss_bytes() - before < 40 << 20                # the RoPE tables alone would be 128 MB
    np.testing.assert_array_equal(m.logits(ids), want)
    assert m.generate(ids, max_new_tokens=3) == load(tiny, context=64).generate(ids, max_new_tokens=3)


@pytest.mark.skipif(os.environ.get("TERNLM_SANITIZE") == "1",
                    reason="ASan reserves terabytes of shadow address space: RLIMIT_AS cannot be set under it")
def test_a_failed_engine_allocation_is_a_memory_error_naming_it(tiny):
    """Within physical memory but beyond the process's address-space limit: the engine's
    allocation fails and says which buffer and how many bytes (MemoryError)."""
    code = f"""
import resource, warnings
import ternlm
warnings.simplefilter("ignore")
ternlm.load({str(tiny)!r}, context=64, threads=1, progress=False)    # imports and first allocations done
with open("/proc/self/status") as f:
    size = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + (400 << 20), resource.RLIM_INFINITY))
try:
    ternlm.load({str(tiny)!r}, context=1_000_000, threads=1, progress=False)   # KV cache: 2 x 1 GB
except MemoryError as e:
    print("MemoryError:", e)
"""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "MemoryError: KV cache: could not allocate 2 x 1024000000 bytes" in r.stdout


# ---- 3. thread pools -----------------------------------------------------------------------------
def test_pools_are_released_with_the_last_model(tiny):
    """Each distinct thread count used to keep a pool forever (threads=1..40: 783 idle
    threads); now a pool's threads stop when its last model goes."""
    gc.collect()
    before = task_count()
    for threads in range(1, core.max_threads() + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TernlmWarning)   # more threads than cores
            m = load(tiny, threads=threads)
        assert task_count() <= before + threads - 1        # (a pool of this size may be live already)
        m.generate([1, 2], max_new_tokens=2)
        del m
        gc.collect()
    assert task_count() <= before
    # models of the same size share one pool
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TernlmWarning)
        a = load(tiny, threads=3)
        with_one = task_count()
        b = load(tiny, threads=3)
    assert task_count() == with_one <= before + 2
    del a, b
    gc.collect()
    assert task_count() <= before


def test_matmul_keeps_one_recent_pool():
    q = ternlm.quantize(np.ones((32, 64), np.float32), "f32")
    x = np.ones(64, np.float32)
    gc.collect()
    before = task_count()
    for threads in range(1, min(core.max_threads(), 6) + 1):
        for _ in range(3):
            ternlm.matmul(x, q, threads=threads)
    assert task_count() <= before + min(core.max_threads(), 6) - 1 + (os.cpu_count() or 1)


def test_thread_counts_above_the_cap_are_refused(tiny):
    cap = core.max_threads()
    assert cap == 4 * (os.cpu_count() or 1)
    q = ternlm.quantize(np.ones((16, 32), np.float32), "f32")
    with pytest.raises(ValueError, match=f"threads={cap + 1} is more than 4 x"):
        ternlm.matmul(np.ones(32, np.float32), q, threads=cap + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TernlmWarning)     # more threads than cores
        with pytest.raises(ValueError, match=f"threads={cap + 1} is more than 4 x"):
            load(tiny, threads=cap + 1)
    with pytest.raises(ValueError, match="threads"):
        ternlm.set_num_threads(cap + 1)


@pytest.mark.filterwarnings("ignore::ternlm.hints.TernlmWarning")   # 4 threads on fewer cores
def test_a_failed_thread_start_raises_cleanly_and_leaves_no_threads(tiny):
    """Thread 2 of 4 cannot be created: the worker already started is joined before the
    pool is freed (it used to read freed memory), and the error is a RuntimeError."""
    gc.collect()
    before = task_count()
    q = ternlm.quantize(np.ones((16, 32), np.float32), "f32")
    core._fail_thread_start_for_test(2)
    try:
        with pytest.raises(RuntimeError, match="could not start worker thread 2 of 4"):
            ternlm.load(tiny, threads=4, context=64, progress=False)
        with pytest.raises(RuntimeError, match="could not start worker thread 2 of 4"):
            ternlm.matmul(np.ones(32, np.float32), q, threads=4)
        assert task_count() == before
    finally:
        core._fail_thread_start_for_test(0)
    m = load(tiny, threads=4)                              # the next start works
    assert m.generate([1, 2], max_new_tokens=2) == load(tiny, threads=1).generate([1, 2], max_new_tokens=2)


# ---- 4. unaligned and emptied inputs ---------------------------------------------------------------
def unaligned(a):
    """A copy of `a` whose data starts one byte past an aligned address (as a view into a
    memory-mapped file at an odd offset does)."""
    a = np.ascontiguousarray(a)
    buf = np.empty(a.nbytes + 1, np.uint8)
    buf[1:] = a.reshape(-1).view(np.uint8)
    out = buf[1:].view(a.dtype).reshape(a.shape)
    assert out.flags.c_contiguous and (a.itemsize == 1 or not out.flags.aligned)
    return out


def test_unaligned_numpy_inputs_give_the_aligned_results():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    bits = float32_to_bf16_bits(w)
    q4 = rng.integers(0, 16, (48, 64)).astype(np.uint8)
    sc = (rng.random((48, 2)) * 0.1).astype(np.float16)
    mn = (-rng.random((48, 2))).astype(np.float16)
    mult = rng.random(48).astype(np.float32)
    t = rng.integers(-1, 2, (48, 64)).astype(np.int8)

    def same(make, *args):
        a = make(*args)
        b = make(*[unaligned(v) if isinstance(v, np.ndarray) else v for v in args])
        if isinstance(a, ternlm.QuantizedMatrix):
            a, b = a.dequantize(), b.dequantize()
        np.testing.assert_array_equal(a, b)

    same(ternlm.quantize, w, "int4")
    same(ternlm.quantize, w, "ternary")
    same(lambda b: ternlm.from_bf16(b), bits)
    same(lambda b: ternlm.from_bf16(b, "bf16c"), bits)
    same(lambda a, s, m: ternlm.from_int4(a, s, m, 32), q4, sc, mn)
    same(ternlm.from_ternary, t, mult)
    qm = ternlm.quantize(w, "bf16")
    same(lambda v: ternlm.matmul(v, qm), x)
    same(lambda v: core.Sampler(4).sample(v, 0.9, top_k=5), x[0])
    bufs = ternlm.quantize(w, "int4").buffers()
    same(lambda s, m4, v: ternlm.QuantizedMatrix.from_buffers("int4", (48, 64), 32,
                                                              {"layout_version": v, "q4": m4, "scale": s,
                                                               "min": bufs["min"]}),
         bufs["scale"], bufs["q4"], bufs["layout_version"])


def test_unaligned_token_ids_and_norms_reach_the_engine(tiny):
    m = load(tiny)
    ids = np.array([5, 6, 7, 8], np.int64)
    want = m._engine.forward(ids)
    m._engine.reset()
    np.testing.assert_array_equal(m._engine.forward(unaligned(ids)), want)


def test_emptied_matrices_are_safe_to_inspect(tiny):
    """The engine takes the storage of the matrices it is built from; what is left is an
    empty (0, 0) matrix whose methods must not read through a null pointer."""
    from ternlm.loading import build_engine, convert_checkpoint, read_checkpoint, target_formats
    ckpt = read_checkpoint(tiny)
    for weights in (None, "int4", "bf16", "bf16c"):
        tensors = convert_checkpoint(ckpt, target_formats(ckpt, weights, None), progress=False)
        build_engine(ckpt.config, tensors, 16, 1)
        for name, q in tensors.items():
            if not isinstance(q, ternlm.QuantizedMatrix):
                continue
            assert q.shape == (0, 0)
            assert all(a.size == 0 for k, a in q.buffers().items() if k != "layout_version")
            assert q.dequantize().shape == (0, 0)
            repr(q)
            with pytest.raises(ValueError):
                ternlm.matmul(np.ones(4, np.float32), q)
            if q.format == "ternary":
                assert q.ternary_values().shape == (0, 0)
            with pytest.raises(IndexError):
                q.dequantize_row(0)


def test_config_json_of_the_fixture_is_what_the_tests_assume(tiny):
    with open(os.path.join(tiny, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["max_position_embeddings"] == 1024 and cfg["hidden_size"] == 256
