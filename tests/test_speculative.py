"""Speculative decoding by prompt lookup (python/ternlm/speculative.py, Transformer::Batch
verify entries, Sampler::SampleDraft): greedy text identical to plain decoding (the
synthetic BitNet is ternary: integer sums, so a verify row's logits are a decode row's),
under concurrency too, with max_new_tokens and stop strings ending inside an accepted
draft; sampled tokens distributed as plain sampling's (statistical test); the index."""

import numpy as np
import pytest

import ternlm
from concurrency import run_threads
from ternlm.speculative import Lookup, LookupDrafter
from ternlm.synthetic import write_synthetic_bitnet

PROMPTS = [[5, 6, 7, 8] * 6, [7] * 40, list(range(30, 60)) * 2, [1, 2, 3], [9, 10, 11, 9, 10, 11, 12]]
SPECS = ["lookup", Lookup(draft=4, ngram=2, min_ngram=1), Lookup(draft=16, ngram=3, min_ngram=3)]


@pytest.fixture(scope="module")
def m(tmp_path_factory):
    path = write_synthetic_bitnet(tmp_path_factory.mktemp("spec") / "m", "tiny", seed=4)
    return ternlm.load(path, progress=False, context=256, threads=2, max_sequences=4)


@pytest.mark.parametrize("penalty", [1.0, 2.0])
def test_greedy_identical_to_plain(m, penalty):
    accepted = drafted = 0
    for prompt in PROMPTS:
        plain = m.generate(prompt, max_new_tokens=60, repetition_penalty=penalty)
        assert m.stats["drafted_tokens"] == 0
        for spec in SPECS:
            assert m.generate(prompt, max_new_tokens=60, repetition_penalty=penalty, speculative=spec) == plain
            assert m.stats["decode_tokens"] == 60 and m.stats["stop_reason"] == "max_new_tokens"
            assert 0 <= m.stats["accepted_tokens"] <= m.stats["drafted_tokens"]
            accepted += m.stats["accepted_tokens"]
            drafted += m.stats["drafted_tokens"]
    assert accepted > 100           # lookup hits on these repeating prompts
    if penalty != 1.0:
        assert drafted > accepted   # and drafts get rejected (the penalty changes the text)


@pytest.mark.parametrize("max_new", [1, 2, 5, 9, 13])
def test_max_new_tokens_inside_a_draft(m, max_new):
    for prompt in PROMPTS[:3]:
        plain = m.generate(prompt, max_new_tokens=max_new)
        spec = m.generate(prompt, max_new_tokens=max_new, speculative=Lookup(draft=16, ngram=2, min_ngram=1))
        assert spec == plain
        assert m.stats["decode_tokens"] == max_new


def test_stop_string_inside_a_draft(m):
    prompt = PROMPTS[0]
    full = m.generate(prompt, max_new_tokens=40)
    for cut in (3, 7, 20):
        stop = full[cut:cut + 2]
        plain = m.generate(prompt, max_new_tokens=40, stop=[stop])
        pieces = list(m.stream(prompt, max_new_tokens=40, stop=[stop], speculative="lookup"))
        assert "".join(pieces) == plain and m.stats["stop_reason"] == "stop"
        assert m.generate(prompt, max_new_tokens=40, stop=[stop], speculative="lookup") == plain


def test_context_end_inside_a_draft(tmp_path):
    path = write_synthetic_bitnet(tmp_path / "m", "tiny", seed=4)
    small = ternlm.load(path, progress=False, context=40, threads=1, max_sequences=2)
    plain = small.generate(PROMPTS[0], max_new_tokens=100)
    assert small.stats["stop_reason"] == "context"
    assert small.generate(PROMPTS[0], max_new_tokens=100, speculative="lookup") == plain
    assert small.stats["stop_reason"] == "context" and small.stats["accepted_tokens"] > 0


def test_concurrent_speculative_and_plain(m):
    """Verifying sequences (1 + k rows) and plain ones (1 row) in the same steps, from
    several threads: each text is its solo text."""
    want = [m.generate(p, max_new_tokens=40, repetition_penalty=2.0) for p in PROMPTS]

    def run(i):
        return m.generate(PROMPTS[i % len(PROMPTS)], max_new_tokens=40, repetition_penalty=2.0,
                          speculative=SPECS[i % 3] if i % 2 == 0 else None)

    assert run_threads([lambda i=i: run(i) for i in range(8)]) == [want[i % len(PROMPTS)] for i in range(8)]
    assert m.generate(PROMPTS[:3], max_new_tokens=30, speculative="lookup") == \
        [m.generate(p, max_new_tokens=30) for p in PROMPTS[:3]]


