"""Hugging Face folder -> Checkpoint: config.json dialects, tensor names, BitNet packed
weights unpacked exactly as transformers does, the three weight_scale conventions, and clear
errors. Most of these tests need no C++ engine."""
import json
import os
import shutil

import numpy as np
import pytest

import ternlm
from conftest import BITNET_LINEARS, absmean_ternary, hf_reference

from ternlm.io.hf import config_from_hf, load_hf_folder, pack_bitnet_weight, read_ternary, unpack_bitnet_weight
from ternlm.io.safetensors import SafetensorsFolder

TINYLLAMA = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
             "hidden_size": 2048, "intermediate_size": 5632, "max_position_embeddings": 2048,
             "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 22,
             "num_key_value_heads": 4, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
             "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32000}
LLAMA32_1B = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
              "head_dim": 64, "hidden_size": 2048, "intermediate_size": 8192, "max_position_embeddings": 131072,
              "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
              "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"},
              "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256, "model_type": "llama"}
BITNET_2B4T = {"architectures": ["BitNetForCausalLM"], "bos_token_id": 128000, "eos_token_id": 128001,
               "hidden_act": "relu2", "hidden_size": 2560, "intermediate_size": 6912,
               "max_position_embeddings": 4096, "model_type": "bitnet", "rms_norm_eps": 1e-05,
               "num_attention_heads": 20, "num_hidden_layers": 30, "num_key_value_heads": 5,
               "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256,
               "quantization_config": {"linear_class": "autobitlinear", "quant_method": "bitnet",
                                       "quantization_mode": "offline"}}


def test_config_tinyllama():
    c, quant = config_from_hf(TINYLLAMA)
    assert quant is None
    assert (c.arch, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == ("llama", 22, 32, 4, 64)
    assert c.rope_scaling is None and c.rope_theta == 10000.0 and not c.tie_word_embeddings
    assert c.bos_token_id == 1 and c.eos_token_ids == [2] and c.hidden_act == "silu"


def test_config_llama32_old_and_new_rope_dialects():
    c, _ = config_from_hf(LLAMA32_1B, {"eos_token_id": [128001, 128009, 7]})
    assert c.rope_scaling == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert c.rope_theta == 500000.0 and c.tie_word_embeddings and c.eos_token_ids == [128001, 128008, 128009, 7]
    new = {k: v for k, v in LLAMA32_1B.items() if k not in ("rope_scaling", "rope_theta")}
    new["rope_parameters"] = {**LLAMA32_1B["rope_scaling"], "rope_theta": 500000.0}
    c2, _ = config_from_hf(new)
    assert (c2.rope_scaling, c2.rope_theta) == (c.rope_scaling, c.rope_theta)


def test_config_bitnet_2b4t():
    c, quant = config_from_hf(BITNET_2B4T)
    assert (c.arch, c.hidden_act, c.num_kv_heads, c.head_dim, c.rope_theta) == ("bitnet", "relu2", 5, 128, 500000.0)
    assert quant["linear_class"] == "autobitlinear" and quant["quantization_mode"] == "offline"


@pytest.mark.parametrize("change, message", [
    ({"architectures": ["GemmaForCausalLM"], "model_type": "gemma"}, "GemmaForCausalLM.*not supported"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 4.0}}, "llama3.*lacks low_freq_factor"),
    ({"hidden_size": None}, "missing required field 'hidden_size'"),
    ({"num_key_value_heads": 5}, "not a multiple"),
    ({"attention_bias": "yes"}, "bias"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quant_method 'gptq'"),
])
def test_config_errors_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf({**TINYLLAMA, **change}, where="x/config.json")


def test_unpack_matches_transformers_unpack_weights():
    import torch
    from transformers.integrations.bitnet import pack_weights, unpack_weights
    rng = np.random.default_rng(0)
    for rows in (8, 64, 40):
        t = rng.integers(-1, 2, (rows, 24)).astype(np.int8)
        packed_ref = pack_weights(torch.from_numpy(t.copy()).to(torch.int8)).numpy()
        packed = pack_bitnet_weight(t)
        np.testing.assert_array_equal(packed, packed_ref)
        ref = unpack_weights(torch.from_numpy(packed), dtype=torch.float32).numpy()
        np.testing.assert_array_equal(unpack_bitnet_weight(packed, rows), ref.astype(np.int8))
    # rows not a multiple of 4: our packer pads, the unpacker trims
    t = rng.integers(-1, 2, (10, 8)).astype(np.int8)
    np.testing.assert_array_equal(unpack_bitnet_weight(pack_bitnet_weight(t), 10), t)


