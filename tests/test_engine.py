"""The C++ engine (_core.Transformer) against transformers' float32 forward: prefill logits,
KV-cache decode, greedy continuations; chunked prefill; truncate; weight ownership."""
import numpy as np
import pytest
import torch
import numpy_reference
from engine_models import BITNET_VARIANTS, LLAMA_VARIANTS, VOCAB, build_hf, canonical_arrays, engine_tensors

from ternlm._native import core

ALL_VARIANTS = list(LLAMA_VARIANTS) + list(BITNET_VARIANTS)
_CACHE = {}


def hf_and_arrays(name):
    if name not in _CACHE:
        model, mc = build_hf(name, seed=ALL_VARIANTS.index(name))
        _CACHE[name] = (model, mc, canonical_arrays(model, mc))
    return _CACHE[name]


def make_engine(name, context=256, threads=None, fmt="f32", kv_dtype="f32"):
    _, mc, arrays = hf_and_arrays(name)
    return core.Transformer(mc.to_dict(), engine_tensors(arrays, fmt), context, threads, kv_dtype)


def hf_all_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def prompt(n, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.int32)


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_prefill_logits_match_transformers_float32(name):
    model, _, _ = hf_and_arrays(name)
    ids = prompt(150)                      # 150 > one prefill chunk (64): three GEMM chunks
    engine = make_engine(name)
    got = engine.forward(ids, logits="all")
    want = hf_all_logits(model, ids.tolist())
    err = rel_err(got, want)
    print(f"{name}: max |engine - transformers| / max |logit| = {err:.2e}")
    assert got.shape == (150, VOCAB) and got.dtype == np.float32
    assert err < 1e-4
    assert engine.position == 150


