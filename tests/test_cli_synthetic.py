"""`ternlm bench --synthetic` checkpoints are real Hugging Face BitNet folders: transformers
loads the tiny one and computes the same logits as ternlm; the 2B shape is the
microsoft/bitnet-b1.58-2B-4T config."""
import json
import os

import numpy as np
import pytest

import ternlm
import ternlm.schema
from ternlm.synthetic import SHAPES, write_synthetic_bitnet


def test_tiny_synthetic_checkpoint_matches_transformers(tmp_path):
    from conftest import hf_logits
    folder = write_synthetic_bitnet(tmp_path / "tiny", "tiny", seed=3)
    m = ternlm.load(folder, progress=False)
    assert {m.formats[n] for n in m.formats if n.startswith("layers.")} == {"ternary"}
    ids = m.tokenizer.encode("synthetic weights, real layout")
    ref = hf_logits(folder, ids)
    got = m.logits(ids)
    # same activation quantization as transformers' AutoBitLinear; float32 sums in different order
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3 * np.abs(ref).max())


def test_2b_shape_is_bitnet_2b_4t():
    s = SHAPES["bitnet-2b"]
    assert (s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]) == (2560, 6912, 30)
    assert (s["num_attention_heads"], s["num_key_value_heads"], s["vocab_size"]) == (20, 5, 128256)


def test_synthetic_writer_refuses_an_existing_model(tmp_path):
    folder = write_synthetic_bitnet(tmp_path / "m", "tiny")
    cfg = json.load(open(os.path.join(folder, "config.json")))
    assert cfg["quantization_config"] == {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                          "quantization_mode": "offline"}
    assert cfg["tie_word_embeddings"] is True
    with pytest.raises(FileExistsError):
        write_synthetic_bitnet(folder, "tiny")
    with pytest.raises(ValueError, match="unknown synthetic shape"):
        write_synthetic_bitnet(tmp_path / "x", "huge")


def test_folder_holds_the_generators_values(tmp_path):
    from ternlm.io.hf import load_hf_folder
    from ternlm.synthetic import embedding_rows, model_config, ternary_matrix
    folder = write_synthetic_bitnet(tmp_path / "tiny", "tiny", seed=4)
    ck = load_hf_folder(folder)
    assert ck.config == model_config("tiny")
    for spec in ternlm.schema.specs(ck.config):
        if spec.role == "matrix":
            t, s = ternary_matrix(spec, 4)
            np.testing.assert_array_equal(ck.tensors[spec.name].dequantize(), t.astype(np.float32) * np.float32(s))
    np.testing.assert_array_equal(np.asarray(ck.tensors["embed"]), embedding_rows(ck.config, 4, 0, 1024))