def test_unpack_rejects_bad_codes_and_shapes():
    bad = np.full((2, 4), 0xFF, np.uint8)
    with pytest.raises(ValueError, match="code 3"):
        unpack_bitnet_weight(bad, 8, "w")
    with pytest.raises(ValueError, match="cannot hold 12 rows"):
        unpack_bitnet_weight(np.zeros((2, 4), np.uint8), 12, "w")


def numpy_bitnet_linear(x, t, row_multiplier):
    """cpp/kernels/activations.h: q = clamp(round(x * s_x)), y = (q . T^T) / s_x * row_multiplier, f32."""
    x = x.astype(np.float32)
    s_x = np.float32(127.0) / np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-5))
    q = np.clip(np.round(x * s_x), -128, 127).astype(np.int32)
    acc = q @ t.astype(np.int32).T                       # exact int32 sums
    return (acc.astype(np.float32) / s_x) * row_multiplier


@pytest.mark.parametrize("variant", ["bitlinear", "autobitlinear_offline"])
def test_weight_scale_conventions_match_transformers_layer(bitnet_folders, variant):
    """Each packed convention, read by our loader and run through the numpy formula, gives
    what transformers' own BitLinear / AutoBitLinear module computes for the same input."""
    import torch
    folder = bitnet_folders[variant]
    ckpt = load_hf_folder(folder)
    quant = json.load(open(os.path.join(folder, "config.json")))["quantization_config"]
    st = SafetensorsFolder(folder)
    model = hf_reference(folder)
    rng = np.random.default_rng(1)
    for proj, rows, cols in (("q_proj", 64, 64), ("down_proj", 64, 128), ("up_proj", 128, 64)):
        sub = "self_attn" if proj == "q_proj" else "mlp"
        key = f"model.layers.1.{sub}.{proj}.weight"
        t, mult = read_ternary(st, key, key + "_scale", rows, cols, quant, key)
        x = (rng.standard_normal((5, cols)) * 2).astype(np.float32)
        ours = numpy_bitnet_linear(x, t, mult)
        module = getattr(getattr(model.model.layers[1], sub), proj)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max())
    assert ckpt.stored["layers.0.q"] == "ternary" and ckpt.stored.get("embed") in ("bf16", "f32")


def test_online_master_weights_are_ternary_after_absmean(bitnet_folders):
    ckpt = load_hf_folder(bitnet_folders["autobitlinear_online"])
    assert ckpt.stored["layers.0.gate"] == "ternary"
    w = ckpt.tensors["layers.0.gate"]
    assert w.dtype == np.float32 and w.shape == (128, 64)
    t, s_w = absmean_ternary(w)
    assert set(np.unique(t)) <= {-1, 0, 1} and 1 < s_w < 1e5


def test_llama_checkpoint_names_shapes_and_formats(llama_folders):
    ck = load_hf_folder(llama_folders["gqa_f32"])
    assert set(ck.tensors) == set(ck.config.tensor_names()) and "lm_head" in ck.tensors
    assert ck.tensors["layers.1.k"].shape == (32, 64) and ck.stored["layers.1.k"] == "f32"
    ck = load_hf_folder(llama_folders["tied_bf16"])
    assert "lm_head" not in ck.tensors and ck.stored["embed"] == "bf16"
    assert ck.tensors["norm"].dtype == np.float32
    ck = load_hf_folder(llama_folders["llama3_sharded"])
    assert ck.config.head_dim == 32 and ck.tensors["layers.0.q"].shape == (128, 64)
    assert ck.config.rope_scaling["rope_type"] == "llama3"
    assert set(ck.tokenizer.eos_token_ids) <= set(ck.config.eos_token_ids)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_missing_tensor_is_named(llama_folders, tmp_path):
    from ternlm.io.safetensors import SafetensorsFile, save_safetensors
    d = _copy(llama_folders["gqa_f32"], tmp_path / "m")
    st = SafetensorsFile(os.path.join(d, "model.safetensors"))
    kept = {k: np.array(st.raw(k)) for k in st.keys() if k != "model.layers.1.mlp.up_proj.weight"}
    del st
    save_safetensors(os.path.join(d, "model.safetensors"), kept)
    with pytest.raises(ValueError, match=r"'model.layers.1.mlp.up_proj.weight' \(ternlm 'layers.1.up'\) is missing"):
        load_hf_folder(d)


