"""config.json of the Qwen2, Qwen3, Mistral and BitNet-quantized Llama releases ->
ModelConfig (io/hf_config.py), and the configurations ternlm refuses, each with an error
naming the file and field. Needs no C++ engine beyond the schema."""
import json
import shutil

import pytest
from arch_checkpoints import write_arch

from ternlm import schema
from ternlm.io.hf import config_from_hf, load_hf_folder

# The published config.json files (fields ternlm reads and their neighbours).
QWEN25_05B = {"architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151645,
              "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864, "max_position_embeddings": 32768,
              "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
              "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
              "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_sliding_window": False,
              "vocab_size": 151936}
QWEN3_06B = {"architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "bos_token_id": 151643,
             "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
             "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28,
             "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
             "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
             "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_sliding_window": False,
             "vocab_size": 151936}
MISTRAL_7B = {"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
              "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768,
              "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
              "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
              "torch_dtype": "bfloat16", "vocab_size": 32000}
# HF1BitLLM/Llama3-8B-1.58-100B-tokens: Llama 3 8B blocks, BitNetQuantConfig's defaults
LLAMA3_8B_158 = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 128000, "eos_token_id": 128001,
                 "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
                 "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 32,
                 "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
                 "tie_word_embeddings": False, "vocab_size": 128256,
                 "quantization_config": {"modules_to_not_convert": None, "quant_method": "bitnet"}}


def test_qwen25_qwen3_mistral_and_llama_bitnet_configs():
    q2, quant = config_from_hf(QWEN25_05B)
    assert (q2.arch, q2.attention_bias, q2.qk_norm, q2.sliding_window, q2.head_dim) == ("llama", True, False, 0, 64)
    assert q2.tie_word_embeddings and q2.rope_theta == 1e6 and quant is None
    names = {s.kind for s in schema.specs(q2) if s.layer == 0}
    assert {"q_bias", "k_bias", "v_bias"} <= names and not {"q_norm", "o_bias"} & names
    q3, _ = config_from_hf(QWEN3_06B)
    assert (q3.attention_bias, q3.qk_norm, q3.head_dim, q3.sliding_window) == (False, True, 128, 0)
    shapes = {s.kind: s.shape for s in schema.specs(q3) if s.layer == 0}
    assert shapes["q_norm"] == shapes["k_norm"] == (128,) and shapes["q"] == (2048, 1024)
    mi, _ = config_from_hf(MISTRAL_7B)
    assert (mi.sliding_window, mi.attention_bias, mi.qk_norm, mi.num_kv_heads) == (4096, False, False, 8)
    ll, quant = config_from_hf(LLAMA3_8B_158)
    assert quant["linear_class"] == "bitlinear" and quant["quantization_mode"] == "offline"
    assert not ll.linear_norm and not quant["use_rms_norm"]
    ll, quant = config_from_hf({**LLAMA3_8B_158, "quantization_config": {
        "quant_method": "bitnet", "linear_class": "autobitlinear", "use_rms_norm": True, "rms_norm_eps": 1e-5}})
    assert ll.linear_norm and ll.linear_norm_eps == 1e-5
    kinds = [s.kind for s in schema.specs(ll) if s.layer == 0]
    assert [k for k in kinds if k.endswith("_in_norm")] == [f"{p}_in_norm" for p in
                                                            ("q", "k", "v", "o", "gate", "up", "down")]


def test_qwen_sliding_window_per_layer():
    """transformers' Qwen2Config: the window only with use_sliding_window; layer_types, when
    absent, slides the layers from max_window_layers on."""
    cfg = {**QWEN25_05B, "use_sliding_window": True, "sliding_window": 4096}
    c = config_from_hf(cfg, where="x/config.json")[0]          # layers 21..23 slide, 0..20 do not
    assert c.sliding_window == 4096 and c.full_attention_layers == list(range(21))
    c = config_from_hf({**cfg, "max_window_layers": 0})[0]
    assert c.sliding_window == 4096 and c.full_attention_layers == []
    assert config_from_hf({**cfg, "max_window_layers": 24})[0].sliding_window == 0
    assert config_from_hf({**cfg, "layer_types": ["full_attention"] * 24})[0].sliding_window == 0
    assert config_from_hf(QWEN25_05B)[0].sliding_window == 0   # sliding_window set, use_sliding_window false
    types = ["sliding_attention", "full_attention"] * 14
    c = config_from_hf({**QWEN3_06B, "use_sliding_window": True, "sliding_window": 512, "layer_types": types})[0]
    assert c.sliding_window == 512 and c.full_attention_layers == list(range(1, 28, 2))


