"""Layouts beside the published defaults of the classes ternlm runs, against transformers'
float32 forward on random weights saved the way real checkpoints are (arch_checkpoints.py):

    attention_bias on Llama / Qwen3 (q, k, v and o biases) and Llama's mlp_bias (gate, up,
        down biases), float and BitNet-quantized (a BitLinear adds its bias after scaling;
        autobitlinear offline scales the biased output)
    Qwen2 / Qwen3 mixing sliding and full attention layers: use_sliding_window with
        max_window_layers (layers from it on slide) and with explicit layer_types
    BitNet use_rms_norm with layer linears in modules_to_not_convert: those stay plain
        nn.Linear (float, no input norm) beside BitLinears that RMS-normalize their input

Tolerances as tests/test_model_archs.py: float checkpoints max|diff| / max|logit| < 1e-4;
BitNet checkpoints (int8 activations, rounding ties) < 2e-2 with >= 95% argmax agreement.
Prompts of 70 tokens: past the windows of 24 / 20 positions and past one 64-token chunk.
"""
import numpy as np
import pytest
from arch_checkpoints import assert_close, random_ids, write_arch
from conftest import hf_logits, hf_reference, incremental_logits

import ternlm

BITLINEAR = {"linear_class": "bitlinear", "quantization_mode": "offline"}
AUTO_OFFLINE = {"linear_class": "autobitlinear", "quantization_mode": "offline"}
AUTO_ONLINE = {"linear_class": "autobitlinear", "quantization_mode": "online"}
PLAIN = ["lm_head", "model.layers.0.self_attn.o_proj", "model.layers.1.mlp.gate_proj"]
# name -> (family, quantization_config without quant_method or None)
VARIANTS = {
    "llama_bias": ("llama_bias", None),
    "llama_bias_bitlinear": ("llama_bias", BITLINEAR),
    "llama_bias_autobitlinear": ("llama_bias", AUTO_OFFLINE),
    "qwen3_bias": ("qwen3_bias", None),
    "qwen3_bias_autobitlinear_online": ("qwen3_bias", AUTO_ONLINE),
    "qwen2_mixed": ("qwen2_mixed", None),
    "qwen2_mixed_bitlinear": ("qwen2_mixed", BITLINEAR),
    "qwen3_layer_types": ("qwen3_layer_types", None),
    "llama_rms_norm_plain": ("llama", {**AUTO_OFFLINE, "use_rms_norm": True, "modules_to_not_convert": PLAIN}),
    "llama_bias_rms_norm_plain": ("llama_bias", {**BITLINEAR, "use_rms_norm": True, "rms_norm_eps": 1e-5,
                                                 "modules_to_not_convert": PLAIN}),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {name: write_arch(tmp_path_factory.mktemp(f"layout_{name}"), fam, quant, seed=60 + i)
            for i, (name, (fam, quant)) in enumerate(VARIANTS.items())}


@pytest.fixture(scope="module", params=list(VARIANTS))
def loaded(request, folders):
    folder = folders[request.param]
    return request.param, folder, ternlm.load(folder, context=128, threads=2, progress=False)


_ids = random_ids
_close = assert_close


def test_config_flags(loaded):
    name, _, m = loaded
    c = m.config
    biased = name.startswith(("llama_bias", "qwen3_bias"))
    assert (c.o_bias, c.mlp_bias) == (biased, name.startswith("llama_bias"))
    assert c.attention_bias == (biased or name.startswith("qwen2"))
    if name.startswith("qwen2_mixed"):
        assert (c.sliding_window, c.full_attention_layers) == (24, [0])
    elif name == "qwen3_layer_types":
        assert (c.sliding_window, c.full_attention_layers) == (20, [1])
    else:
        assert c.sliding_window == 0
    if name.endswith("_plain"):
        assert c.linear_norm and c.plain_linears == ["layers.0.o", "layers.1.gate"]
        assert m.formats["layers.0.o"] != "ternary" and m.formats["layers.1.gate"] != "ternary"
        assert m.formats["layers.1.up"] == m.formats["layers.0.q"] == "ternary"


def test_logits_match_transformers(loaded):
    name, folder, m = loaded
    quantized = VARIANTS[name][1] is not None
    for seed in range(2):
        ids = _ids(70, m.config.vocab_size, seed)
        _close(m.logits(ids), hf_logits(folder, ids), f"{name} vs transformers", quantized)


def test_kv_cache_decode_equals_full_forward(loaded):
    name, _, m = loaded
    ids = _ids(60, m.config.vocab_size, 3)      # decode crosses the windows
    _close(incremental_logits(m, ids), m.logits(ids), f"{name}: decode vs full forward", VARIANTS[name][1] is not None)


def test_mixed_windows_matter(folders):
    """The full layer of qwen2_mixed changes the logits past the window (so the tests above
    mean something): transformers with every layer sliding differs from it."""
    import torch
    folder = folders["qwen2_mixed"]
    ids = _ids(70, 400, 5)
    ref = hf_reference(folder)
    with torch.no_grad():
        mixed = ref(torch.tensor([ids])).logits[0].numpy()
        saved = list(ref.config.layer_types)
        ref.config.layer_types = ["sliding_attention"] * len(saved)
        try:
            all_sliding = ref(torch.tensor([ids])).logits[0].numpy()
        finally:
            ref.config.layer_types = saved
    assert np.abs(mixed[30:] - all_sliding[30:]).max() > 1e-2 * np.abs(mixed).max()


def test_greedy_continuation_identical(folders):
    import torch
    for name in ("llama_bias", "qwen2_mixed"):
        folder = folders[name]
        m = ternlm.load(folder, context=128, threads=2, progress=False)
        prompt = "Once upon a time there was a little"
        ids = m.tokenizer.encode(prompt)
        with torch.no_grad():
            out = hf_reference(folder).generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)).long(),
                                                max_new_tokens=40, do_sample=False,
                                                pad_token_id=m.eos_token_ids[0])[0, len(ids):].tolist()
        eos = set(m.eos_token_ids)
        want = out[:-1] if out and out[-1] in eos else out
        text = m.generate(prompt, max_new_tokens=40)
        assert m.stats["decode_tokens"] == len(want) and len(want) >= 16, name
        dec = m.tokenizer.stream_decoder()
        assert text == "".join(dec.push(t) for t in want) + dec.flush(), name


@pytest.mark.parametrize("name", ["llama_bias_rms_norm_plain", "qwen2_mixed"])
def test_save_and_load_keeps_the_layout(folders, tmp_path, name):
    """A ternlm folder keeps the biases, per-layer windows and plain linears: equal logits."""
    m = ternlm.load(folders[name], context=128, threads=2, progress=False)
    m.save(tmp_path / "saved")
    back = ternlm.load(tmp_path / "saved", context=128, threads=2, progress=False)
    c = back.config
    assert (c.o_bias, c.mlp_bias, c.full_attention_layers, c.plain_linears) == (
        m.config.o_bias, m.config.mlp_bias, m.config.full_attention_layers, m.config.plain_linears)
    ids = _ids(70, c.vocab_size, 9)
    np.testing.assert_array_equal(back.logits(ids), m.logits(ids))
