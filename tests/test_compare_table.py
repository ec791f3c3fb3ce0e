"""ComparisonTable formatting, JSON and plot, on rows shaped like ternlm.compare's."""
import json

import pytest

from ternlm.compare.table import COLUMNS, ComparisonTable


def fake_rows():
    base = dict(prompt_tokens=128, decode_tokens=32, ppl_tokens=1024, threads=2, bandwidth_gb_s=40.0)
    return [
        dict(base, format="bf16", layer_bits_per_weight=16.0, model_bits_per_weight=16.0,
             weight_bytes=270_000_000, file_bytes=270_500_000, peak_rss_mb=410.0, load_s=1.5,
             prefill_tok_s=300.0, decode_tok_s=90.0, ppl=3.21, bytes_per_token=268_000_000,
             roofline_tok_s=149.25, achieved=90.0 / 149.25),
        dict(base, format="int4", layer_bits_per_weight=5.0, model_bits_per_weight=8.6,
             weight_bytes=145_000_000, file_bytes=145_300_000, peak_rss_mb=300.0, load_s=2.0,
             prefill_tok_s=250.0, decode_tok_s=140.0, ppl=3.35, bytes_per_token=140_000_000,
             roofline_tok_s=285.7, achieved=140.0 / 285.7),
        dict(base, format="ternary", layer_bits_per_weight=2.67, model_bits_per_weight=7.4,
             weight_bytes=120_000_000, file_bytes=None, peak_rss_mb=280.0, load_s=2.2,
             prefill_tok_s=280.0, decode_tok_s=None, ppl=950.0, bytes_per_token=115_000_000,
             roofline_tok_s=347.8, achieved=None),
    ]


def test_table_is_a_list_of_dicts_with_meta():
    t = ComparisonTable(fake_rows(), {"model": "m.gguf", "threads": 2, "bandwidth_gb_s": 40.0})
    assert isinstance(t, list) and len(t) == 3
    assert t[1]["format"] == "int4" and t.row("ternary")["ppl"] == 950.0
    assert t.column("format") == ["bf16", "int4", "ternary"]
    with pytest.raises(KeyError, match="f32"):
        t.row("f32")


def test_repr_shows_every_column_and_dashes_for_missing_values():
    t = ComparisonTable(fake_rows(), {"model": "m.gguf", "threads": 2, "bandwidth_gb_s": 40.0})
    text = repr(t)
    lines = text.splitlines()
    assert "model: m.gguf" in lines[0] and "40.0 GB/s" in lines[0]
    for _, header, _ in COLUMNS:
        assert header in lines[1]
    ternary_line = next(line for line in lines if line.startswith("ternary"))
    assert ternary_line.split().count("-") == 3          # file MB, decode tok/s, achieved
    assert "270.5" in text and "60%" in text              # file MB of bf16, achieved 90/149.25
    assert len({len(line) for line in lines[1:]}) == 1    # aligned columns


def test_html_and_markdown_escape_and_align():
    t = ComparisonTable(fake_rows(), {"model": "<evil>"})
    h = t._repr_html_()
    assert "<evil>" not in h and "&lt;evil&gt;" in h and h.count("<tr>") == 4
    md = t.to_markdown().splitlines()
    assert len(md) == 5 and all(line.count("|") == len(COLUMNS) + 1 for line in md)


def test_json_round_trip(tmp_path):
    t = ComparisonTable(fake_rows(), {"model": "m.gguf"})
    path = tmp_path / "out.json"
    text = t.to_json(path)
    assert json.loads(path.read_text()) == json.loads(text) == {"meta": {"model": "m.gguf"}, "rows": fake_rows()}
    back = ComparisonTable.from_json(path)
    assert back == t and back.meta == t.meta
    assert ComparisonTable.from_json(text) == t


def test_plot_writes_png_with_the_plotted_numbers(tmp_path):
    pytest.importorskip("matplotlib")
    t = ComparisonTable(fake_rows(), {"model": "m.gguf", "threads": 2, "bandwidth_gb_s": 40.0})
    path = tmp_path / "cmp.png"
    fig = t.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax_size, ax_speed, ax_q = fig.axes
    heights = [round(p.get_height(), 1) for p in ax_size.patches]
    assert heights == [270.5, 145.3, 120.0]               # ternary falls back to weight bytes
    assert ax_size.get_ylabel() == "MB of weights"
    speed = sorted(round(p.get_height(), 2) for p in ax_speed.patches)
    assert speed == sorted([90.0, 140.0, 0.0, 149.25, 285.7, 347.8])
    import matplotlib.pyplot as plt
    plt.close(fig)


