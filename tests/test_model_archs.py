"""Qwen2, Qwen3 and Mistral checkpoints, float and BitNet-quantized, and LlamaForCausalLM
with transformers' BitNet quantizer (HF1BitLLM / Falcon3-1.58bit: bitlinear; onebitllms /
Falcon-E: use_rms_norm, with and without the norm weights in the file): ternlm's forward
against transformers' float32 forward, greedy continuations, KV-cache decode, Mistral's
sliding window past its length, and each family's tokenizer and chat template.

Tolerances. Float checkpoints: f32 math against f32 math, max|diff| / max|logit| < 1e-4
(as tests/test_model_llama.py). BitNet checkpoints: every linear rounds its input to int8;
an element within an ulp of a rounding tie may round the other way in one engine
(tests/test_model_bitnet.py measures it), so over several sequences we require every
logit within 2e-2 of max|logit| with >= 95% argmax agreement, and most sequences equal to
1e-5.
"""
import numpy as np
import pytest
from arch_checkpoints import assert_close, random_ids, write_arch
from conftest import hf_logits, hf_reference, incremental_logits

import ternlm

REL_TOL = 1e-4

BITLINEAR = {"linear_class": "bitlinear", "quantization_mode": "offline"}
AUTO_OFFLINE = {"linear_class": "autobitlinear", "quantization_mode": "offline"}
AUTO_ONLINE = {"linear_class": "autobitlinear", "quantization_mode": "online"}
# name -> (family, quantization_config without quant_method or None, rms norm weights written)
VARIANTS = {
    "qwen2": ("qwen2", None, True),
    "qwen3": ("qwen3", None, True),
    "mistral": ("mistral", None, True),
    "qwen2_bitlinear": ("qwen2", BITLINEAR, True),
    "qwen2_autobitlinear": ("qwen2", AUTO_OFFLINE, True),
    "qwen3_bitlinear": ("qwen3", BITLINEAR, True),
    "qwen3_autobitlinear_online": ("qwen3", AUTO_ONLINE, True),
    "mistral_bitlinear": ("mistral", BITLINEAR, True),
    "mistral_autobitlinear": ("mistral", AUTO_OFFLINE, True),
    # HF1BitLLM/Llama3-8B-1.58-100B-tokens, Falcon3-*-1.58bit: {"quant_method": "bitnet"} only
    "llama_bitnet_defaults": ("llama", {"modules_to_not_convert": None}, True),
    # onebitllms / Falcon-E: use_rms_norm
    "llama_autobitlinear_rms_norm": ("llama", {**AUTO_OFFLINE, "use_rms_norm": True, "rms_norm_eps": 1e-5}, True),
    "llama_bitlinear_rms_norm_no_weights": ("llama", {**BITLINEAR, "use_rms_norm": True}, False),
    "qwen2_autobitlinear_online_rms_norm": ("qwen2", {**AUTO_ONLINE, "use_rms_norm": True}, True),
    # modules_to_not_convert given without lm_head: transformers converts the head too
    "mistral_bitlinear_ternary_head": ("mistral", {**BITLINEAR, "modules_to_not_convert": []}, True),
}


@pytest.fixture(scope="session")
def arch_folders(tmp_path_factory):
    out = {}
    for i, (name, (family, quant, rms)) in enumerate(VARIANTS.items()):
        out[name] = write_arch(tmp_path_factory.mktemp(f"arch_{name}"), family, quant, seed=20 + i, rms_weights=rms)
    return out


@pytest.fixture(scope="module", params=list(VARIANTS))
def loaded(request, arch_folders):
    folder = arch_folders[request.param]
    return request.param, folder, ternlm.load(folder, context=256, threads=2, progress=False)


_ids = random_ids
_close = assert_close


def test_config_flags_and_formats(loaded):
    name, _, m = loaded
    family, quant, _ = VARIANTS[name]
    c = m.config
    assert (c.attention_bias, c.qk_norm) == (family == "qwen2", family == "qwen3")
    assert c.sliding_window == (24 if family == "mistral" else 0)
    assert c.linear_norm == bool(quant and quant.get("use_rms_norm"))
    want = "ternary" if quant is not None else "f32"
    kinds = ("q", "k", "v", "o", "gate", "up", "down")
    assert {m.formats[f"layers.{i}.{p}"] for i in range(2) for p in kinds} == {want}
    assert m.formats["embed"] != "ternary"
    if not m.config.tie_word_embeddings:
        assert (m.formats["lm_head"] == "ternary") == name.endswith("_ternary_head")


