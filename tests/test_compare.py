"""ternlm.compare end to end on tiny checkpoints: every number in a row is checked against
an independent computation (weights from the checkpoint, perplexity from Model.perplexity,
file size from Model.save), and bad requests fail with errors that name the culprit."""
import json
import os

import numpy as np
import pytest

import ternlm
from ternlm.compare import FormatError, main
from ternlm.compare.table import ComparisonTable

TEXT = ("Once upon a time there was a small language model that ran on a CPU. "
        "It read every weight once for each token it wrote, so memory was its limit. ") * 6
SMALL = dict(prompt_tokens=12, decode_tokens=4, max_tokens_ppl=48, window=32, stride=16, repeats=1,
             threads=1, bandwidth=20.0, progress=False)


@pytest.fixture(scope="module")
def tiny(llama_folders):
    return llama_folders["tied_bf16"]       # hidden 64, FFN 160, 2 layers, tied embeddings


@pytest.fixture(scope="module")
def table(tiny):
    return ternlm.compare(tiny, text=TEXT, **SMALL)


def expected_accounting(path, fmt):
    """Bits per weight and bytes per token from the loaded matrices, computed here."""
    m = ternlm.load(path, weights=fmt, threads=1, context=64, progress=False)
    mats = {k: v for k, v in m._matrices.items() if isinstance(v, ternlm.QuantizedMatrix)}
    norms = {k: v for k, v in m._matrices.items() if not isinstance(v, ternlm.QuantizedMatrix)}
    layer = {k: v for k, v in mats.items() if k.startswith("layers.")}
    layer_bits = 8 * sum(v.nbytes for v in layer.values()) / sum(np.prod(v.shape) for v in layer.values())
    norm_bytes = sum(np.asarray(v).nbytes for v in norms.values())
    embed = mats["embed"]
    head = mats.get("lm_head", embed)
    per_token = sum(v.nbytes for v in layer.values()) + head.nbytes + norm_bytes + embed.nbytes // embed.shape[0]
    total = sum(v.nbytes for v in mats.values()) + norm_bytes
    return m, layer_bits, per_token, total


def test_rows_in_order_with_every_key(table):
    assert isinstance(table, ComparisonTable) and table.column("format") == ["bf16", "int4", "ternary"]
    keys = {"layer_bits_per_weight", "model_bits_per_weight", "weight_bytes", "file_bytes", "peak_rss_mb",
            "load_s", "prefill_tok_s", "decode_tok_s", "ppl", "bytes_per_token", "bandwidth_gb_s",
            "roofline_tok_s", "achieved", "prompt_tokens", "decode_tokens", "ppl_tokens"}
    for r in table:
        assert keys <= set(r), keys - set(r)
        assert r["load_s"] > 0 and r["prefill_tok_s"] > 0 and 0 < r["peak_rss_mb"] < 8000
        assert 1 <= r["decode_tokens"] <= 4 and r["prompt_tokens"] >= 6
    assert table.meta["isolated"] and table.meta["threads"] == 1 and table.meta["window"] == 32


@pytest.mark.parametrize("fmt", ["bf16", "int4", "ternary"])
def test_sizes_and_roofline_match_an_independent_count(tiny, table, fmt):
    row = table.row(fmt)
    m, layer_bits, per_token, total = expected_accounting(tiny, fmt)
    assert row["layer_bits_per_weight"] == pytest.approx(layer_bits, rel=1e-12)
    assert row["bytes_per_token"] == per_token and row["weight_bytes"] == total
    assert row["roofline_tok_s"] == pytest.approx(20.0e9 / per_token, rel=1e-12)
    assert row["achieved"] == pytest.approx(row["decode_tok_s"] / row["roofline_tok_s"], rel=1e-12)
    if fmt == "bf16":
        assert row["layer_bits_per_weight"] == 16.0
    if fmt == "int4":      # 4-bit codes + fp16 scale and min per group of 32, rows padded
        assert row["layer_bits_per_weight"] >= 5.0


