"""Hugging Face Hub ids (ternlm/hub.py): ternlm.load("org/name"), "org/name/file.gguf",
revision=, and --model ORG/NAME, resolved by huggingface_hub itself from a Hub cache laid
out as huggingface_hub lays it out:

    $HF_HOME/hub/models--org--name/
        blobs/<sha256 or git sha1>            file contents
        refs/main, refs/v1                    commit hash of a branch / tag
        snapshots/<commit>/<file>             relative links to ../../blobs/<hash>
        trees/<commit>.json                   the repository listing (huggingface_hub's tree cache)

No network here: every call runs in a fresh process with HF_HOME pointing at the cache and
HF_HUB_OFFLINE=1 (huggingface_hub reads both when imported), or with the Hub endpoint on a
closed local port for "the Hub cannot be reached". Nothing of ternlm is mocked.
"""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf_files import gguf_from_hf_folder

import ternlm

PYTHONPATH = os.pathsep.join(p for p in sys.path if p)


def _blob_name(data: bytes, lfs: bool) -> str:
    if lfs:                                     # LFS files: the sha256 of the content
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()   # git's blob id


def add_snapshot(hf_home, repo_id, files: dict, commit: str, refs=("main",), listing_extra=()):
    """Put `files` (repo path -> local file) into the cache as one commit of repo_id, with
    the refs pointing at it and a tree listing holding them plus `listing_extra` paths (files
    of the repository that this cache does not hold)."""
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
    repo = os.path.join(hf_home, "hub", "models--" + repo_id.replace("/", "--"))
    entries = {}
    for rel, src in files.items():
        data = open(src, "rb").read()
        lfs = rel.endswith((".safetensors", ".gguf"))
        blob = _blob_name(data, lfs)
        os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
        with open(os.path.join(repo, "blobs", blob), "wb") as f:
            f.write(data)
        link = os.path.join(repo, "snapshots", commit, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(os.path.join(repo, "blobs", blob), os.path.dirname(link)), link)
        entries[rel] = TreeCacheEntry(size=len(data), blob_id=_blob_name(data, False),
                                      lfs_sha256=blob if lfs else None, lfs_size=len(data) if lfs else None)
    for rel in listing_extra:
        entries[rel] = TreeCacheEntry(size=10, blob_id="0" * 40)
    write_tree_cache(repo, commit, entries)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    for ref in refs:
        with open(os.path.join(repo, "refs", ref), "w") as f:
            f.write(commit)
    return os.path.join(repo, "snapshots", commit)


def run_py(code, hf_home, offline=True, endpoint=None):
    """Run `code` in a fresh Python with the cache's environment; its stdout as JSON."""
    env = dict(os.environ, HF_HOME=str(hf_home), PYTHONPATH=PYTHONPATH, HF_HUB_OFFLINE="1" if offline else "0")
    env.pop("HF_HUB_CACHE", None)
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, llama_folders):
    """org/llama at main (= commit A, llama gqa_f32) and tag v1 (commit B, llama3_sharded:
    sharded safetensors + index); org/llama-gguf with one .gguf file."""
    home = tmp_path_factory.mktemp("hf_home")
    a, b = llama_folders["gqa_f32"], llama_folders["llama3_sharded"]

    def files(folder):
        return {f: os.path.join(folder, f) for f in os.listdir(folder)}
    # the listing also names files ternlm never reads (the cache lacks them: allow_patterns skip them)
    extra = ("consolidated.safetensors", "pytorch_model.bin", "original/params.json", "README.md")
    add_snapshot(home, "org/llama", files(a), COMMIT_A, refs=("main",), listing_extra=extra)
    add_snapshot(home, "org/llama", files(b), COMMIT_B, refs=("v1",), listing_extra=extra)
    gguf = gguf_from_hf_folder(a, tmp_path_factory.mktemp("g") / "model-f32.gguf",
                               {"embed": "F32", "lm_head": "F32", "matrix": "F32"})
    add_snapshot(home, "org/llama-gguf", {"sub/model-f32.gguf": str(gguf)}, COMMIT_A)
    return home


LOGITS = ("import json, ternlm; m = ternlm.load({spec!r}, progress=False, context=64{kw}); "
          "print(json.dumps({{'source': m.source, 'logits': m.logits([3, 4, 5, 6])[-1][:8].tolist()}}))")


def _logits(folder):
    return ternlm.load(folder, progress=False, context=64).logits([3, 4, 5, 6])[-1][:8]


