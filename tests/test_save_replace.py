"""Saving over an existing folder: Model.save and `ternlm convert` refuse a ternlm folder
unless forced, never touch a foreign one, and write beside the destination and rename, so
a failure or an interrupt mid-write leaves the old model intact and no partial folder."""
import json
import os
import subprocess
import sys

import pytest

import ternlm
from ternlm.io import own_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(llama_folders):
    return llama_folders["gqa_f32"]


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _formats(folder):
    return {e["format"] for e in json.loads((folder / "ternlm.json").read_text())["matrices"].values()}


def test_save_refuses_a_ternlm_folder_without_force_and_replaces_it_with(tiny, tmp_path):
    out = tmp_path / "t"
    ternlm.load(tiny, weights="int4", context=32, progress=False).save(out)
    before = _snapshot(out)
    m = ternlm.load(tiny, weights="bf16", context=32, progress=False)
    with pytest.raises(FileExistsError, match="already holds a ternlm model.*force=True"):
        m.save(out)
    assert _snapshot(out) == before
    m.save(out, force=True)
    assert "bf16" in _formats(out) and "int4" not in _formats(out)
    assert os.listdir(tmp_path) == ["t"]             # no partial or old folder left beside it
    ids = [3, 4, 5, 6]
    assert (ternlm.load(out, context=32, progress=False).logits(ids) == m.logits(ids)).all()


def test_save_into_an_empty_folder_and_refusals_that_force_does_not_lift(tiny, tmp_path):
    m = ternlm.load(tiny, weights="int4", context=32, progress=False)
    (tmp_path / "empty").mkdir()
    m.save(tmp_path / "empty")
    assert (tmp_path / "empty" / "ternlm.json").exists()
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        m.save(tmp_path / "a_file", force=True)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and is not a ternlm folder"):
        m.save(tmp_path / "foreign", force=True)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    m.save(tmp_path / "nested" / "new")             # parents are created
    loaded = ternlm.load(tmp_path / "empty", context=32, progress=False)
    with pytest.raises(ValueError, match="is the folder this model was loaded from"):
        loaded.save(tmp_path / "empty", force=True)
    assert sorted(os.listdir(tmp_path)) == ["a_file", "empty", "foreign", "nested"]


@pytest.mark.parametrize("fail_in", ["_save_tokenizer", "save_safetensors"])
@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_the_old_folder_and_no_partial_one(tiny, tmp_path, monkeypatch, fail_in, error):
    out = tmp_path / "t"
    ternlm.load(tiny, weights="int4", context=32, progress=False).save(out)
    before = _snapshot(out)
    real = getattr(own_format, fail_in)

    def half_then_fail(*args, **kwargs):
        real(*args, **kwargs)                        # the file is written, then the write "fails"
        raise error
    monkeypatch.setattr(own_format, fail_in, half_then_fail)
    m = ternlm.load(tiny, weights="bf16", context=32, progress=False)
    with pytest.raises(type(error)):
        m.save(out, force=True)
    assert _snapshot(out) == before
    with pytest.raises(type(error)):
        m.save(tmp_path / "new")
    assert os.listdir(tmp_path) == ["t"]
    assert ternlm.load(out, context=32, progress=False).formats["layers.0.q"] == "int4"


def test_failed_swap_puts_the_old_folder_back(tiny, tmp_path, monkeypatch):
    out = tmp_path / "t"
    ternlm.load(tiny, weights="int4", context=32, progress=False).save(out)
    before = _snapshot(out)
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(str(src)).startswith(".t.partial-"):
            raise OSError("rename failed")
        real_rename(src, dst)
    monkeypatch.setattr(own_format.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        ternlm.load(tiny, weights="bf16", context=32, progress=False).save(out, force=True)
    monkeypatch.undo()
    assert _snapshot(out) == before and os.listdir(tmp_path) == ["t"]


def run_cli(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "python") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "ternlm", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_convert_refuses_an_existing_model_unless_forced(tiny, tmp_path):
    out = tmp_path / "conv"
    assert run_cli("convert", tiny, out, "--weights", "int4", "-q").returncode == 0
    before = _snapshot(out)
    r = run_cli("convert", tiny, out, "--weights", "ternary", "-q")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"ternlm convert: error: {out}: already holds a ternlm model; "
                                             "pass --force to replace it"]
    assert _snapshot(out) == before
    r = run_cli("convert", tiny, out, "--weights", "ternary", "-q", "--force")
    assert r.returncode == 0, r.stderr
    assert "ternary" in _formats(out) and "int4" not in _formats(out)
    assert os.listdir(tmp_path) == ["conv"]
    assert "--force" in run_cli("convert", "--help").stdout
