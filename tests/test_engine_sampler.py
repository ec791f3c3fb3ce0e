"""_core.Sampler against transformers' own logits processors (repetition penalty,
temperature, top-k, top-p, min-p) and its promises: greedy = argmax, reproducible seeds."""
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from ternlm._native import core


def logits_of(n, seed):
    return (np.random.default_rng(seed).standard_normal(n) * 2).astype(np.float32)


def transformers_probs(logits, temperature, top_k, top_p, min_p, penalty, recent):
    """The distribution transformers' generate(do_sample=True) draws from."""
    scores = torch.tensor(logits)[None].clone()
    ids = torch.tensor([list(recent)], dtype=torch.long) if len(recent) else None
    if penalty != 1.0 and ids is not None:
        scores = RepetitionPenaltyLogitsProcessor(penalty)(ids, scores)
    dummy = torch.zeros((1, 1), dtype=torch.long)
    scores = TemperatureLogitsWarper(temperature)(dummy, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(dummy, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(dummy, scores)
    if min_p > 0.0:
        scores = MinPLogitsWarper(min_p)(dummy, scores)
    return torch.softmax(scores.double(), -1)[0].numpy()


def numpy_repetition_penalty(logits, penalty, recent):
    out = logits.copy()
    for t in set(int(i) for i in recent):
        out[t] = out[t] * penalty if out[t] < 0 else out[t] / penalty
    return out


def test_temperature_zero_is_argmax():
    s = core.Sampler(1)
    for seed in range(20):
        lg = logits_of(1000, seed)
        assert s.sample(lg, 0.0) == int(np.argmax(lg))


def test_top_k_one_is_greedy_at_any_temperature():
    s = core.Sampler(2)
    for seed in range(20):
        lg = logits_of(500, seed)
        assert s.sample(lg, temperature=1.5, top_k=1) == int(np.argmax(lg))


def test_same_seed_same_tokens_other_seed_other_tokens():
    lg = logits_of(50, 3)
    draw = lambda seed: [core.Sampler(seed).sample(lg, 1.0) for _ in range(1)] + \
        (lambda s: [s.sample(lg, 1.0, top_p=0.9) for _ in range(200)])(core.Sampler(seed))
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_numpy(penalty):
    s = core.Sampler(0)
    for seed in range(30):
        lg = logits_of(64, seed)
        recent = np.random.default_rng(seed).integers(0, 64, 12).astype(np.int32)   # with repeats
        want = int(np.argmax(numpy_repetition_penalty(lg, penalty, recent)))
        assert s.sample(lg, 0.0, repetition_penalty=penalty, recent_tokens=recent) == want


@pytest.mark.parametrize("temperature,top_k,top_p,min_p,penalty", [
    (1.0, 0, 1.0, 0.0, 1.0),
    (0.7, 5, 1.0, 0.0, 1.0),
    (1.3, 0, 0.8, 0.0, 1.0),
    (1.0, 0, 1.0, 0.15, 1.0),
    (0.9, 6, 0.9, 0.05, 1.4),
])
def test_sampled_frequencies_follow_transformers_warpers(temperature, top_k, top_p, min_p, penalty):
    lg = logits_of(12, 11)
    recent = np.array([0, 3, 3, 7], np.int32)
    want = transformers_probs(lg, temperature, top_k, top_p, min_p, penalty, recent)
    s = core.Sampler(123)
    n = 20000
    counts = np.bincount([s.sample(lg, temperature, top_k, top_p, min_p, penalty, recent) for _ in range(n)],
                         minlength=len(lg))
    freq = counts / n
    assert np.all(counts[want == 0] == 0), "a token transformers filters out was drawn"
    # 5 standard deviations of a binomial frequency
    assert np.all(np.abs(freq - want) <= 5 * np.sqrt(want * (1 - want) / n) + 1e-9)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(min_p=1.1), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(recent_tokens=np.array([3, 99], np.int32)), "recent token id 99|token id 99"),
])
def test_bad_sampling_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        core.Sampler(0).sample(logits_of(10, 0), **kwargs)


def test_bad_logits_and_seed_raise():
    with pytest.raises(ValueError, match="logits"):
        core.Sampler(0).sample(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="logits"):
        core.Sampler(0).sample(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="seed"):
        core.Sampler(-1)
    assert 0 <= core.Sampler().sample(logits_of(10, 0), 1.0) < 10      # seed=None: fresh seed


@pytest.mark.parametrize("top_p,min_p,top_k", [(0.5, 0.0, 0), (0.9, 0.0, 0), (0.7, 0.01, 0), (0.8, 0.0, 900)])
def test_large_vocab_filters_follow_transformers(top_p, min_p, top_k):
    """Vocabulary of 5000: the top-p cut lies beyond the first partially sorted block
    (64 ids), so the block-growing path runs."""
    lg = (np.random.default_rng(21).standard_normal(5000) * 1.5).astype(np.float32)
    want = transformers_probs(lg, 1.0, top_k, top_p, min_p, 1.0, [])
    assert (want > 0).sum() > 64
    s = core.Sampler(9)
    n = 30000
    drawn = np.array([s.sample(lg, 1.0, top_k, top_p, min_p) for _ in range(n)])
    assert np.all(want[drawn] > 0), "a token transformers filters out was drawn"
    freq = np.bincount(drawn, minlength=len(lg)) / n
    assert np.all(np.abs(freq - want) <= 5 * np.sqrt(want * (1 - want) / n) + 1e-9)


def test_constructor_holds_validated_parameters():
    """A Sampler built with parameters (the generation path: Transformer.prefill / step use
    them) checks them once, as sample() does."""
    for kwargs, match in [(dict(temperature=-1.0), "temperature"), (dict(top_k=-2), "top_k"),
                          (dict(top_p=0.0), "top_p"), (dict(min_p=2.0), "min_p"),
                          (dict(repetition_penalty=float("inf")), "repetition_penalty")]:
        with pytest.raises(ValueError, match=match):
            core.Sampler(0, **kwargs)
    with pytest.raises(ValueError, match="seed"):
        core.Sampler(-1, temperature=1.0)


def test_history_ids_are_checked_against_the_logits():
    with pytest.raises(ValueError, match="token id -1 at index 0"):
        core.Sampler(0).sample(logits_of(10, 0), recent_tokens=np.array([-1], np.int64))
    with pytest.raises(ValueError, match="token id 2147483647"):     # saturated, not wrapped onto 1
        core.Sampler(0).sample(logits_of(10, 0), recent_tokens=np.array([2**32 + 1], np.int64))