def test_logits_match_transformers(loaded):
    name, folder, m = loaded
    quantized = VARIANTS[name][1] is not None
    # 70 tokens: more than one 64-token prefill chunk and more than Mistral's window of 24
    n, count = (24, 6) if quantized else (70, 2)
    exact = [_close(m.logits(ids), hf_logits(folder, ids), f"{name} vs transformers", quantized)
             for ids in (_ids(n, m.config.vocab_size, s) for s in range(count))]
    if quantized:
        assert sum(exact) >= count // 2, "most sequences should agree to float rounding"


def test_greedy_32_tokens_identical(loaded):
    import torch
    name, folder, m = loaded
    prompt = "Once upon a time there was"
    ids = m.tokenizer.encode(prompt)
    with torch.no_grad():
        mask = torch.ones(1, len(ids), dtype=torch.long)
        out = hf_reference(folder).generate(torch.tensor([ids]), attention_mask=mask, max_new_tokens=32,
                                            do_sample=False, pad_token_id=m.eos_token_ids[0])[0, len(ids):].tolist()
    eos = set(m.eos_token_ids)
    new_tokens = out[:-1] if out and out[-1] in eos else out
    text = m.generate(prompt, max_new_tokens=32)
    assert len(new_tokens) >= 16, "the random model stopped too early for the test to mean much"
    assert m.stats["decode_tokens"] == len(new_tokens)
    # the same streaming decoder as generate() (byte-fallback pieces that are no valid UTF-8
    # come out of it differently from one decode() of the whole sequence)
    dec = m.tokenizer.stream_decoder()
    assert text == "".join(dec.push(t) for t in new_tokens) + dec.flush()


def test_kv_cache_decode_equals_full_forward(loaded):
    name, _, m = loaded
    ids = _ids(60, m.config.vocab_size, 1)          # decode crosses Mistral's window
    full = m.logits(ids)
    _close(incremental_logits(m, ids), full, f"{name}: KV-cache decode vs full forward", VARIANTS[name][1] is not None)


def test_mistral_window_matters_and_is_exact_past_it(arch_folders):
    """The window changes the logits past position 24 (so the test above means something),
    and ternlm matches transformers there."""
    import torch
    folder = arch_folders["mistral"]
    ids = _ids(70, 400, 5)
    ref = hf_reference(folder)
    with torch.no_grad():
        windowed = ref(torch.tensor([ids])).logits[0].numpy()
        ref.config.sliding_window = None
        try:
            full = ref(torch.tensor([ids])).logits[0].numpy()
        finally:
            ref.config.sliding_window = 24
    np.testing.assert_allclose(windowed[:24], full[:24], rtol=0, atol=1e-4 * np.abs(full).max())
    assert np.abs(windowed[30:] - full[30:]).max() > 1e-2 * np.abs(full).max()
    m = ternlm.load(folder, context=128, threads=2, progress=False)
    assert float(np.abs(m.logits(ids) - windowed).max() / np.abs(windowed).max()) < REL_TOL


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_mistral_window_split_over_threads_in_decode(tmp_path_factory, threads):
    """A window of 300 positions at positions 380..420: decode splits the window's
    positions over threads (Transformer::Attention), each part masked at the window's
    edge; every step's logits equal transformers' full forward."""
    folder = write_arch(tmp_path_factory.mktemp("mistral_long"), "mistral_long", seed=3)
    ids = _ids(420, 400, 6)
    ref = hf_logits(folder, ids)
    m = ternlm.load(folder, context=512, threads=threads, progress=False)
    eng = m._engine
    eng.forward(np.asarray(ids[:380], np.int32), logits="last")
    steps = np.stack([np.asarray(eng.forward(np.asarray([t], np.int32), logits="last")).reshape(-1)
                      for t in ids[380:]])
    rel = float(np.abs(steps - ref[380:]).max() / np.abs(ref).max())
    print(f"threads={threads}: decode past a 300-position window vs transformers {rel:.2e}")
    assert rel < REL_TOL


