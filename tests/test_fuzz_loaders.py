"""The loader fuzzer (tests/fuzz_loaders.py) keeps working: a short run on a fixed seed passes
(no crash, hang, memory blow-up or unexpected exception type beyond tests/fuzz_known.txt),
every failure kind is caught and reported with its input, inputs are a function of
(seed, index) alone; and the defects it found outside the io/ readers stay fixed."""
import base64
import json
import os
import re
import subprocess
import sys
import zlib

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fuzz_loaders  # noqa: E402


def run_fuzzer(*args, timeout=300):
    return subprocess.run([sys.executable, os.path.join(HERE, "fuzz_loaders.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_short_run_on_a_fixed_seed_passes(tmp_path):
    r = run_fuzzer("--seconds", 10, "--seed", 1, "--jobs", 1, "--known", os.path.join(HERE, "fuzz_known.txt"),
                   "--out", tmp_path)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    done = int(re.search(r"^(\d+) iterations in", r.stdout, re.M).group(1))
    assert done >= 20, r.stdout
    hist = dict((k.strip(), int(v)) for v, k in re.findall(r"^\s+(\d+)\s+(.+)$", r.stdout.split("outcomes:")[1], re.M))
    assert hist.get("ok", 0) > 0 and hist.get("ValueError", 0) > 0, r.stdout
    assert sum(hist.values()) == done


def test_every_failure_kind_is_reported_with_its_input(tmp_path):
    r = run_fuzzer("--seed", 3, "--only", "0,1,2,3", "--inject", "crash,hang,keyerror,memory", "--timeout", 3,
                   "--jobs", 1, "--out", tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "4 iterations" in out and "4 failure(s)" in out
    # a plain crash, or ASan's report of it on the sanitizer build
    assert re.search(r"crash: killed by signal 11 \(SIGSEGV\)|sanitizer: .*AddressSanitizer: SEGV", out), out
    assert "hang: no result after 3 s" in out
    assert "KeyError: 'injected'" in out and "MemoryError" in out
    for n in range(1, 5):
        meta = json.loads((tmp_path / f"failure-{n}" / "input.json").read_text())
        assert meta["seed"] == 3 and meta["iteration"] == n - 1
    # the printed input is the saved one
    line = next(x for x in out.splitlines() if x.startswith("  input ") and "zlib+base64" in x)
    fname = line.split()[1]
    saved = [p for p in tmp_path.glob(f"failure-*/{fname}")]
    assert zlib.decompress(base64.b64decode(line.rsplit(": ", 1)[1])) in [p.read_bytes() for p in saved]


def test_replay_of_a_saved_input(tmp_path):
    r = run_fuzzer("--seed", 3, "--only", "0", "--inject", "keyerror", "--jobs", 1, "--out", tmp_path)
    assert r.returncode == 1 and (tmp_path / "failure-1" / "input.json").exists(), r.stdout + r.stderr
    r = run_fuzzer("--replay", tmp_path / "failure-1", "--out", tmp_path)   # the input, without the injection
    result = json.loads(r.stdout)
    assert result["outcome"] in ("ok", "exception")
    assert r.returncode == (1 if fuzz_loaders.verdict(result)[1] else 0)


def test_inputs_depend_on_seed_and_index_only():
    cfg = json.dumps({"hidden_size": 32, "rope_scaling": {"factor": 8.0}, "eos_token_id": [1, 2]}).encode()
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    st = len(header).to_bytes(8, "little") + header + bytes(16)
    targets = [{"name": "a", "root": "", "load": "", "files": {"config.json": ["json", 0], "m.safetensors":
                                                               ["safetensors", 0], "m.gguf": ["gguf", 24]},
                "data": {"config.json": cfg, "m.safetensors": st, "m.gguf": b"GGUF" + bytes(60)}}]
    first = [fuzz_loaders.make_input(5, i, targets)[1:] for i in range(200)]
    assert first == [fuzz_loaders.make_input(5, i, targets)[1:] for i in range(200)]
    assert first != [fuzz_loaders.make_input(6, i, targets)[1:] for i in range(200)]
    assert {f for f, *_ in first} == {"config.json", "m.safetensors", "m.gguf"}
    changed = [c for f, c, w in first if c is not None and c != targets[0]["data"][f]]
    assert len(changed) > 150


def test_known_file_entries_parse():
    known = fuzz_loaders.read_known(os.path.join(HERE, "fuzz_known.txt"))
    assert all(re.fullmatch(r"\w+ [\w.]+\.py:[\w<>]+", k) for k in known), known


# ---- defects the fuzzer found outside the io/ readers ------------------------------------------
@pytest.fixture
def tokenizer_folder(tmp_path):
    from ternlm.synthetic import write_synthetic_bitnet
    return write_synthetic_bitnet(tmp_path / "m", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                       num_attention_heads=2, num_key_value_heads=1,
                                                       vocab_size=258, max_position_embeddings=64))


@pytest.mark.parametrize("key, value", [("bos_token", ["<|begin_of_text|>"]), ("eos_token", 5),
                                        ("pad_token", {"content": 7}), ("tokenizer_class", ["LlamaTokenizer"])])
def test_tokenizer_config_values_of_the_wrong_type_name_file_and_key(tokenizer_folder, key, value):
    from ternlm.tokenizer import Tokenizer
    path = os.path.join(tokenizer_folder, "tokenizer_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg[key] = value
    with open(path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match=re.escape(path) + f": {key} must be a string"):
        Tokenizer.from_folder(tokenizer_folder)
