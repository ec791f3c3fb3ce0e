"""The tensor schema (cpp/model/schema.cc through ternlm.schema): its Hugging Face names and
shapes are those of transformers' own models, its fusion groups are in output-row order,
and the engine's matrix() finds every matrix by it."""
import numpy as np
import pytest
from engine_models import BITNET_VARIANTS, LLAMA_VARIANTS, build_hf, canonical_arrays, engine_tensors

from ternlm import schema
from ternlm._native import core
from ternlm.config import ModelConfig


@pytest.mark.parametrize("variant", list(LLAMA_VARIANTS) + list(BITNET_VARIANTS))
def test_hf_names_and_shapes_are_transformers_state_dict(variant):
    model, mc = build_hf(variant, seed=1)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    specs = schema.specs(mc)
    assert [s.name for s in specs] == mc.tensor_names()
    for s in specs:
        assert state[s.hf_name] == s.shape, s.name
    covered = {s.hf_name for s in specs} | ({"lm_head.weight"} if mc.tie_word_embeddings else set())
    assert covered == set(state)


def test_roles_fusion_and_lookups():
    mc = ModelConfig(arch="bitnet", vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=3,
                     num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True)
    specs = schema.specs(mc)
    by_name = schema.by_name(mc)
    assert "lm_head" not in by_name and by_name["embed"].role == "embedding"
    assert by_name["layers.2.attn_sub_norm"].shape == (32,) and by_name["layers.2.ffn_sub_norm"].shape == (48,)
    assert {s.role for s in specs if s.is_norm} == {"norm"}
    assert sum(s.role == "matrix" for s in specs) == 7 * 3
    for layer in range(3):
        qkv = [s for s in specs if s.layer == layer and s.fusion == "qkv"]
        gate_up = [s for s in specs if s.layer == layer and s.fusion == "gate_up"]
        assert [(s.kind, s.piece) for s in qkv] == [("q", 0), ("k", 1), ("v", 2)]
        assert [(s.kind, s.piece) for s in gate_up] == [("gate", 0), ("up", 1)]
    assert schema.by_hf_name(mc)["model.layers.1.mlp.down_proj.weight"].name == "layers.1.down"
    assert schema.by_gguf_name(mc)["blk.1.attn_output.weight"].name == "layers.1.o"
    assert schema.by_gguf_name(mc)["blk.0.attn_sub_norm.weight"].name == "layers.0.attn_sub_norm"
    untied = ModelConfig(**{**mc.to_dict(), "arch": "llama", "tie_word_embeddings": False})
    names = untied.tensor_names()
    assert names[-1] == "lm_head" and not any("sub_norm" in n for n in names)


def test_schema_rejects_a_config_the_engine_rejects():
    cfg = ModelConfig(arch="llama", vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=1,
                      num_heads=4, num_kv_heads=3, head_dim=8).to_dict()
    with pytest.raises(ValueError, match="not a multiple"):
        core.tensor_schema(cfg)
    del cfg["vocab_size"]
    with pytest.raises(ValueError, match="lacks 'vocab_size'"):
        core.tensor_schema(cfg)


def test_matrix_finds_every_matrix_by_the_schema_and_refuses_the_rest():
    model, mc = build_hf("odd_sizes", seed=2)
    arrays = canonical_arrays(model, mc)
    # q in bf16 keeps q/k/v unfused in layer 0; everything else fused
    engine = core.Transformer(mc.to_dict(), engine_tensors(arrays, "f32", {"layers.0.q": "bf16"}), 16, 1)
    for s in schema.specs(mc):
        if s.is_norm:
            with pytest.raises(KeyError, match="no matrix named"):
                engine.matrix(s.name)
            continue
        back = engine.matrix(s.name)
        assert back.shape == s.shape
        if s.name != "layers.0.q":
            np.testing.assert_array_equal(back.dequantize(), arrays[s.name], err_msg=s.name)
    with pytest.raises(KeyError, match="no matrix named 'layers.0.qq'"):
        engine.matrix("layers.0.qq")


def test_matrix_of_a_tied_head_names_the_embedding():
    model, mc = build_hf("mha_tied", seed=3)
    engine = core.Transformer(mc.to_dict(), engine_tensors(canonical_arrays(model, mc)), 16, 1)
    with pytest.raises(KeyError, match="'lm_head' is tied to 'embed'"):
        engine.matrix("lm_head")
