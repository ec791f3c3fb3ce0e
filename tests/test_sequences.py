"""Many sequences on one model (python/ternlm/sequences.py, Transformer::Batch): threads,
interleaved streams, abandoned streams, the slot queue, the batch API, seeded sampling
under concurrency, prompt-cache reuse (chat, sessions). Greedy results are compared
exactly with each prompt run alone: the synthetic BitNet is ternary (integer sums), and
attention splits a sequence's positions the same way alone or in a batch."""
import gc
import json
import os
import threading
import time

import numpy as np
import pytest
from concurrency import run_threads
from conftest import CHAT_TEMPLATE

import ternlm
from ternlm.synthetic import write_synthetic_bitnet

PROMPTS = [[5, 6, 7, 8], [1, 2, 3], [9, 10, 11, 12, 13, 14, 15], [100, 200], [300, 301, 302, 303, 304],
           [7] * 40, [11, 22, 33], [500, 400, 300, 200, 100, 50]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The synthetic tiny BitNet, with conftest's chat template added."""
    path = write_synthetic_bitnet(tmp_path_factory.mktemp("seq") / "m", "tiny", seed=4)
    cfg_path = os.path.join(path, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["chat_template"] = CHAT_TEMPLATE
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    return path


def load(folder, **kw):
    kw.setdefault("context", 256)
    kw.setdefault("threads", 2)
    return ternlm.load(folder, progress=False, **kw)


@pytest.fixture(scope="module")
def m(folder):
    return load(folder, max_sequences=4)


@pytest.fixture(scope="module")
def solo(folder):
    """Each prompt's greedy continuation from a model that never runs two at once."""
    alone = load(folder, max_sequences=1)
    return [alone.generate(p, max_new_tokens=24) for p in PROMPTS]


def wait_idle(m, timeout=10):
    deadline = time.monotonic() + timeout
    while m.active_sequences and time.monotonic() < deadline:
        time.sleep(0.01)
    return m.active_sequences


def test_introspection(m, folder):
    assert m.max_sequences == 4 and m.active_sequences == 0
    assert load(folder).max_sequences == 8                  # the default, when it fits
    with pytest.raises(ValueError, match="max_sequences"):
        load(folder, max_sequences=0)
    with pytest.raises(ValueError, match="max_sequences"):
        load(folder, max_sequences=65)


def test_threads_generate_what_each_generates_alone(m, solo):
    for _ in range(2):
        got = run_threads([lambda p=p: m.generate(p, max_new_tokens=24) for p in PROMPTS])
        assert got == solo
    assert wait_idle(m) == 0


def test_long_sequences_split_attention_as_alone(folder):
    """Past 256 cached positions a decoding sequence's attention is split over the threads
    (transformer_attention.cc); beside short ones in a batch it is split the same way."""
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 250, size=n).tolist() for n in (300, 280, 5, 70)]
    alone = load(folder, context=512, max_sequences=1)
    want = [alone.generate(p, max_new_tokens=20) for p in prompts]
    m = load(folder, context=512, max_sequences=4)
    assert run_threads([lambda p=p: m.generate(p, max_new_tokens=20) for p in prompts]) == want
    assert m.generate(prompts, max_new_tokens=20) == want


def test_interleaved_streams(m, solo):
    streams = [m.stream(p, max_new_tokens=24) for p in PROMPTS[:4]]
    texts = [""] * 4
    live = set(range(4))
    while live:                                 # one piece of each in turn
        for i in sorted(live):
            try:
                texts[i] += next(streams[i])
            except StopIteration:
                live.discard(i)
    assert texts == solo[:4]
    assert wait_idle(m) == 0


def test_batch_api_equals_solo_and_queues_beyond_the_slots(m, solo):
    assert m.generate(PROMPTS, max_new_tokens=24) == solo  # 8 prompts on 4 slots
    assert m.generate([PROMPTS[1]], max_new_tokens=24) == [solo[1]]
    assert m.active_sequences == 0