def test_attention_and_mlp_biases_per_class():
    """attention_bias: q/k/v and o biases on Llama / Qwen3 / BitNet; Qwen2 has q/k/v
    biases whatever it says; mlp_bias: Llama only (the other classes' MLPs have none)."""
    q3 = config_from_hf({**QWEN3_06B, "attention_bias": True})[0]
    assert (q3.attention_bias, q3.o_bias, q3.mlp_bias) == (True, True, False)
    ll = config_from_hf({**LLAMA3_8B_158, "attention_bias": True, "mlp_bias": True})[0]
    assert (ll.attention_bias, ll.o_bias, ll.mlp_bias) == (True, True, True)
    q2 = config_from_hf({**QWEN25_05B, "attention_bias": True, "mlp_bias": True})[0]
    assert (q2.attention_bias, q2.o_bias, q2.mlp_bias) == (True, False, False)
    mi = config_from_hf({**MISTRAL_7B, "attention_bias": True})[0]
    assert (mi.attention_bias, mi.o_bias) == (False, False)


@pytest.mark.parametrize("base, change, message", [
    (QWEN3_06B, {"layer_types": ["sliding_attention"] * 28},
     r"layer_types marks sliding_attention layers, but there is no window \(use_sliding_window is false"),
    (QWEN3_06B, {"layer_types": ["full_attention"] * 3}, r"layer_types must list 28 entries"),
    (QWEN3_06B, {"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 2,
                 "num_hidden_layers": 10**9},
     r"num_hidden_layers = 1000000000 with sliding windows from max_window_layers: more than 65536 layers"),
    (MISTRAL_7B, {"sliding_window": 0}, r"sliding_window must be an integer"),
    (MISTRAL_7B, {"hidden_act": "gelu"}, r"hidden_act 'gelu' is not supported for MistralForCausalLM"),
    (LLAMA3_8B_158, {"mlp_bias": "yes"}, r"mlp_bias must be true or false"),
    (LLAMA3_8B_158, {"quantization_config": {"quant_method": "bitnet", "use_rms_norm": "yes"}},
     r"quantization_config.use_rms_norm must be true or false"),
    (LLAMA3_8B_158, {"quantization_config": {"quant_method": "bitnet", "use_rms_norm": True, "rms_norm_eps": None}},
     r"quantization_config.rms_norm_eps must be a finite number > 0"),
    (LLAMA3_8B_158, {"quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear2"}},
     r"quantization_config.linear_class 'bitlinear2' is unknown"),
    (LLAMA3_8B_158, {"quantization_config": {"quant_method": "bitnet", "quantization_mode": "qat"}},
     r"quantization_config.quantization_mode 'qat' is unknown"),
])
def test_refused_configs_name_the_field(base, change, message):
    with pytest.raises(ValueError, match=r"x/config.json: " + message):
        config_from_hf({**base, **change}, where="x/config.json")


def _edited_copy(src, dst, edit):
    shutil.copytree(src, dst)
    path = dst / "config.json"
    cfg = json.load(open(path))
    edit(cfg)
    json.dump(cfg, open(path, "w"))
    return dst


def test_packed_weight_of_an_unconverted_layer_linear_is_refused(tmp_path):
    """modules_to_not_convert naming a linear whose weight the file holds packed: transformers
    would build a float nn.Linear for it; ternlm names the tensor."""
    src = write_arch(tmp_path / "src", "llama", {"linear_class": "autobitlinear", "quantization_mode": "offline",
                                                 "use_rms_norm": True})
    d = _edited_copy(src, tmp_path / "m", lambda c: c[
        "quantization_config"].update(modules_to_not_convert=["lm_head", "model.layers.1.mlp.down_proj"]))
    with pytest.raises(ValueError, match=r"'model.layers.1.mlp.down_proj.weight': uint8 \(packed\) weight, but "
                                         r"config.json has no BitNet quantization_config covering this module"):
        load_hf_folder(d)


def test_a_bias_the_architecture_lacks_is_refused(tmp_path):
    """Qwen2's q/k/v biases are declared; the same file read as a Llama (no biases) names them."""
    d = _edited_copy(write_arch(tmp_path / "src", "qwen2"), tmp_path / "m",
                     lambda c: c.update(architectures=["LlamaForCausalLM"], model_type="llama"))
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.q_proj.bias': a bias on this linear is not "
                                         r"supported"):
        load_hf_folder(d)


def test_distill_refuses_a_teacher_whose_blocks_the_student_lacks(tmp_path):
    pytest.importorskip("torch")
    from ternlm.distill.api import _read_teacher
    with pytest.raises(ValueError, match=r"student has Llama / BitNet blocks; this model has q/k norms \(Qwen3\)"):
        _read_teacher(write_arch(tmp_path / "q3", "qwen3"))


def test_a_tied_head_that_transformers_would_convert_is_refused(tmp_path):
    d = _edited_copy(write_arch(tmp_path / "src", "qwen2", {"linear_class": "bitlinear"}), tmp_path / "m",
                     lambda c: c["quantization_config"].update(modules_to_not_convert=["model.layers.0.mlp"]))
    with pytest.raises(ValueError, match=r"modules_to_not_convert does not name lm_head, so transformers makes "
                                         r"the output head a BitNet linear, but tie_word_embeddings"):
        load_hf_folder(d)
