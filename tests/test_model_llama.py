"""Llama checkpoints as stored (f32, bf16; GQA, tied, llama3 rope, sharded): ternlm's C++
forward against transformers' float32 forward, greedy continuations, and KV-cache decode
against a full re-forward."""
import numpy as np
import pytest
from conftest import LLAMA_VARIANTS, hf_logits, hf_reference, incremental_logits

import ternlm

REL_TOL = 1e-4      # docs/ARCHITECTURE.md, Numerics: f32 math (bf16 weights are exact in f32); max|diff| / max|logit|


@pytest.fixture(scope="module", params=list(LLAMA_VARIANTS))
def loaded(request, llama_folders):
    folder = llama_folders[request.param]
    return folder, ternlm.load(folder, context=128, threads=2, progress=False)


def _ids(n, vocab, seed):
    return np.random.default_rng(seed).integers(3, vocab, n).tolist()


def test_logits_match_transformers_float32(loaded):
    folder, m = loaded
    ids = _ids(40, m.config.vocab_size, 0)
    ours, ref = m.logits(ids), hf_logits(folder, ids)
    assert ours.shape == ref.shape == (40, m.config.vocab_size) and ours.dtype == np.float32
    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
    print(f"{folder}: max |ours - transformers| / max|logit| = {rel:.2e}")
    assert rel < REL_TOL


def test_greedy_32_tokens_identical(loaded):
    import torch
    folder, m = loaded
    prompt = "The quick brown fox"
    ids = m.tokenizer.encode(prompt)
    with torch.no_grad():
        # explicit attention mask: the fixture's BOS id is 0, which generate() would
        # otherwise take for padding (pad_token_id) and mask out
        out = hf_reference(folder).generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                            max_new_tokens=32, do_sample=False,
                                            pad_token_id=m.eos_token_ids[0])[0, len(ids):].tolist()
    eos = set(m.eos_token_ids)
    new_tokens = out[:-1] if out and out[-1] in eos else out    # transformers keeps the EOS
    text = m.generate(prompt, max_new_tokens=32)
    assert len(new_tokens) >= 16, "the random model stopped too early for the test to mean much"
    assert m.stats["decode_tokens"] == len(new_tokens)
    assert text == m.tokenizer.decode(new_tokens)


def test_kv_cache_decode_equals_full_forward(loaded):
    _, m = loaded
    ids = _ids(30, m.config.vocab_size, 1)
    full = m.logits(ids)
    inc = incremental_logits(m, ids)
    assert m._engine.position == 30
    rel = float(np.abs(inc - full).max() / np.abs(full).max())
    print(f"KV-cache decode vs full forward: {rel:.2e}")
    assert rel < 1e-5