def test_abandoned_streams_free_their_slot(m):
    s = m.stream(PROMPTS[0], max_new_tokens=200)
    next(s)
    assert m.active_sequences == 1
    s.close()                                   # closed half-way
    assert m.active_sequences == 0
    s = m.stream(PROMPTS[1], max_new_tokens=200)
    next(s)
    del s                                       # dropped: garbage-collected
    gc.collect()
    assert m.active_sequences == 0
    never = m.stream(PROMPTS[2], max_new_tokens=200)  # never started: takes no slot
    assert m.active_sequences == 0
    del never
    kept = m.stream(PROMPTS[3], max_new_tokens=20)    # started, then not read: runs to its end
    first = next(kept)
    assert wait_idle(m) == 0
    assert first + "".join(kept) == m.generate(PROMPTS[3], max_new_tokens=20)


def test_requests_beyond_the_slots_wait_or_time_out(folder, solo):
    m1 = load(folder, max_sequences=1)
    s = m1.session()
    assert m1.active_sequences == 1
    t0 = time.monotonic()
    with pytest.raises(ternlm.SequencesBusyError, match="max_sequences=1"):
        m1.session(timeout=0.2)
    assert time.monotonic() - t0 >= 0.2
    with pytest.raises(ternlm.SequencesBusyError, match="max_sequences=1"):
        m1.generate(PROMPTS[0], max_new_tokens=4, timeout=0.1)
    with pytest.raises(ternlm.SequencesBusyError):
        m1.generate([PROMPTS[0]], max_new_tokens=4, timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        m1.generate(PROMPTS[0], timeout=-1)
    got = []
    waiter = threading.Thread(target=lambda: got.append(m1.generate(PROMPTS[0], max_new_tokens=24)))
    waiter.start()
    time.sleep(0.3)
    assert not got                              # queued behind the session
    s.close()
    waiter.join(60)
    assert got == [solo[0]]


def test_seeded_sampling_is_reproducible_under_concurrency(m):
    kw = dict(max_new_tokens=24, temperature=0.9, top_k=50, repetition_penalty=1.2)
    want = [m.generate(p, seed=i, **kw) for i, p in enumerate(PROMPTS)]
    assert run_threads([lambda i=i, p=p: m.generate(p, seed=i, **kw) for i, p in enumerate(PROMPTS)]) == want
    assert m.generate(PROMPTS, seed=3, **kw) == [m.generate(p, seed=3, **kw) for p in PROMPTS]


def test_stop_strings_and_max_new_tokens_per_request(m, solo):
    stops = [solo[i][5:8] for i in range(4)]
    fns = [lambda i=i: m.generate(PROMPTS[i], max_new_tokens=24, stop=stops[i]) for i in range(4)]
    fns += [lambda i=i: m.generate(PROMPTS[i], max_new_tokens=3 + i) for i in range(4, 8)]
    got = run_threads(fns)
    assert got[:4] == [solo[i][:solo[i].find(stops[i])] for i in range(4)]
    for i in range(4, 8):
        assert got[i] == m.generate(PROMPTS[i], max_new_tokens=3 + i)


def test_logits_and_perplexity_from_threads(m):
    ids = list(range(1, 90))
    want = m.logits(ids)
    ppl = m.perplexity(ids, window=32, progress=False)
    got = run_threads([lambda: m.logits(ids), lambda: m.perplexity(ids, window=32, progress=False),
                       lambda: m.generate(PROMPTS[0], max_new_tokens=24), lambda: m.logits(ids)])
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(got[3], want)
    assert got[1] == ppl


def test_chat_reuses_the_previous_turn(folder):
    m = load(folder, max_sequences=2)
    fresh = load(folder, max_sequences=2)
    conv = [{"role": "user", "content": "Hello there"}]
    a1 = m.chat(conv, max_new_tokens=12)
    first = dict(m.stats)
    assert first["cached_tokens"] == 0 and first["prefill_tokens"] == first["prompt_tokens"]
    conv += [{"role": "assistant", "content": a1}, {"role": "user", "content": "And then?"}]
    a2 = m.chat(conv, max_new_tokens=12)
    s = m.stats
    assert s["cached_tokens"] >= first["prompt_tokens"]              # turn 1's prompt at least
    assert s["prefill_tokens"] == s["prompt_tokens"] - s["cached_tokens"] < s["prompt_tokens"] // 2
    assert a2 == fresh.chat(conv, max_new_tokens=12)
    assert fresh.stats["cached_tokens"] == 0
    ids = list(range(3, 40))                    # generate starts afresh: its prefill is all timed
    m.generate(ids, max_new_tokens=2)
    m.generate(ids, max_new_tokens=2)
    assert m.stats["cached_tokens"] == 0 and m.stats["prefill_tokens"] == len(ids)


def test_session_keeps_its_sequence(folder):
    m = load(folder, max_sequences=2)
    fresh = load(folder, max_sequences=1)
    with m.session() as s:
        assert m.active_sequences == 1
        out1 = s.generate(PROMPTS[5], max_new_tokens=10)
        assert s.stats["prefill_tokens"] == len(PROMPTS[5])
        longer = PROMPTS[5] + [3, 4, 5]
        out2 = s.generate(longer, max_new_tokens=10)
        assert s.stats["cached_tokens"] == len(PROMPTS[5]) and s.stats["prefill_tokens"] == 3
        assert out1 == fresh.generate(PROMPTS[5], max_new_tokens=10)
        assert out2 == fresh.generate(longer, max_new_tokens=10)
        other = m.generate(PROMPTS[0], max_new_tokens=5)       # the pool's other slot
        assert other == fresh.generate(PROMPTS[0], max_new_tokens=5)
        st = s.stream(PROMPTS[1], max_new_tokens=5)
        next(st)
        with pytest.raises(RuntimeError, match="already generating"):
            s.generate(PROMPTS[2], max_new_tokens=5)
        st.close()
    assert m.active_sequences == 0
    with pytest.raises(RuntimeError, match="closed"):
        s.generate(PROMPTS[0])


def test_engine_batch_rejects_bad_entries(folder):
    from ternlm._native import core
    m = load(folder, max_sequences=2)
    eng = m._engine
    sampler = core.Sampler(0)
    sampler.set_history(np.asarray([1], np.int32), m.config.vocab_size)
    with pytest.raises(ValueError, match="given twice"):
        eng.batch([(0, 1, sampler, True), (0, 2, sampler, True)])
    with pytest.raises(IndexError, match="slot 5"):
        eng.batch([(5, 1, sampler, True)])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.batch([(0, np.asarray([1, 10**6], np.int32), None, False)])
    with pytest.raises(ValueError, match="more than a chunk"):
        eng.batch([(0, np.zeros(100, np.int32), None, False)])
    assert eng.position_of(0) == 0 and eng.position_of(1) == 0  # nothing was appended
    got = eng.batch([(0, np.asarray([5, 6, 7, 8], np.int32), sampler, False), (1, np.asarray([1, 2], np.int32), None, False)])
    assert isinstance(got[0], int) and got[1] is None
    assert eng.position_of(0) == 4 and eng.position_of(1) == 2


@pytest.mark.filterwarnings("ignore::ternlm.hints.TernlmWarning")   # context beyond max_position_embeddings
def test_the_slots_memory_is_checked_at_load(folder):
    """max_sequences KV caches of `context` tokens must fit in physical memory: more is a
    ValueError naming the bytes; the default takes as many as fit (at most 8). The caches
    are reserved, not committed."""
    with pytest.raises(ValueError, match=r"max_sequences=64 x context=500000 needs .* GB \(\d+ bytes\) for the KV caches"):
        load(folder, context=500_000, max_sequences=64)
    phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    one = [load(folder, context=c, max_sequences=1).memory_bytes for c in (1024, 2048)]
    per_position = (one[1] - one[0]) / 1024             # one slot's cache + RoPE rows + scores
    context = int(phys / 3 / per_position)               # about a third of memory per slot
    m = load(folder, context=context)
    assert 1 <= m.max_sequences < 8
    assert m.generate(PROMPTS[0], max_new_tokens=5) == load(folder, max_sequences=1).generate(PROMPTS[0], max_new_tokens=5)