@pytest.mark.parametrize("name", ["gqa_untied", "llama3_scaled", "bitnet_untied"])
@pytest.mark.parametrize("threads", [1, 2])
def test_kv_cache_decode_equals_full_forward(name, threads):
    ids = prompt(80, seed=1)
    full = make_engine(name, threads=threads).forward(ids, logits="all")
    engine = make_engine(name, threads=threads)
    rows = [engine.forward(ids[:70], logits="all")]           # 64 + 6: two chunks
    rows.append(engine.forward(ids[70:73], logits="all"))     # a short chunk at an offset
    for t in ids[73:]:                                        # GEMV decode, one token at a time
        rows.append(engine.forward(np.array([t], np.int32))[None, :])
    stepped = np.concatenate(rows)
    err = rel_err(stepped, full)
    print(f"{name} threads={threads}: decode vs full forward {err:.2e}")
    assert err < 1e-5
    last = make_engine(name, threads=threads).forward(ids, logits="last")
    np.testing.assert_allclose(last, full[-1], rtol=0, atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize("name", ["gqa_untied", "llama3_scaled", "bitnet_untied"])
@pytest.mark.parametrize("threads", [2, 3])
def test_decode_with_positions_split_over_threads_matches_transformers(name, threads):
    """Decode at a long context with more threads than KV heads: the cached positions are
    split into parts, one task each, and the partial softmax sums combined; a 3-token step
    splits with several query rows. Against transformers on the whole sequence."""
    model, _, _ = hf_and_arrays(name)
    ids = prompt(610, seed=7)
    engine = make_engine(name, context=640, threads=threads)
    rows = [engine.forward(ids[:600], logits="all")]
    rows.append(engine.forward(ids[600:603], logits="all"))
    for t in ids[603:]:
        rows.append(engine.forward(np.array([t], np.int32))[None, :])
    err = rel_err(np.concatenate(rows), hf_all_logits(model, ids.tolist()))
    print(f"{name} threads={threads} at 600-610 positions: {err:.2e}")
    assert err < 1e-4


@pytest.mark.parametrize("target", core.supported_targets())
@pytest.mark.parametrize("name", ["gqa_untied", "llama3_scaled", "odd_sizes", "bitnet_untied"])
def test_f16_kv_cache_matches_reference_with_half_keys_and_values(name, target):
    """kv_dtype="f16": the engine equals the numpy reference whose keys and values are
    rounded to half (nearest even), on every Highway target (the f16 -> f32 widening is
    F16C / AVX-512 / emulated per target), through prefill, a split decode (2 threads, long
    context) and single steps. Against transformers' float32 forward the f16 cache moves the
    logits by the rounding of K and V only (printed; bounded loosely here)."""
    model, mc, arrays = hf_and_arrays(name)
    ids = prompt(300, seed=8)
    want = numpy_reference.forward(mc, arrays, ids, kv_dtype=np.float16)
    core.set_target(target)
    try:
        engine = make_engine(name, context=320, threads=2, kv_dtype="f16")
        assert engine.kv_dtype == "f16"
        rows = [engine.forward(ids[:290], logits="all")]
        rows += [engine.forward(ids[i:i + 1])[None] for i in range(290, 300)]
    finally:
        core.reset_target()
    got = np.concatenate(rows)
    err = rel_err(got, want)
    hf_err = rel_err(got, hf_all_logits(model, ids.tolist()))
    print(f"{name} on {target}: f16 KV vs reference with f16 K/V {err:.2e}, vs transformers f32 {hf_err:.2e}")
    assert err < 1e-4
    assert hf_err < 5e-3


def test_f16_kv_cache_halves_the_cache_memory():
    _, mc, arrays = hf_and_arrays("gqa_untied")
    f32 = core.Transformer(mc.to_dict(), engine_tensors(arrays, "f32"), 4096, 1).memory_bytes
    f16 = core.Transformer(mc.to_dict(), engine_tensors(arrays, "f32"), 4096, 1, "f16").memory_bytes
    cache_f32 = 2 * mc.num_layers * mc.num_kv_heads * 4096 * mc.head_dim * 4
    assert f32 - f16 == cache_f32 // 2
    with pytest.raises(ValueError, match="kv_dtype must be 'f32' or 'f16', got 'bf16'"):
        core.Transformer(mc.to_dict(), engine_tensors(arrays, "f32"), 64, 1, "bf16")


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_greedy_continuation_equals_transformers_generate(name):
    model, _, _ = hf_and_arrays(name)
    ids = prompt(12, seed=2)
    with torch.no_grad():
        x = torch.tensor([ids.tolist()])    # explicit mask: a token equal to pad_token_id stays visible
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=32, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    want = out[0, len(ids):].tolist()
    engine = make_engine(name)
    sampler = core.Sampler(0)
    tok = engine.prefill(ids, sampler)                        # prompt forward + greedy pick in C++
    got = [tok]
    while len(got) < 32:
        tok = engine.step(tok, sampler)                       # decode + greedy pick in C++
        got.append(tok)
    print(f"{name}: {got}")
    assert got == want
    assert engine.position == len(ids) + 31


def test_step_samples_like_forward_then_sample():
    """prefill() / step() = forward + Sampler.sample, draw for draw, with sampling on: the
    penalty history the sampler keeps (prompt, then each appended token) is the explicit
    prompt + output list."""
    ids = prompt(10, seed=7)
    params = (0.9, 20, 0.95, 0.02, 1.2)
    a, b = make_engine("bitnet_untied"), make_engine("bitnet_untied")
    sa, sb = core.Sampler(5, *params), core.Sampler(5)
    ta = a.prefill(ids, sa)
    tb = int(sb.sample(b.forward(ids), *params, ids))
    assert ta == tb
    seq_a, seq_b = list(ids), list(ids)
    for _ in range(24):
        seq_a.append(ta)
        seq_b.append(tb)
        ta = a.step(ta, sa)
        tb = int(sb.sample(b.forward(np.array([tb], np.int32)), *params, np.array(seq_b, np.int32)))
    assert seq_a == seq_b and ta == tb
    assert len(set(seq_a[10:])) > 3                            # it really sampled


@pytest.mark.parametrize("name", ["gqa_untied", "bitnet_untied"])
def test_greedy_with_repetition_penalty_equals_transformers_generate(name):
    """The history kept in the sampler penalises each distinct id of prompt + output once,
    as transformers' RepetitionPenaltyLogitsProcessor in generate()."""
    model, _, _ = hf_and_arrays(name)
    ids = prompt(12, seed=4)
    with torch.no_grad():
        x = torch.tensor([ids.tolist()])
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False,
                             repetition_penalty=1.3, eos_token_id=None, pad_token_id=0)
    want = out[0, len(ids):].tolist()
    engine, sampler = make_engine(name), core.Sampler(0, repetition_penalty=1.3)
    got = [engine.prefill(ids, sampler)]
    while len(got) < 24:
        got.append(engine.step(got[-1], sampler))
    assert got == want
    plain, greedy = make_engine(name), core.Sampler(0)
    free = [plain.prefill(ids, greedy)]
    while len(free) < 24:
        free.append(plain.step(free[-1], greedy))
    assert free != got                                         # the penalty did change the output


