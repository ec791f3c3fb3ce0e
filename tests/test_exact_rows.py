"""A token's logits are the same bit for bit however they are computed: in a decode step
(one row), in a speculative verify step (9 or 17 rows of one sequence), in a prefill chunk
(up to 64 rows), at 1, 2 or 4 threads. Attention computes each query over fixed parts of
its positions folded in order (cpp/model/transformer_attention.cc), at every thread count
and row count, and every matmul gives a row the same sums whatever rows run beside it. So
greedy speculative decoding gives plain decoding's text on float-head models too, with
prompts long enough that a decode step's attention is split over the threads."""
import dataclasses

import numpy as np
import pytest

import ternlm
from engine_models import build_hf, canonical_arrays, engine_tensors
from ternlm._native import core
from ternlm.speculative import Lookup, LookupDrafter
from ternlm.synthetic import write_synthetic_bitnet

CONTEXT = 4096     # attention parts of 1024 positions (AttentionPartLength)
PROMPT = 2100      # queries after it see 3 parts
NEW = 26           # = 9 + 17: one verify step of 8 drafts, one of 16
THREADS = (1, 2, 4)

# (transformers model, layer format, per-tensor formats, config changes)
CASES = {
    "f32": ("gqa_untied", "f32", {}, {}),
    "bf16": ("gqa_untied", "bf16", {}, {}),
    "bf16c": ("gqa_untied", "bf16c", {}, {}),
    "int4_f32_head": ("gqa_untied", "int4", {"lm_head": "f32"}, {}),      # the default model's layout
    "int8": ("gqa_untied", "int8", {}, {}),
    "q6": ("mha_tied", "q6", {}, {}),
    "ternary_bf16_head": ("bitnet_untied", "ternary", {"lm_head": "bf16"}, {}),
    "window_f32": ("gqa_untied", "f32", {}, {"sliding_window": 300}),  # window edges inside parts
    "int4_act4": ("gqa_untied", "int4", {"lm_head": "f32"}, {"activation_bits": 4}),
}
_MODELS = {}


def engine(case, threads):
    name, fmt, formats, changes = CASES[case]
    if name not in _MODELS:
        model, mc = build_hf(name, seed=7)
        _MODELS[name] = (mc, canonical_arrays(model, mc))
    mc, arrays = _MODELS[name]
    mc = dataclasses.replace(mc, **changes)
    return core.Transformer(mc.to_dict(), engine_tensors(arrays, fmt, formats), CONTEXT, threads)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_identical_in_decode_verify_prefill_and_threads(case):
    ids = np.random.default_rng(3).integers(3, 90, PROMPT + NEW)
    ref = None
    for threads in THREADS:
        t = engine(case, threads)
        t.forward(ids[:PROMPT])
        decode = np.stack([t.forward(ids[i:i + 1]) for i in range(PROMPT, PROMPT + NEW)])
        t.reset(0)
        t.forward(ids[:PROMPT])
        verify = np.concatenate([t.forward(ids[PROMPT:PROMPT + 9], logits="all"),
                                 t.forward(ids[PROMPT + 9:PROMPT + NEW], logits="all")])
        t.reset(0)
        prefill = t.forward(ids, logits="all")[PROMPT:]
        if ref is None:
            ref = decode
            assert np.isfinite(ref).all() and np.ptp(ref, axis=1).min() > 0
        for what, got in (("decode", decode), ("verify", verify), ("prefill", prefill)):
            np.testing.assert_array_equal(got, ref, err_msg=f"{case}: {what} at {threads} threads")


@pytest.fixture(scope="module")
def spec_folder(tmp_path_factory):
    return write_synthetic_bitnet(tmp_path_factory.mktemp("exact") / "m", "tiny", seed=11)


def long_prompt(n, seed):
    """n tokens of a 60-token phrase repeated with a few changes."""
    rng = np.random.default_rng(seed)
    ids = np.resize(rng.integers(10, 1000, 60), n)
    ids[rng.integers(0, n, n // 30)] = rng.integers(10, 1000, n // 30)
    return [int(i) for i in ids]


class Drafts:
    """LookupDrafter's draft / push / verified wrapped: mode "lookup" drafts as it is;
    "none" never drafts (every step a plain decode row) while push records the tokens;
    "oracle" drafts those recorded tokens, up to 8, with every third draft's last token
    wrong: verify steps of 9 rows that keep all 8 drafts, and steps that reject one."""

    def __init__(self, monkeypatch):
        self.mode, self.pushed, self.plain, self.drafted, self.calls = "lookup", [], [], [], 0
        draft, push, verified = LookupDrafter.draft, LookupDrafter.push, LookupDrafter.verified
        monkeypatch.setattr(LookupDrafter, "draft", lambda d, limit: self.draft(d, limit, draft))
        monkeypatch.setattr(LookupDrafter, "push", lambda d, t: (self.pushed.append(t), push(d, t))[1])
        monkeypatch.setattr(LookupDrafter, "verified", lambda d, k, a: (self.drafted.append(k), verified(d, k, a))[1])

    def draft(self, drafter, limit, lookup):
        if self.mode == "lookup":
            return lookup(drafter, limit)
        if self.mode == "none":
            return []
        seq, self.calls = drafter.tokens, self.calls + 1
        out = list(self.plain[len(seq):len(seq) + min(limit, 8)])
        if out and self.calls % 3 == 0:
            out[-1] = (out[-1] + 1) % 1000 + 10
        return out


@pytest.mark.parametrize("weights,head", [("int4", "f32"), ("bf16", "bf16"), (None, None)])
def test_greedy_speculative_text_is_plain_text_at_every_thread_count(spec_folder, weights, head, monkeypatch):
    drafts = Drafts(monkeypatch)
    texts = {}
    for threads in THREADS:
        m = ternlm.load(spec_folder, weights=weights, head=head, context=CONTEXT, threads=threads,
                        max_sequences=2, progress=False)
        for seed, n in ((1, 1300), (2, 2200)):
            prompt = long_prompt(n, seed)
            plain = m.generate(prompt, max_new_tokens=80)
            where = f"{weights}/{head} at {threads} threads, prompt of {n}"
            drafts.mode = "lookup"
            assert m.generate(prompt, max_new_tokens=80, speculative="lookup") == plain, where
            drafts.mode, drafts.pushed = "none", []
            assert m.generate(prompt, max_new_tokens=80, speculative="lookup") == plain, where
            drafts.mode, drafts.plain, drafts.drafted = "oracle", drafts.pushed, []
            assert m.generate(prompt, max_new_tokens=80, speculative="lookup") == plain, where
            assert max(drafts.drafted) == 8 and m.stats["accepted_tokens"] >= 40, where
            assert m.stats["decode_tokens"] == 80
            texts.setdefault(seed, set()).add(plain)
    assert all(len(v) == 1 for v in texts.values())  # and the same text at 1, 2 and 4 threads