def test_session_reuse(m):
    with m.session() as s:
        a = s.generate(PROMPTS[0], max_new_tokens=30, speculative="lookup")
        b = s.generate(PROMPTS[0] + [5, 6], max_new_tokens=30, speculative="lookup")
    assert a == m.generate(PROMPTS[0], max_new_tokens=30)
    assert b == m.generate(PROMPTS[0] + [5, 6], max_new_tokens=30)


def _before_last_token(m, prompt, temperature, seed):
    """Slot 0 holds prompt[:-1]; a fresh seeded sampler whose penalty history is the prompt."""
    from ternlm._native import core
    sampler = core.Sampler(seed, temperature, 0, 1.0, 0.0, 1.0)
    sampler.set_history(prompt, m.config.vocab_size)
    m._engine.truncate(0, slot=0)
    m._engine.batch([(0, np.asarray(prompt[:-1], np.int32), None, False)])
    return sampler


def _verify_draws(m, prompt, draft, temperature, seeds):
    """First two tokens after prompt from verify entries [last, *draft] (one per seed)."""
    eng, out = m._engine, []
    for seed in seeds:
        sampler = _before_last_token(m, prompt, temperature, seed)
        got = eng.batch([(0, np.asarray([prompt[-1]] + draft, np.int32), sampler, True, len(draft))])[0]
        assert isinstance(got, list) and 1 <= len(got) <= len(draft) + 1
        assert eng.position_of(0) == len(prompt) + len(got) - 1   # rejected rows left the cache
        if len(got) == 1:   # the first draft was rejected: one more plain step for the second token
            got.append(eng.batch([(0, got[0], sampler, True)])[0])
        out.append(tuple(got[:2]))
    return out


def _plain_draws(m, prompt, temperature, seeds):
    eng, out = m._engine, []
    for seed in seeds:
        sampler = _before_last_token(m, prompt, temperature, seed)
        t1 = eng.batch([(0, np.asarray(prompt[-1:], np.int32), sampler, False)])[0]
        t2 = eng.batch([(0, t1, sampler, True)])[0]
        out.append((t1, t2))
    return out


def test_sampling_distribution_unchanged(m):
    """Speculative sampling keeps plain sampling's distribution: the first token against its
    exact softmax (chi-square), the pair of the first two against plain sampling's (total
    variation within sampling noise). Drafts: the most likely token (often accepted) and an
    unlikely one (mostly rejected: the rejection draw must renormalise without it)."""
    prompt, temperature, n = PROMPTS[0], 20.0, 3000
    logits = m.logits(prompt)[-1].astype(np.float64) / temperature
    p = np.exp(logits - logits.max())
    p /= p.sum()
    order = np.argsort(-p)
    plain = _plain_draws(m, prompt, temperature, range(n))
    for draft in ([int(order[0]), int(order[1])], [int(order[40]), int(order[0])]):
        spec = _verify_draws(m, prompt, draft, temperature, range(10_000, 10_000 + n))
        first = np.bincount([t for t, _ in spec], minlength=len(p))
        keep = p * n >= 5   # chi-square over the ids expected 5+ times, the rest pooled
        obs = np.append(first[keep], first[~keep].sum())
        exp = np.append(p[keep] * n, p[~keep].sum() * n)
        chi2 = float(((obs - exp) ** 2 / np.maximum(exp, 1e-9)).sum())
        dof = len(obs) - 1
        assert chi2 < dof + 5 * np.sqrt(2 * dof), (draft, chi2, dof)   # ~5 sigma
        # pairs: TV between two empirical distributions of n draws each; with independent
        # samples of the same law, E[TV] <= sum sqrt(q (1-q) / n) over the cells
        keys = sorted(set(plain) | set(spec))
        a = np.array([plain.count(k) for k in keys]) / n
        b = np.array([spec.count(k) for k in keys]) / n
        tv = 0.5 * np.abs(a - b).sum()
        noise = np.sqrt((a + b) / 2 * 2 / n).sum() * 0.5
        assert tv < 1.5 * noise + 0.02, (draft, tv, noise)


def test_lookup_index():
    d = LookupDrafter(Lookup(draft=3, ngram=2, min_ngram=1), [1, 2, 3, 4, 1, 2])
    d.rate = 0.99                      # drafts do well: full length
    assert d.draft(10) == [3, 4, 1]    # "1 2" was followed by 3 4 1
    assert d.draft(2) == [3, 4]
    d.push(9)                          # "2 9" never seen, "9" never seen: no draft
    assert d.draft(10) == []
    d.push(1)                          # "9 1" unseen; "1" last followed by 2 (position 5)
    assert d.draft(10) == [2, 9, 1]