def test_prefill_and_step_reject_bad_input_before_changing_anything():
    engine = make_engine("gqa_untied", context=8)
    sampler = core.Sampler(0)
    with pytest.raises(ValueError, match=f"prefill: token id {VOCAB} at index 2 is outside"):
        engine.prefill(np.array([1, 2, VOCAB], np.int32), sampler)
    with pytest.raises(ValueError, match="token id -2147483648"):       # saturated, not wrapped
        engine.prefill(np.array([-(2**40)], np.int64), sampler)
    with pytest.raises(ValueError, match="no tokens"):
        engine.prefill(np.array([], np.int32), sampler)
    with pytest.raises(ValueError, match="9 tokens at position 0 go past the context of 8"):
        engine.prefill(np.arange(9, dtype=np.int32), sampler)
    with pytest.raises(ValueError, match="history is over a vocabulary of 0"):   # never prefilled
        engine.step(1, sampler)
    other = core.Sampler(0)
    other.sample(np.zeros(VOCAB + 1, np.float32))              # a history over another vocabulary
    with pytest.raises(ValueError, match=f"vocabulary of {VOCAB + 1} tokens, this model's has {VOCAB}"):
        engine.step(1, other)
    assert engine.position == 0
    tok = engine.prefill(np.arange(7, dtype=np.int32), sampler)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.step(2**32 + 1, sampler)                        # would wrap onto id 1
    tok = engine.step(tok, sampler)                            # fills the context
    with pytest.raises(ValueError, match="1 tokens at position 8 go past the context of 8"):
        engine.step(tok, sampler)
    assert engine.position == 8


def test_truncate_reuses_a_cached_prefix():
    ids = prompt(20, seed=3)
    engine = make_engine("gqa_untied")
    full = engine.forward(ids, logits="all")
    engine.truncate(8)
    assert engine.position == 8
    again = engine.forward(ids[8:], logits="all")
    np.testing.assert_allclose(again, full[8:], rtol=0, atol=1e-6 * np.abs(full).max())
    engine.reset()
    assert engine.position == 0
    np.testing.assert_allclose(engine.forward(ids[:5], logits="all"), full[:5], rtol=0,
                               atol=1e-6 * np.abs(full).max())
    with pytest.raises(ValueError, match="truncate\\(6\\): only 5"):
        engine.truncate(6)


@pytest.mark.parametrize("model,fmt", [("llama3_scaled", f) for f in ("f32", "bf16", "int4", "ternary")]
                         + [("odd_sizes", f) for f in ("f32", "bf16", "ternary")])  # 72 columns: no int4 group
def test_weights_move_into_the_engine_and_come_back_with_matrix(model, fmt):
    # odd_sizes: q/k/v rows 30/10/10 and ffn 100, so the fused parts start inside 16-row tiles
    _, mc, arrays = hf_and_arrays(model)
    tensors = engine_tensors(arrays, fmt)
    expected = {k: v.dequantize() for k, v in tensors.items() if hasattr(v, "dequantize")}
    engine = core.Transformer(mc.to_dict(), tensors, 32, 1)
    assert tensors["layers.0.q"].shape == (0, 0)              # storage moved, not copied
    for name in ("embed", "lm_head", "layers.0.q", "layers.0.k", "layers.0.v", "layers.1.gate",
                 "layers.1.up", "layers.1.o", "layers.1.down"):
        back = engine.matrix(name)
        assert back.shape == arrays[name].shape
        np.testing.assert_array_equal(back.dequantize(), expected[name])
        if fmt == "f32":
            np.testing.assert_array_equal(back.dequantize(), arrays[name])
    with pytest.raises(KeyError):
        engine.matrix("layers.2.q")
    with pytest.raises(ValueError, match="already moved"):
        core.Transformer(mc.to_dict(), tensors, 32, 1)