@pytest.mark.parametrize("fmt", ["bf16", "ternary"])
def test_perplexity_is_the_models_sliding_window_perplexity(tiny, table, fmt):
    m, *_ = expected_accounting(tiny, fmt)
    ids = m.tokenizer.encode(TEXT)[:48]
    assert table.row(fmt)["ppl_tokens"] == len(ids) == 48
    assert table.row(fmt)["ppl"] == pytest.approx(m.perplexity(ids, window=32, stride=16), rel=1e-6)


@pytest.mark.parametrize("fmt", ["bf16", "ternary"])
def test_file_size_is_the_folder_model_save_writes(tiny, table, fmt, tmp_path):
    m, *_ = expected_accounting(tiny, fmt)
    m.save(tmp_path / "saved")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp_path) for f in fs)
    assert table.row(fmt)["file_bytes"] == size


def test_in_process_gives_the_same_numbers(tiny, table):
    t2 = ternlm.compare(tiny, formats=["int4"], text=TEXT, isolate=False, save_file=False, **SMALL)
    a, b = table.row("int4"), t2.row("int4")
    for key in ("layer_bits_per_weight", "model_bits_per_weight", "bytes_per_token", "ppl", "ppl_tokens"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key
    assert b["file_bytes"] is None and t2.meta["isolated"] is False


def test_bad_requests_name_the_problem(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown format.*'int8'"):
        ternlm.compare(tiny, formats=["bf16", "int8"], text=TEXT, **SMALL)
    with pytest.raises(ValueError, match="duplicates"):
        ternlm.compare(tiny, formats="bf16,bf16", text=TEXT, **SMALL)
    with pytest.raises(FileNotFoundError, match="nope"):
        ternlm.compare(tmp_path / "nope", text=TEXT, **SMALL)
    with pytest.raises(ValueError, match=r"stride \(40\) must be <= window \(32\)"):
        ternlm.compare(tiny, text=TEXT, **dict(SMALL, stride=40))
    with pytest.raises(ValueError, match="decode_tokens"):
        ternlm.compare(tiny, text=TEXT, **dict(SMALL, decode_tokens=0))


def test_a_format_the_model_cannot_take_is_a_clear_error(tmp_path):
    # hidden 48 is not a multiple of the int4 group (32): int4 must fail, naming the format.
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import save_tokenizer
    folder = tmp_path / "hidden48"
    fast = save_tokenizer(folder, "bytelevel")
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    with pytest.raises(FormatError, match=r"cannot be run as int4: .*group_size 32 does not divide"):
        ternlm.compare(folder, formats=["int4"], text=TEXT, **SMALL)


def test_cli_writes_table_json_and_plot(tiny, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    code = main(["--model", tiny, "--formats", "bf16,ternary", "--text", str(text), "--threads", "1",
                 "--json", str(out_json), "--plot", str(out_png), "--prompt-tokens", "8",
                 "--decode-tokens", "2", "--ppl-tokens", "40", "--window", "32", "--stride", "16",
                 "--repeats", "1", "--bandwidth", "20"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "bits/w layers" in printed and "ternary" in printed and "text.txt" in printed
    data = json.loads(out_json.read_text())
    assert [r["format"] for r in data["rows"]] == ["bf16", "ternary"] and data["meta"]["ppl_tokens"] == 40
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_cli_reports_errors_without_a_traceback(tiny, capsys):
    assert main(["--model", tiny, "--formats", "fp8"]) == 2
    err = capsys.readouterr().err
    assert "ternlm compare: error: unknown format(s) 'fp8'" in err and "Traceback" not in err


def test_ternlm_cli_routes_compare_here(tiny, capsys):
    from ternlm.cli import main as ternlm_main
    assert ternlm_main(["compare", "--model", tiny, "--formats", "int4,int4"]) == 2
    assert "duplicates" in capsys.readouterr().err