def test_draft_length_follows_acceptance():
    d = LookupDrafter(Lookup(draft=8, ngram=1, min_ngram=1), list(range(20)) + [0])   # "0": 1, 2, ..
    assert len(d.draft(16)) == 2       # a new sequence starts with 2 (RATE_START)
    for _ in range(20):
        d.verified(8, 8)
    assert len(d.draft(16)) == 8       # kept whole again and again: the full length
    assert len(d.draft(3)) == 3        # never past the scheduler's limit
    for _ in range(6):
        d.verified(1, 0)
    drafts = [len(d.draft(16)) for _ in range(40)]
    assert sum(drafts) == 2 and set(drafts) == {0, 1}   # rejected outright: only a probe now and then
    for _ in range(10):
        d.verified(1, 1)               # the probes are kept: drafting resumes
    assert len(d.draft(16)) >= 4


def test_bad_options(m):
    with pytest.raises(ValueError, match="speculative must be"):
        m.generate([1, 2], max_new_tokens=2, speculative="medusa")
    with pytest.raises(ValueError, match="draft must be in"):
        Lookup(draft=0)
    with pytest.raises(ValueError, match="min_ngram"):
        Lookup(ngram=2, min_ngram=3)
    with pytest.raises(TypeError, match="draft must be an int"):
        Lookup(draft=2.5)
    from ternlm._native import core
    s = core.Sampler(0, 0.0, 0, 1.0, 0.0, 1.0)
    s.set_history([1], m.config.vocab_size)
    with pytest.raises(ValueError, match="verify entry"):
        m._engine.batch([(1, np.asarray([1] * 18, np.int32), s, True, 17)])
    with pytest.raises(ValueError, match="decode entry"):
        m._engine.batch([(1, np.asarray([1, 2, 3], np.int32), s, True, 1)])


def test_cli_flags(tmp_path, capsys):
    from ternlm import cli
    path = write_synthetic_bitnet(tmp_path / "m", "tiny", seed=4)
    base = ["generate", "--model", path, "-p", "abcabcabcabc", "--max-new-tokens", "24", "--threads", "1",
            "--no-chat-template"]
    assert cli.main(base) == 0
    plain = capsys.readouterr().out
    assert cli.main(base + ["--speculative", "lookup", "--draft", "4", "--ngram", "2"]) == 0
    got = capsys.readouterr()
    assert got.out == plain and "drafts accepted" in got.err
    assert cli.main(base + ["--speculative", "lookup", "--draft", "40"]) == 2
    assert "draft must be in [1, 16], got 40" in capsys.readouterr().err


def test_rejected_probes_back_off():
    """Probes that keep failing come ever more rarely (PROBE_EVERY doubling up to PROBE_MAX);
    one kept draft brings the interval back."""
    from ternlm.speculative import PROBE_EVERY, PROBE_MAX
    d = LookupDrafter(Lookup(draft=8, ngram=1, min_ngram=1), list(range(20)) + [0])
    for _ in range(10):
        d.verified(1, 0)               # rate far below WORTH: probes only

    def steps_to_next_probe():
        for i in range(1, 10 * PROBE_MAX):
            if d.draft(16):
                return i
        raise AssertionError("no probe")

    gaps = []
    for _ in range(7):
        gaps.append(steps_to_next_probe())
        d.verified(1, 0)               # the probe is rejected
    assert gaps[:2] == [PROBE_EVERY, 2 * PROBE_EVERY]
    assert gaps[-1] == PROBE_MAX and max(gaps) == PROBE_MAX
    d.verified(1, 1)                   # a probe is kept: back to the first interval
    assert steps_to_next_probe() == PROBE_EVERY


def test_phase_timers_only_in_their_build(m):
    """Normal builds compile the phase timers out (phase_times() is None); a
    -DTERNLM_PHASE_TIMERS=ON build (benchmarks/decode_phases.py) counts each phase of a step."""
    from ternlm._native import core
    core.reset_phase_times()
    m.generate([1, 2, 3, 1, 2, 3], max_new_tokens=4, speculative="lookup")
    p = core.phase_times()
    if p is None:
        return
    seconds, calls = p["phases"]["head"]
    assert calls >= 1 and seconds > 0   # the prompt's, then one per step (a verify may yield several tokens)
    for name in ("qkv", "attention", "o", "gate_up", "down", "sample", "row_work"):
        assert p["phases"][name][1] > 0, name
    assert p["pool_runs"] > 0 and 1 <= len(p["task_s"]) <= 2   # threads=2