@pytest.mark.parametrize("name", ["qwen2", "mistral"])
def test_tokenizer_and_chat_template_match_transformers(arch_folders, name):
    from transformers import AutoTokenizer
    folder = arch_folders[name]
    ours = ternlm.load(folder, context=64, threads=1, progress=False).tokenizer
    ref = AutoTokenizer.from_pretrained(folder)
    for text in ("Hello world! How are you today?", "Caf\u00e9 na\u00efve \u65e5\u672c\u8a9e", "  two  spaces"):
        assert ours.encode(text) == ref.encode(text), text
        assert ours.decode(ref.encode(text)) == ref.decode(ref.encode(text), skip_special_tokens=True)
    msgs = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me a story."}]
    for gen in (True, False):
        assert ours.apply_chat_template(msgs, add_generation_prompt=gen) == \
            ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    m = ternlm.load(folder, context=128, threads=1, progress=False)
    assert ref.eos_token_id in m.eos_token_ids
    m.chat([{"role": "user", "content": "Hi"}], max_new_tokens=4)   # the template renders and runs


@pytest.fixture(scope="module")
def mistral_long(tmp_path_factory):
    folder = write_arch(tmp_path_factory.mktemp("mistral_long_targets"), "mistral_long", seed=4)
    ids = _ids(400, 400, 7)
    return folder, ids, hf_logits(folder, ids)


@pytest.mark.parametrize("kv, tol", [("f32", REL_TOL), ("f16", 1e-3)])
def test_window_on_every_highway_target(mistral_long, kv, tol):
    """The sliding-window mask (AttendPartial's skip of the positions left of the window,
    in the f32 and f16 key/value paths) on every compiled Highway target: a 370-token
    prefill (6 chunks, the window's edge inside the chunks' key blocks), then decode steps
    with the window split over 2 threads, against transformers. f16: the cache's rounding
    of keys and values (tests/test_engine.py states that bound)."""
    from ternlm import _core
    folder, ids, ref = mistral_long
    for target in _core.supported_targets():
        _core.set_target(target)
        try:
            m = ternlm.load(folder, context=512, threads=2, progress=False, kv_dtype=kv)
            eng = m._engine
            rows = [np.asarray(eng.forward(np.asarray(ids[:370], np.int32), logits="all")).reshape(370, -1)[-40:]]
            rows += [np.asarray(eng.forward(np.asarray([t], np.int32), logits="last")).reshape(1, -1)
                     for t in ids[370:]]
        finally:
            _core.reset_target()
        got = np.concatenate(rows)
        rel = float(np.abs(got - ref[330:]).max() / np.abs(ref).max())
        print(f"{target} / {kv} KV: {rel:.2e}")
        assert rel < tol, target


@pytest.mark.parametrize("name", ["qwen2_autobitlinear", "qwen3", "llama_autobitlinear_rms_norm"])
def test_save_and_load_keeps_biases_and_norms(arch_folders, tmp_path, name):
    """Model.save writes the new tensors (q/k/v biases, q/k norms, linear input norms) and
    their config flags; the folder loads back to the same logits."""
    m = ternlm.load(arch_folders[name], context=64, threads=2, progress=False)
    ids = _ids(20, m.config.vocab_size, 3)
    want = m.logits(ids)
    m.save(tmp_path / "saved")
    back = ternlm.load(tmp_path / "saved", context=64, threads=2, progress=False)
    assert back.config == m.config
    np.testing.assert_array_equal(back.logits(ids), want)


def test_window_batched_sequences_equal_each_alone(mistral_long):
    """Sequences decoded together in one batch (continuous batching: each segment at its
    own positions, its own window edge and split) generate what each generates alone."""
    folder, ids, _ = mistral_long
    prompts = [ids[:n] for n in (380, 290, 5, 70)]       # past the window of 300, split, short
    alone = ternlm.load(folder, context=512, threads=2, progress=False, max_sequences=1)
    want = [alone.generate(p, max_new_tokens=12) for p in prompts]
    m = ternlm.load(folder, context=512, threads=2, progress=False, max_sequences=4)
    assert m.generate(prompts, max_new_tokens=12) == want