def test_repo_id_loads_from_the_cache_offline(hub_cache, llama_folders):
    got = run_py(LOGITS.format(spec="org/llama", kw=""), hub_cache)
    assert got["source"].endswith(os.path.join("models--org--llama", "snapshots", COMMIT_A))
    np.testing.assert_array_equal(np.float32(got["logits"]), _logits(llama_folders["gqa_f32"]))


def test_revision_tag_and_commit(hub_cache, llama_folders):
    want = _logits(llama_folders["llama3_sharded"])
    for rev in ("v1", COMMIT_B):
        got = run_py(LOGITS.format(spec="org/llama", kw=f", revision={rev!r}"), hub_cache)
        assert got["source"].endswith(COMMIT_B)
        np.testing.assert_array_equal(np.float32(got["logits"]), want)


def test_one_gguf_file_of_a_repository(hub_cache, llama_folders):
    got = run_py(LOGITS.format(spec="org/llama-gguf/sub/model-f32.gguf", kw=""), hub_cache)
    assert got["source"].endswith(os.path.join(COMMIT_A, "sub", "model-f32.gguf"))
    np.testing.assert_allclose(np.float32(got["logits"]), _logits(llama_folders["gqa_f32"]), rtol=0, atol=1e-4)


def test_only_the_files_ternlm_reads_are_asked_for(hub_cache):
    """The cache lacks files the repository listing names (consolidated.safetensors, ...):
    a plain snapshot_download calls that snapshot incomplete; ternlm's (allow_patterns of
    the files it reads) finds it complete."""
    code = ("import json; from huggingface_hub import snapshot_download\n"
            "try:\n    snapshot_download('org/llama'); print(json.dumps('complete'))\n"
            "except Exception as e:\n    print(json.dumps(type(e).__name__))")
    assert run_py(code, hub_cache) == "IncompleteSnapshotError"
    assert run_py("import json; from ternlm.hub import resolve; print(json.dumps(resolve('org/llama')))",
                  hub_cache).endswith(COMMIT_A)


def test_cli_model_hub_id(hub_cache):
    code = ("import json, contextlib, io; from ternlm import cli; out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    code = cli.main(['generate', '--model', 'org/llama', '--revision', 'v1', '--prompt', 'Hi',"
            " '--max-new-tokens', '4', '--threads', '1'])\n"
            "print(json.dumps([code, out.getvalue()]))")
    code_, text = run_py(code, hub_cache)
    assert code_ == 0 and text.strip()


def test_missing_repo_offline_is_a_clear_error(hub_cache):
    code = ("import json, ternlm\ntry:\n    ternlm.load('org/absent', progress=False)\n"
            "except FileNotFoundError as e:\n    print(json.dumps(str(e)))")
    msg = run_py(code, hub_cache)
    assert "org/absent: no such file or folder. It looks like a Hugging Face Hub id" in msg
    assert "HF_HUB_OFFLINE is set" in msg and os.path.join(str(hub_cache), "hub") in msg
    code = code.replace("'org/absent'", "'org/llama', revision='v2'")
    assert "org/llama at revision 'v2'" in run_py(code, hub_cache)


def test_hub_unreachable_is_a_clear_error(hub_cache):
    """Not offline, but the endpoint is a closed local port: the cached snapshot is used;
    a repository that is not cached names the connection failure."""
    code = ("import json, ternlm\ntry:\n"
            "    m = ternlm.load({spec!r}, progress=False, context=64); print(json.dumps(m.source))\n"
            "except FileNotFoundError as e:\n    print(json.dumps(str(e)))")
    closed = "http://127.0.0.1:9"
    assert run_py(code.format(spec="org/llama"), hub_cache, offline=False, endpoint=closed).endswith(COMMIT_A)
    msg = run_py(code.format(spec="org/absent"), hub_cache, offline=False, endpoint=closed)
    assert "the Hub could not be reached" in msg and "no such file or folder" in msg


def test_local_paths_win_and_revision_needs_a_hub_id(llama_folders, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("org")
    os.symlink(llama_folders["gqa_f32"], "org/llama")         # a local folder spelled like an id
    assert ternlm.load("org/llama", progress=False, context=64).source == "org/llama"
    with pytest.raises(ValueError, match="revision='v1' applies to Hugging Face Hub ids"):
        ternlm.load("org/llama", revision="v1")
