"""m.save(folder) -> ternlm.load(folder): identical logits, no conversion on load, formats
kept; refusing to overwrite foreign folders; clear errors for bad headers; the hybrid
embed/lm_head policy of weights=."""
import json
import os
import shutil

import numpy as np
import pytest

import ternlm
from ternlm import formats as fm


@pytest.mark.parametrize("source, weights", [("llama", None), ("llama", "bf16"), ("llama", "int4"),
                                             ("llama", "ternary"), ("bitnet", None)])
def test_save_load_roundtrip_identical_without_conversion(llama_folders, bitnet_folders, tmp_path,
                                                          monkeypatch, source, weights):
    folder = llama_folders["gqa_f32"] if source == "llama" else bitnet_folders["bitlinear"]
    m = ternlm.load(folder, weights=weights, context=64, threads=1, progress=False)
    ids = list(range(3, 23))
    before = m.logits(ids)
    out = tmp_path / "saved"
    m.save(out)
    assert {"ternlm.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))

    def no_quantize(*a, **k):
        raise AssertionError("quantize called while loading a ternlm folder")
    monkeypatch.setattr(fm, "quantize", no_quantize)
    m2 = ternlm.load(out, context=64, threads=1, progress=False)
    assert m2.formats == m.formats
    np.testing.assert_array_equal(m2.logits(ids), before)
    assert m2.tokenizer.encode("Hello world") == m.tokenizer.encode("Hello world")
    assert m2.generate("Hello", max_new_tokens=8) == m.generate("Hello", max_new_tokens=8)


def test_hybrid_head_policy(llama_folders):
    folder = llama_folders["gqa_f32"]
    m = ternlm.load(folder, weights="int4", context=32, progress=False)
    assert m.formats["layers.0.q"] == "int4" and m.formats["embed"] == "bf16" and m.formats["lm_head"] == "bf16"
    m = ternlm.load(folder, weights="ternary", head="int4", context=32, progress=False)
    assert m.formats["layers.1.down"] == "ternary" and m.formats["embed"] == m.formats["lm_head"] == "int4"
    m = ternlm.load(folder, context=32, progress=False)
    assert set(m.formats.values()) == {"f32"}
    with pytest.raises(ValueError, match="weights='int8'"):
        ternlm.load(folder, weights="int8")
    with pytest.raises(ValueError, match="head='ternary'"):
        ternlm.load(folder, weights="int4", head="ternary")


def test_save_refuses_foreign_nonempty_folder(llama_folders, tmp_path):
    m = ternlm.load(llama_folders["gqa_f32"], weights="int4", context=32, progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and is not a ternlm folder"):
        m.save(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    m.save(tmp_path / "t")
    m.save(tmp_path / "t", force=True)   # a ternlm folder may be overwritten (with force)


def _saved(llama_folders, tmp_path):
    m = ternlm.load(llama_folders["gqa_f32"], weights="bf16", context=32, progress=False)
    m.save(tmp_path / "s")
    return tmp_path / "s"


def test_bad_header_errors(llama_folders, tmp_path):
    d = _saved(llama_folders, tmp_path)
    header = json.loads((d / "ternlm.json").read_text())
    (d / "ternlm.json").write_text(json.dumps({**header, "format_version": 99}))
    with pytest.raises(ValueError, match="ternlm.json: format_version 99"):
        ternlm.load(d)
    (d / "ternlm.json").write_text("{not json")
    with pytest.raises(ValueError, match="ternlm.json: invalid JSON"):
        ternlm.load(d)
    broken = dict(header, matrices={k: v for k, v in header["matrices"].items() if k != "layers.1.up"})
    (d / "ternlm.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="matrix 'layers.1.up' is missing"):
        ternlm.load(d)


def test_truncated_weights_file_is_named(llama_folders, tmp_path):
    d = _saved(llama_folders, tmp_path)
    p = d / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ValueError, match="model.safetensors.*truncated"):
        ternlm.load(d)


def test_load_errors_for_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        ternlm.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a Hugging Face folder"):
        ternlm.load(tmp_path / "empty")
    shutil.rmtree(tmp_path / "empty")