def test_wrong_shape_and_unknown_arch_are_named(llama_folders, tmp_path):
    d = _copy(llama_folders["gqa_f32"], tmp_path / "m")
    cfg = json.load(open(os.path.join(d, "config.json")))
    json.dump({**cfg, "intermediate_size": 96}, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ValueError, match=r"gate_proj.weight'.*\[160, 64\].*expected \[96, 64\]"):
        load_hf_folder(d)
    json.dump({**cfg, "architectures": ["GPT2LMHeadModel"]}, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        load_hf_folder(d)


def test_packed_weight_without_quantization_config(bitnet_folders, tmp_path):
    d = _copy(bitnet_folders["bitlinear"], tmp_path / "b")
    cfg = json.load(open(os.path.join(d, "config.json")))
    del cfg["quantization_config"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ValueError, match="uint8 \\(packed\\).*no BitNet quantization_config"):
        load_hf_folder(d)


def test_missing_weight_scale_is_named(bitnet_folders, tmp_path):
    from ternlm.io.safetensors import SafetensorsFile, save_safetensors
    d = _copy(bitnet_folders["bitlinear"], tmp_path / "b")
    st = SafetensorsFile(os.path.join(d, "model.safetensors"))
    kept = {k: (("BF16", np.array(st.raw(k))) if st.info(k).dtype == "BF16" else np.array(st.raw(k)))
            for k in st.keys() if k != "model.layers.0.mlp.down_proj.weight_scale"}
    del st
    save_safetensors(os.path.join(d, "model.safetensors"), kept)
    with pytest.raises(ValueError, match="down_proj.weight_scale' is missing"):
        load_hf_folder(d)


def test_all_bitnet_linears_are_ternary(bitnet_folders):
    ck = load_hf_folder(bitnet_folders["bitlinear"])
    names = [n for n in ck.config.tensor_names() if n.rsplit(".", 1)[-1] in ("q", "k", "v", "o", "gate", "up", "down")]
    assert len(names) == 2 * len(BITNET_LINEARS)
    assert all(ck.stored[n] == "ternary" for n in names) and ck.stored["lm_head"] in ("bf16", "f32")


@pytest.mark.parametrize("variant", ["bitlinear", "autobitlinear_offline"])
def test_loaded_ternary_matrix_matches_transformers_layer(bitnet_folders, variant):
    """The QuantizedMatrix the loader builds (from_ternary + row multiplier), multiplied by
    ternlm's kernel, equals transformers' BitLinear / AutoBitLinear on the same input."""
    import torch

    import ternlm
    folder = bitnet_folders[variant]
    ckpt = load_hf_folder(folder)
    model = hf_reference(folder)
    rng = np.random.default_rng(2)
    worst = 0.0
    for name, sub, proj in (("layers.0.k", "self_attn", "k_proj"), ("layers.1.down", "mlp", "down_proj"),
                            ("layers.1.gate", "mlp", "gate_proj")):
        q = ckpt.tensors[name]
        assert q.format == "ternary"
        x = (rng.standard_normal((7, q.shape[1])) * 3).astype(np.float32)
        ours = ternlm.matmul(x, q)
        with torch.no_grad():
            ref = getattr(getattr(model.model.layers[int(name.split(".")[1])], sub), proj)(torch.from_numpy(x)).numpy()
        worst = max(worst, float(np.abs(ours - ref).max() / np.abs(ref).max()))
    print(f"{variant}: max |ternlm - transformers| / max|y| = {worst:.2e}")
    assert worst < 1e-5


def test_bf16_tensors_become_bf16_matrices_from_their_bits(llama_folders):
    # A BF16 checkpoint tensor reaches the bf16 format straight from its bits (no float32
    # copy); np.asarray still gives the exact float32 values.
    from ternlm.io.hf import BF16Tensor
    from ternlm.loading import convert_checkpoint
    ck = load_hf_folder(llama_folders["tied_bf16"])
    embed = ck.tensors["embed"]
    assert isinstance(embed, BF16Tensor) and embed.shape == (ck.config.vocab_size, ck.config.hidden_size)
    as_f32 = np.asarray(embed)
    assert as_f32.dtype == np.float32
    formats = {n: "bf16" for n in ck.config.tensor_names() if n in ck.stored}
    formats["layers.0.q"] = "int4"                           # a BF16 tensor to another format
    out = convert_checkpoint(ck, formats, progress=False)
    np.testing.assert_array_equal(out["embed"].dequantize(), as_f32)
    np.testing.assert_array_equal(out["layers.0.q"].dequantize(),
                                  ternlm.quantize(np.asarray(ck.tensors["layers.0.q"]), "int4").dequantize())
