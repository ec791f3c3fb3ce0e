"""Bad inputs to _core.Transformer raise ValueError/TypeError naming what is wrong, and
leave the engine (and the caller's matrices) usable."""
import numpy as np
import pytest
from engine_models import VOCAB, build_hf, canonical_arrays, engine_tensors

import ternlm
from ternlm._native import core


@pytest.fixture(scope="module")
def tiny():
    model, mc = build_hf("gqa_untied", seed=5)
    return mc, canonical_arrays(model, mc)


def test_missing_tensor_is_named(tiny):
    mc, arrays = tiny
    tensors = engine_tensors(arrays)
    del tensors["layers.1.down"]
    with pytest.raises(ValueError, match="missing tensor 'layers.1.down'"):
        core.Transformer(mc.to_dict(), tensors, 16)
    # nothing was moved out by the failed construction
    assert tensors["layers.0.q"].shape == arrays["layers.0.q"].shape


def test_wrong_matrix_shape_names_tensor_expected_and_actual(tiny):
    mc, arrays = tiny
    tensors = engine_tensors(arrays)
    tensors["layers.0.k"] = ternlm.quantize(np.zeros((16, 64), np.float32), "f32")
    with pytest.raises(ValueError, match=r"'layers.0.k' has shape \(16, 64\), expected \(32, 64\)"):
        core.Transformer(mc.to_dict(), tensors, 16)


def test_wrong_norm_shape_and_type(tiny):
    mc, arrays = tiny
    tensors = engine_tensors(arrays)
    tensors["norm"] = np.ones(63, np.float32)
    with pytest.raises(ValueError, match=r"'norm' has shape \(63,\), expected \(64,\)"):
        core.Transformer(mc.to_dict(), tensors, 16)
    tensors = engine_tensors(arrays)
    tensors["layers.0.q"] = arrays["layers.0.q"]               # numpy, not quantized
    with pytest.raises(TypeError, match="'layers.0.q' must be a ternlm.QuantizedMatrix"):
        core.Transformer(mc.to_dict(), tensors, 16)


def test_unexpected_tensor_and_same_object_twice(tiny):
    mc, arrays = tiny
    tensors = engine_tensors(arrays)
    tensors["layers.2.q"] = tensors.pop("layers.1.q")
    with pytest.raises(ValueError, match="missing tensor 'layers.1.q'"):
        core.Transformer(mc.to_dict(), tensors, 16)
    tensors = engine_tensors(arrays)
    tensors["layers.7.q"] = ternlm.quantize(arrays["layers.0.q"], "f32")
    with pytest.raises(ValueError, match="unexpected tensor 'layers.7.q'"):
        core.Transformer(mc.to_dict(), tensors, 16)
    tensors = engine_tensors(arrays)
    tensors["lm_head"] = tensors["embed"]
    with pytest.raises(ValueError, match="same object"):
        core.Transformer(mc.to_dict(), tensors, 16)


def test_bad_config_values(tiny):
    mc, arrays = tiny
    for key, value, match in [("num_kv_heads", 3, "not a multiple"), ("arch", "gpt2", "arch"),
                              ("hidden_act", "gelu", "hidden_act"), ("head_dim", 0, "head_dim"),
                              ("rope_scaling", {"rope_type": "yarn"}, "yarn")]:
        cfg = mc.to_dict()
        cfg[key] = value
        with pytest.raises(ValueError, match=match):
            core.Transformer(cfg, engine_tensors(arrays), 16)
    with pytest.raises(ValueError, match="context"):
        core.Transformer(mc.to_dict(), engine_tensors(arrays), 0)
    with pytest.raises(ValueError, match="threads"):
        core.Transformer(mc.to_dict(), engine_tensors(arrays), 16, 0)


def test_forward_rejects_bad_tokens_and_context_overflow(tiny):
    mc, arrays = tiny
    engine = core.Transformer(mc.to_dict(), engine_tensors(arrays), 8)
    with pytest.raises(ValueError, match=f"token id {VOCAB} at index 1 is outside the vocabulary \\[0, {VOCAB}\\)"):
        engine.forward(np.array([1, VOCAB], np.int32))
    with pytest.raises(ValueError, match="token id -1"):
        engine.forward(np.array([-1], np.int32))
    with pytest.raises(ValueError, match="no tokens"):
        engine.forward(np.array([], np.int32))
    with pytest.raises(TypeError, match="integer"):
        engine.forward(np.array([1.0], np.float32))
    with pytest.raises(ValueError, match="'last' or 'all'"):
        engine.forward(np.array([1], np.int32), logits="first")
    assert engine.position == 0                                  # nothing was appended
    engine.forward(np.arange(6, dtype=np.int32))
    with pytest.raises(ValueError, match="3 tokens at position 6 go past the context of 8"):
        engine.forward(np.arange(3, dtype=np.int32))
    assert engine.position == 6
    engine.forward(np.arange(2, dtype=np.int32))                 # exactly fills the context
    with pytest.raises(ValueError, match="past the context"):
        engine.step(1, core.Sampler(0))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.step(VOCAB, core.Sampler(0))
    with pytest.raises(ValueError, match="truncate"):
        engine.truncate(-1)
