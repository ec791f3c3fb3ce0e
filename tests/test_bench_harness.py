"""The side-by-side benchmark (benchmarks/vs_llamacpp.py) on a tiny shape: the GGUF files
and ternlm's HF folder hold the same matrices, the dequantized GGUF copy keeps everything
else, and a --quick run produces a complete JSON report (ternlm only when llama_cpp is not
installed, both engines when it is). No assertion is about speed."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import ternlm
import ternlm.schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
gguf = pytest.importorskip("gguf")
from ternlm.synthetic import embedding_rows, model_config, ternary_matrix, write_synthetic_bitnet  # noqa: E402
from write_gguf import write_bitnet_gguf, write_dequantized_gguf  # noqa: E402

try:
    import llama_cpp  # noqa: F401
    HAVE_LLAMA_CPP = True
except ImportError:
    HAVE_LLAMA_CPP = False

TINY = model_config("tiny")


def matrix_spec(name):
    return ternlm.schema.by_name(TINY)[name]


def gguf_matrices(path) -> dict:
    """tensor name -> float32 numpy [rows, cols] (dequantized)."""
    from gguf.quants import dequantize
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        data = dequantize(np.asarray(t.data), t.tensor_type)
        out[t.name] = np.asarray(data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape.tolist())])
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    hf = write_synthetic_bitnet(str(folder / "hf"), "tiny", seed=3)
    ggufs = {fmt: write_bitnet_gguf(str(folder / f"{fmt}.gguf"), "tiny", fmt, seed=3)
             for fmt in ("TQ2_0", "TQ1_0", "Q4_0", "F16", "BF16")}
    return hf, ggufs


@pytest.mark.parametrize("fmt", ["TQ2_0", "TQ1_0", "F16", "BF16"])
def test_gguf_layers_equal_ternlm_hf_folder_exactly(files, fmt):
    from ternlm.io.hf import load_hf_folder
    hf, ggufs = files
    ck = load_hf_folder(hf)
    g = gguf_matrices(ggufs[fmt])
    layer_matrices = [s for s in ternlm.schema.specs(ck.config) if s.role == "matrix"]
    assert len(layer_matrices) == 7 * TINY.num_layers
    for spec in layer_matrices:
        ours = ck.tensors[spec.name]
        assert ours.format == "ternary"
        np.testing.assert_array_equal(g[spec.gguf_name], ours.dequantize(), err_msg=f"{fmt} {spec.name}")
    np.testing.assert_array_equal(g["token_embd.weight"], ck.tensors["embed"])
    np.testing.assert_array_equal(g["output_norm.weight"], np.ones(TINY.hidden_size, np.float32))


def test_q4_0_gguf_is_the_same_matrices_within_4bit_error(files):
    _, ggufs = files
    g = gguf_matrices(ggufs["Q4_0"])
    t, s = ternary_matrix(matrix_spec("layers.1.gate"), 3)
    w = t.astype(np.float32) * np.float32(s)
    err = np.abs(g["blk.1.ffn_gate.weight"] - w)
    assert err.max() <= s / 8 * 1.01        # 4-bit symmetric blocks: step max|w| / 8
    assert err.max() > 0                    # really quantized, not a copy


def test_ternary_generator_is_deterministic_and_ternary():
    t1, s1 = ternary_matrix(matrix_spec("layers.0.down"), 5)
    t2, s2 = ternary_matrix(matrix_spec("layers.0.down"), 5)
    t3, _ = ternary_matrix(matrix_spec("layers.0.down"), 6)
    np.testing.assert_array_equal(t1, t2)
    assert s1 == s2 and not np.array_equal(t1, t3)
    assert set(np.unique(t1)) == {-1, 0, 1} and t1.shape == (TINY.hidden_size, TINY.intermediate_size)
    np.testing.assert_array_equal(embedding_rows(TINY, 5, 100, 200),
                                  embedding_rows(TINY, 5, 0, TINY.vocab_size)[100:200])


def test_dequantized_copy_keeps_metadata_and_dequantizes(files, tmp_path):
    _, ggufs = files
    dst = write_dequantized_gguf(ggufs["Q4_0"], str(tmp_path / "f16.gguf"), "F16")
    src_r, dst_r = gguf.GGUFReader(ggufs["Q4_0"]), gguf.GGUFReader(dst)
    for name, field in src_r.fields.items():
        if name.startswith("GGUF.") or name == "general.file_type":
            continue
        assert dst_r.get_field(name) is not None, name
        assert dst_r.get_field(name).contents() == field.contents(), name
    types = {t.name: t.tensor_type for t in dst_r.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    a, b = gguf_matrices(ggufs["Q4_0"]), gguf_matrices(dst)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-3, atol=1e-6, err_msg=k)


def test_quick_harness_run_writes_complete_json(tmp_path):
    engines = "ternlm,llama.cpp" if HAVE_LLAMA_CPP else "ternlm"
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(ternlm.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "vs_llamacpp.py"), "--quick", "--shape", "tiny",
           "--threads", "1", "--reps", "1", "--models", "bitnet", "--engines", engines,
           "--workdir", str(tmp_path / "models"), "--json", str(out), "--timeout", "300"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["machine"]["read_bandwidth_gb_s"]["1"] > 0
    (model,) = result["models"]
    assert model["prompt_tokens"] == 32 and model["decode_tokens"] == 8
    want = {("ternlm", v) for v in ("ternary", "ternary-bf16chead", "ternary-int4head", "int4", "bf16", "bf16c")}
    if HAVE_LLAMA_CPP:
        want |= {("llama.cpp", f) for f in ("TQ2_0", "TQ1_0", "Q4_0", "F16")}
    assert {(r["engine"], r["variant"]) for r in model["rows"]} == want
    for r in model["rows"]:
        where = f"{r['engine']} {r['variant']}: {r['errors']}"
        assert r["errors"] == [] and len(r["runs"]) == 1, where
        for key in ("prefill_tok_s", "decode_tok_s", "peak_rss_mb"):
            assert r[key]["median"] > 0 and r[key]["min"] <= r[key]["median"] <= r[key]["max"], where
        assert r["bytes_per_token"] > 0 and r["roofline_tok_s"] > 0 and r["roofline_fraction"] > 0, where
    if HAVE_LLAMA_CPP:
        pairs = {(x["ternlm"], x["llama.cpp"]) for x in model["ratios"]}
        assert len(pairs) == 7
        assert all(x["prefill_ratio"] > 0 and x["decode_ratio"] > 0 for x in model["ratios"])
    assert "prefill t/s" in proc.stdout and "decode t/s" in proc.stdout


def test_amx_ab_script_compares_or_says_why_not(capsys):
    import amx_ab
    assert amx_ab.main(["--threads", "1", "--rows", "16"]) == 0
    out = capsys.readouterr().out
    if ternlm._core.amx():
        assert out.count("with AMX") == 4  # ternary and int4, two shapes; outputs asserted identical inside
    else:
        assert "no AMX on this CPU" in out
