"""The Model API on a tiny Llama: generate / stream / chat / stop strings / EOS / context
limits / argument errors / perplexity / stats."""
import math

import numpy as np
import pytest
from conftest import hf_reference

import ternlm

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def folder(llama_folders):
    return llama_folders["gqa_f32"]


@pytest.fixture(scope="module")
def m(folder):
    return ternlm.load(folder, context=64, threads=2, progress=False)


@pytest.fixture(scope="module")
def greedy(m):
    return m.generate(PROMPT, max_new_tokens=24)


def test_stream_pieces_join_to_generate(m, greedy):
    pieces = list(m.stream(PROMPT, max_new_tokens=24))
    assert "".join(pieces) == greedy and len(pieces) > 3
    assert m.stats["decode_tokens"] == 24 and m.stats["stop_reason"] == "max_new_tokens"


def test_stop_string_truncates_and_is_never_streamed(m, greedy):
    stop = greedy[10:13]
    assert len(stop) == 3
    cut = greedy.find(stop)
    assert m.generate(PROMPT, max_new_tokens=24, stop=stop) == greedy[:cut]
    assert m.stats["stop_reason"] == "stop"
    pieces = list(m.stream(PROMPT, max_new_tokens=24, stop=["never-there", stop]))
    assert "".join(pieces) == greedy[:cut]     # nothing of the stop string was ever yielded


@pytest.mark.filterwarnings("ignore:the model ended this raw prompt at once")   # the chat() hint: expected here
def test_eos_stops_generation(m, greedy):
    first = m.tokenizer.encode(PROMPT)
    nxt = int(np.argmax(m.logits(first)[-1]))
    saved = m.eos_token_ids
    m.eos_token_ids = [nxt]
    try:
        assert m.generate(PROMPT, max_new_tokens=10) == ""
        assert m.stats["stop_reason"] == "eos" and m.stats["decode_tokens"] == 0
    finally:
        m.eos_token_ids = saved


def test_seeded_sampling_is_reproducible(m):
    a = m.generate(PROMPT, max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.95, seed=7)
    b = m.generate(PROMPT, max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.95, seed=7)
    c = [m.generate(PROMPT, max_new_tokens=16, temperature=1.5, seed=s) for s in range(4)]
    assert a == b and len(set(c)) > 1


def test_repetition_penalty_changes_greedy(m, greedy):
    assert m.generate(PROMPT, max_new_tokens=24, repetition_penalty=1.0) == greedy
    assert m.generate(PROMPT, max_new_tokens=24, repetition_penalty=5.0) != greedy


def test_prompt_longer_than_context(m):
    ids = list(range(3, 3 + 70))
    with pytest.raises(ValueError, match="prompt is 70 tokens but context is 64"):
        m.generate(ids)


def test_generation_stops_when_context_is_full(m):
    ids = list(range(3, 3 + 60))
    m.generate(ids, max_new_tokens=50)
    assert m.stats["decode_tokens"] == 4 and m.stats["stop_reason"] == "context"


def test_empty_prompt_starts_from_bos(m):
    out = m.generate("", max_new_tokens=4)
    assert m.stats["prompt_tokens"] == 1 and isinstance(out, str)
    saved = m.bos_token_id
    m.bos_token_id = None
    try:
        with pytest.raises(ValueError, match="empty prompt"):
            m.generate([])          # (the fixture's tokenizer adds BOS even to "")
    finally:
        m.bos_token_id = saved


@pytest.mark.parametrize("kwargs, name", [
    ({"temperature": -0.5}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_k": -1}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"min_p": -0.1}, "min_p"), ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"max_new_tokens": -3}, "max_new_tokens"), ({"seed": -1}, "seed"), ({"stop": ""}, "stop"),
])
def test_invalid_sampling_values(m, kwargs, name):
    with pytest.raises(ValueError, match=name):
        m.generate(PROMPT, **kwargs)


def test_token_ids_outside_vocab(m):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.logits([1, m.config.vocab_size])


def test_chat_uses_template_like_transformers(m, folder):
    from transformers import AutoTokenizer
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    ref = AutoTokenizer.from_pretrained(folder).apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    ref_ids = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
    reply = m.chat(msgs, max_new_tokens=8)
    assert m.stats["prompt_tokens"] == len(ref_ids)
    assert reply == m.generate(list(ref_ids), max_new_tokens=8)
    assert "".join(m.chat(msgs, max_new_tokens=8, stream=True)) == reply


def test_perplexity_matches_transformers_loss(m, folder):
    import torch
    text = "The quick brown fox jumps over the lazy dog. Hello world!"
    ids = m.tokenizer.encode(text)
    with torch.no_grad():
        loss = hf_reference(folder)(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert m.perplexity(text) == pytest.approx(math.exp(loss), rel=1e-4)
    # sliding windows: disjoint chunks lose context, overlapping ones recover some of it
    w_disjoint = m.perplexity(text, window=8)
    w_overlap = m.perplexity(text, window=8, stride=2)
    assert math.isfinite(w_disjoint) and math.isfinite(w_overlap) and w_disjoint != w_overlap
    with pytest.raises(ValueError, match="window"):
        m.perplexity(text, window=1000)


def test_stats_fields(m):
    m.generate(PROMPT, max_new_tokens=5)
    s = m.stats
    assert s["prompt_tokens"] == len(m.tokenizer.encode(PROMPT)) and s["decode_tokens"] == 5
    assert s["prompt_tok_s"] > 0 and s["decode_tok_s"] > 0 and s["peak_rss_mb"] > 10


def test_f16_kv_cache_option(folder, m, greedy):
    """load(kv_dtype="f16"): the same API with a half-precision KV cache; on this tiny model
    its logits stay within the f16 rounding of keys and values of the f32 cache's."""
    h = ternlm.load(folder, context=64, threads=2, progress=False, kv_dtype="f16")
    assert h.kv_dtype == "f16" and m.kv_dtype == "f32"
    assert "kv_dtype=f16" in repr(h) and "kv_dtype" not in repr(m)
    ids = list(range(3, 43))
    a, b = m.logits(ids), h.logits(ids)
    err = float(np.abs(a - b).max() / np.abs(a).max())
    assert 0 < err < 5e-3
    assert isinstance(h.generate(PROMPT, max_new_tokens=8), str)
    with pytest.raises(ValueError, match="kv_dtype must be 'f32' or 'f16', got 'int8'"):
        ternlm.load(folder, context=64, progress=False, kv_dtype="int8")


@pytest.mark.parametrize("kwargs, name", [
    ({"temperature": 1e300}, "temperature"), ({"top_p": 1e-50}, "top_p"),
    ({"repetition_penalty": 1e-50}, "repetition_penalty"), ({"temperature": "0.5"}, "temperature"),
])
def test_sampling_values_are_checked_as_the_sampler_sees_them(m, kwargs, name):
    """Values that float32 (the C++ sampler's type) turns into an invalid one are refused by
    the Model's own check, when stream() is called, not later by the engine."""
    with pytest.raises(ValueError, match=name):
        m.stream(PROMPT, **kwargs)
