"""The `ternlm` command end to end, in subprocesses, on tiny checkpoints: generate (greedy text
equals the API's), convert then load the converted folder, chat over stdin, bench on a tiny
synthetic BitNet model, errors a user can act on."""
import json
import os
import subprocess
import sys

import pytest

import ternlm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, stdin=None, home=None, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "python") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if home is not None:
        env["TERNLM_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "ternlm", *map(str, args)], input=stdin, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(llama_folders):
    return llama_folders["gqa_f32"]


def test_help_texts():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("generate", "chat", "convert", "bench", "compare"):
        assert cmd in r.stdout
    r = run_cli("generate", "--help")
    assert r.returncode == 0 and "--max-new-tokens" in r.stdout and "SmolLM2" in r.stdout
    assert run_cli("compare", "--help").returncode == 0


def test_generate_streams_the_apis_greedy_text(tiny):
    r = run_cli("generate", "--model", tiny, "--prompt", "Hello world", "--no-chat-template",
                "--max-new-tokens", "12", "--threads", "1")
    assert r.returncode == 0, r.stderr
    want = ternlm.load(tiny, progress=False).generate("Hello world", max_new_tokens=12)
    assert r.stdout == want + "\n"
    assert "prompt:" in r.stderr and "tok/s" in r.stderr and "peak memory" in r.stderr


def test_generate_with_the_f16_kv_cache(tiny):
    r = run_cli("generate", "--model", tiny, "--prompt", "Hello world", "--no-chat-template",
                "--max-new-tokens", "12", "--threads", "1", "--kv-dtype", "f16", "-q")
    assert r.returncode == 0, r.stderr
    want = ternlm.load(tiny, progress=False, kv_dtype="f16").generate("Hello world", max_new_tokens=12)
    assert r.stdout == want + "\n"
    r = run_cli("generate", "--model", tiny, "--prompt", "x", "--kv-dtype", "int8")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_generate_applies_the_chat_template_and_samples_reproducibly(tiny):
    args = ["generate", "--model", tiny, "--prompt", "hi", "--max-new-tokens", "10", "--temperature", "0.8",
            "--top-k", "20", "--top-p", "0.9", "--min-p", "0.01", "--repetition-penalty", "1.1", "--seed", "7", "-q"]
    a, b = run_cli(*args), run_cli(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stderr == ""
    m = ternlm.load(tiny, progress=False)
    want = m.chat([{"role": "user", "content": "hi"}], max_new_tokens=10, temperature=0.8, top_k=20, top_p=0.9,
                  min_p=0.01, repetition_penalty=1.1, seed=7)
    assert a.stdout == want + "\n"


@pytest.mark.parametrize("weights", ["bf16", "int4", "ternary"])
def test_convert_then_generate_from_the_converted_folder(tiny, tmp_path, weights):
    out = tmp_path / f"conv_{weights}"
    r = run_cli("convert", tiny, out, "--weights", weights)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout
    m_conv = ternlm.load(str(out), progress=False)
    assert set(m_conv.formats[n] for n in m_conv.formats if n.startswith("layers.")) == {weights}
    m_direct = ternlm.load(tiny, weights=weights, progress=False)
    assert m_conv.generate("The quick", max_new_tokens=8) == m_direct.generate("The quick", max_new_tokens=8)
    g = run_cli("generate", "--model", out, "--prompt", "The quick", "--no-chat-template", "--max-new-tokens", "8", "-q")
    assert g.returncode == 0 and g.stdout == m_direct.generate("The quick", max_new_tokens=8) + "\n"


def test_head_option_in_convert_and_generate(tiny, tmp_path):
    out = tmp_path / "conv_head"
    r = run_cli("convert", tiny, out, "--weights", "ternary", "--head", "bf16c")
    assert r.returncode == 0, r.stderr
    m_conv = ternlm.load(str(out), progress=False)
    assert m_conv.formats["embed"] == "bf16c" and m_conv.formats["layers.0.q"] == "ternary"
    want = ternlm.load(tiny, weights="ternary", head="bf16c", progress=False).generate("The quick", max_new_tokens=8)
    g = run_cli("generate", "--model", tiny, "--weights", "ternary", "--head", "bf16c", "--prompt", "The quick",
                "--no-chat-template", "--max-new-tokens", "8", "-q")
    assert g.returncode == 0 and g.stdout == want + "\n"
    r = run_cli("generate", "--model", tiny, "--prompt", "x", "--head", "ternary")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_convert_refuses_a_non_empty_folder(tiny, tmp_path):
    dst = tmp_path / "busy"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    r = run_cli("convert", tiny, dst, "--weights", "int4")
    assert r.returncode == 2 and "not empty" in r.stderr
    assert (dst / "notes.txt").read_text() == "mine"


def test_chat_keeps_history_and_understands_reset_and_exit(tiny):
    r = run_cli("chat", "--model", tiny, "--max-new-tokens", "6", stdin="hello\nhow are you\n/reset\nhello\n/exit\nnever\n")
    assert r.returncode == 0, r.stderr
    replies = r.stdout.split("\n")[:3]
    m = ternlm.load(tiny, progress=False)
    first = m.chat([{"role": "user", "content": "hello"}], max_new_tokens=6)
    second = m.chat([{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
                     {"role": "user", "content": "how are you"}], max_new_tokens=6)
    assert replies == [first, second, first]          # after /reset the history is gone
    assert "conversation cleared" in r.stderr


def test_bench_synthetic_tiny_writes_json_and_a_table(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--synthetic", "tiny", "--threads", "1,2", "--prompt-tokens", "16", "--decode-tokens", "8",
                "--repeats", "1", "--json", out, home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [row["threads"] for row in rows] == [1, 2]
    for row in rows:
        assert row["prompt_tokens"] == 16 and row["decode_tokens"] == 8
        assert row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0 and row["load_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["formats"] == ["bf16", "ternary"]
    assert "decode tok/s" in r.stdout and "peak RSS MB" in r.stdout
    assert os.path.exists(tmp_path / "home" / "synthetic" / "tiny-seed0" / "config.json")
    # which kernels ran: the table says so and the JSON records it
    machine = report["machine"]
    assert machine["target"] == ternlm._core.current_target() and machine["targets"] == ternlm._core.supported_targets()
    assert machine["prefetch_bytes"] == ternlm._core.prefetch_distance() and machine["amx"] == ternlm._core.amx()
    assert f"kernels: {machine['target']}" in r.stdout and "software prefetch" in r.stdout


def test_bench_on_a_model_folder_with_several_formats(tiny, tmp_path):
    r = run_cli("bench", "--model", tiny, "--weights", "stored,int4", "--threads", "1", "--prompt-tokens", "8",
                "--decode-tokens", "4", "--repeats", "1", "-q", "--kv-dtype", "f32,f16")
    assert r.returncode == 0, r.stderr
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.strip().startswith(("as stored", "int4"))]
    assert [ln[-5] for ln in lines] == ["f32", "f16", "f32", "f16"]   # the KV column, per format
    r = run_cli("bench", "--model", tiny, "--weights", "ternary", "--head", "default,bf16c", "--threads", "1",
                "--prompt-tokens", "8", "--decode-tokens", "4", "--repeats", "1", "-q")
    assert r.returncode == 0, r.stderr
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.strip().startswith("ternary")]
    assert [ln[1] for ln in rows] == ["default", "bf16c"]
    r = run_cli("bench", "--model", tiny, "--head", "int2")
    assert r.returncode == 2 and "--head int2: unknown format 'int2'" in r.stderr
    r = run_cli("bench", "--model", tiny, "--kv-dtype", "f8")
    assert r.returncode == 2 and "--kv-dtype f8: unknown KV-cache type 'f8'" in r.stderr


def test_errors_a_user_can_act_on(tmp_path):
    r = run_cli("generate", "--model", tmp_path / "missing", "--prompt", "x")
    assert r.returncode == 2 and "no such file or folder" in r.stderr
    r = run_cli("generate", "--model", tmp_path, "--prompt", "x")
    assert r.returncode == 2 and "neither a Hugging Face folder" in r.stderr
    r = run_cli("generate", "--weights", "int3", "--prompt", "x")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = run_cli("bench", "--threads", "0")
    assert r.returncode == 2 and "threads" in r.stderr
    r = run_cli()
    assert r.returncode == 2 and "generate" in r.stdout


def test_default_model_offline_error_names_the_way_out(tmp_path):
    env_home = tmp_path / "home"
    env = {"PIP_NO_INDEX": "1"}
    os.environ.update(env)
    try:
        r = run_cli("generate", "--prompt", "hi", home=env_home)
    finally:
        for k in env:
            os.environ.pop(k, None)
    assert r.returncode == 2
    assert "could not obtain the default model" in r.stderr and "--model PATH" in r.stderr