def test_memory_bytes_counts_weights_kv_cache_and_scratch():
    _, mc, arrays = hf_and_arrays("gqa_untied")
    tensors = engine_tensors(arrays, "f32")
    weight_bytes = sum(t.nbytes for t in tensors.values())
    small = core.Transformer(mc.to_dict(), engine_tensors(arrays, "f32"), 64, 1).memory_bytes
    big = core.Transformer(mc.to_dict(), tensors, 1064, 1).memory_bytes
    kv_per_token = 2 * mc.num_layers * mc.num_kv_heads * mc.head_dim * 4
    assert small > weight_bytes
    assert big - small >= 1000 * kv_per_token


@pytest.mark.parametrize("fmt,tol", [("bf16", 1e-5), ("int4", 1e-1)])
def test_quantized_formats_match_forward_of_their_dequantized_weights(fmt, tol):
    """bf16 (f32 activations): the numpy f32 forward of the dequantized weights, to float
    rounding. int4 also quantizes activations to int8 per block of 32 (cpp/formats/int4.h), which
    the stated tolerance covers."""
    _, mc, arrays = hf_and_arrays("gqa_untied")
    tensors = engine_tensors(arrays, fmt)
    ref_w = {n: (t.dequantize() if a.ndim == 2 else a) for (n, a), t in zip(arrays.items(), tensors.values())}
    ids = prompt(40, seed=4)
    want = numpy_reference.forward(mc, ref_w, ids)
    got = core.Transformer(mc.to_dict(), tensors, 64, None).forward(ids, logits="all")
    err = rel_err(got, want)
    print(f"{fmt}: engine vs numpy forward of dequantized weights {err:.2e}")
    assert err < tol


def test_ternary_engine_matches_numpy_bitnet_reference():
    """Ternary weights (absmean) and int8 activations in every linear, vs the independent
    numpy forward of tests/numpy_reference.py (exact integer sums there)."""
    import numpy_reference
    _, mc, arrays = hf_and_arrays("bitnet_untied")
    ref_w = {}
    for name, a in arrays.items():
        if a.ndim == 2 and name not in ("embed", "lm_head"):
            s_w = np.float32(1) / max(np.float32(np.abs(a).mean(dtype=np.float32)), np.float32(1e-5))
            t = np.clip(np.round(a * s_w), -1, 1).astype(np.int8)
            ref_w[name] = ("ternary", t, np.full(a.shape[0], np.float32(1) / s_w, np.float32))
        else:
            ref_w[name] = a
    ids = prompt(30, seed=5)
    want = numpy_reference.forward(mc, ref_w, ids)
    fmts = {n: "ternary" for n, a in arrays.items() if a.ndim == 2 and n not in ("embed", "lm_head")}
    engine = core.Transformer(mc.to_dict(), engine_tensors(arrays, "f32", fmts), 64, None)
    got = engine.forward(ids, logits="all")
    err = rel_err(got, want)
    print(f"ternary engine vs numpy reference: {err:.2e}")
    assert err < 2e-3   # f32 rounding can flip an int8 activation rounding in a later layer


@pytest.mark.parametrize("target", core.supported_targets())
@pytest.mark.parametrize("name", ["odd_sizes", "llama3_scaled", "bitnet_untied"])
def test_every_highway_target_matches_transformers(target, name):
    """The vector ops (RMSNorm, RoPE, attention, activations) and f32 matmuls forced to
    each compiled target this CPU supports (EMU128 is the portable scalar fallback)."""
    model, _, _ = hf_and_arrays(name)
    ids = prompt(70, seed=6)
    core.set_target(target)
    try:
        engine = make_engine(name)
        got = engine.forward(ids[:67], logits="all")
        got = np.concatenate([got] + [engine.forward(ids[i:i + 1])[None] for i in range(67, 70)])
    finally:
        core.reset_target()
    err = rel_err(got, hf_all_logits(model, ids.tolist()))
    print(f"{name} on {target}: {err:.2e}")
    assert err < 1e-4