def realistic_table():
    """A default-model-sized comparison with a random model's astronomic ternary perplexity."""
    rows = fake_rows()
    rows[0].update(peak_rss_mb=686.0, prefill_tok_s=2025.3, decode_tok_s=110.0, ppl=19.649)
    rows[2].update(file_bytes=87_600_000, decode_tok_s=269.0, achieved=269.0 / 347.8,
                   ppl=4083603443324021637120.0)
    meta = {"model": "/root/.cache/ternlm/SmolLM2-135M-Instruct.Q4_1.gguf", "threads": 2, "bandwidth_gb_s": 32.4,
            "bandwidth_source": "cache", "bandwidth_age_s": 3 * 86400 + 5, "text_name": "GNU GPL v3 (Debian base-files)",
            "ppl_tokens": 1024, "window": 512, "stride": 256, "prompt_tokens": 128, "decode_tokens": 32,
            "repeats": 3, "cpu": "AMD EPYC 9R45 96-Core Processor"}
    return ComparisonTable(rows, meta)


def test_the_printed_table_fits_100_columns_with_engineering_notation():
    t = realistic_table()
    text = str(t)
    assert max(len(line) for line in text.splitlines()) <= 100, text
    ternary = next(line for line in text.splitlines() if line.startswith("ternary"))
    assert "4.08e21" in ternary and "4083603443" not in text
    assert "19.65" in text                                      # 4 significant digits below 1e5
    assert text.startswith(repr(t) + "\n\n")                    # str: the table, then its legend


def test_engineering_notation():
    from ternlm.compare.table import eng
    assert eng(4083603443324021637120.0) == "4.08e21"
    assert eng(6786087.957) == "6.79e6" and eng(67860879.0) == "67.9e6" and eng(678608790.0) == "679e6"
    assert eng(999_600.0) == "1.00e6"                            # rounds into the next group


def test_the_legend_explains_every_column_and_achieved_above_100_percent():
    t = realistic_table()
    legend = t.legend()
    assert legend == str(t).split("\n\n", 1)[1]
    for word in ("bits/w", "model:", "file MB", "RSS MB", "load:", "prefill", "decode", "ppl:", "MB/tok",
                 "roofline:", "achieved:"):
        assert word in legend, word
    flat = " ".join(legend.split())
    assert "achieved: decode / roofline" in flat and "100%" in flat and "cache" in flat
    assert "GNU GPL v3 (Debian base-files) (1024 tokens, window 512, stride 256)" in flat
    assert "32.4 GB/s, measured 3 days ago" in flat and "AMD EPYC 9R45" in flat
    assert "model: SmolLM2-135M-Instruct.Q4_1.gguf | 2 threads | bandwidth 32.4 GB/s, measured 3 days ago" \
        == repr(t).splitlines()[0]
    assert "achieved: decode / roofline" in t._repr_html_()
    given = ComparisonTable(fake_rows(), {"bandwidth_gb_s": 40.0, "bandwidth_source": "given"})
    assert repr(given).splitlines()[0] == "bandwidth 40.0 GB/s, given"


def test_plot_labels_bits_per_weight_perplexity_cpu_and_text(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    t = realistic_table()
    fig = t.plot(tmp_path / "cmp.png")
    ax_size, ax_speed, ax_q = fig.axes
    size_labels = [a.get_text() for a in ax_size.texts]
    assert size_labels == ["16.00\nbits/weight", "8.60\nbits/weight", "7.40\nbits/weight"]
    assert [a.get_text() for a in ax_q.texts] == ["bf16: 19.65", "int4: 3.350", "ternary: 4.08e21"]
    title = fig._suptitle.get_text()
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in title and "AMD EPYC 9R45" in title
    assert "2 threads" in title and "GNU GPL v3 (Debian base-files)" in title
    plt.close(fig)
