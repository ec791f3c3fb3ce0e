"""The read-bandwidth probe, its cache, and the default perplexity text."""
import json
import os
from pathlib import Path

import pytest

import ternlm
from ternlm import bandwidth, texts

SMALL = 1 << 22   # 4 MiB: enough to exercise every thread, fast on a 2-core CI machine


def test_probe_returns_a_positive_rate_for_one_and_all_threads():
    for threads in (1, 0):                                # 0: all cores
        gbs = ternlm._core.measure_read_bandwidth(threads, SMALL, 2)
        assert 0.1 < gbs < 100_000


def test_probe_handles_sizes_that_are_not_whole_chunks():
    # 64 KiB + 1 byte: one partial chunk is dropped, the checksum inside the probe still
    # verifies that every word it counted was read exactly once (it raises otherwise).
    assert ternlm._core.measure_read_bandwidth(2, (1 << 16) + 1, 1) > 0


@pytest.mark.parametrize("args, match", [
    ((1, 1000, 1), "bytes must be >= 65536"),
    ((1, SMALL, 0), "repeats must be >= 1"),
    ((-1, SMALL, 1), "threads must be >= 0"),
    ((1, -5, 1), "bytes must be > 0"),
])
def test_probe_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        ternlm._core.measure_read_bandwidth(*args)


def test_read_bandwidth_is_cached_per_cpu_and_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("TERNLM_HOME", str(tmp_path))
    calls = []
    real = bandwidth.measure_read_bandwidth
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    first = bandwidth.read_bandwidth(1, nbytes=SMALL, repeats=1)
    again = bandwidth.read_bandwidth(1, nbytes=SMALL, repeats=1)
    assert first == again and len(calls) == 1             # second call came from the cache
    bandwidth.read_bandwidth(2, nbytes=SMALL, repeats=1)  # other thread count: measured
    assert len(calls) == 2
    bandwidth.read_bandwidth(1, refresh=True, nbytes=SMALL, repeats=1)
    assert len(calls) == 3
    data = json.loads((tmp_path / "bandwidth.json").read_text())
    keys = sorted(data)
    assert len(keys) == 2 and all(bandwidth.cpu_model() in k for k in keys)
    assert any("| 1 threads |" in k for k in keys) and any("| 2 threads |" in k for k in keys)


def test_damaged_cache_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("TERNLM_HOME", str(tmp_path))
    (tmp_path / "bandwidth.json").write_text("{not json")
    assert bandwidth.read_bandwidth(1, nbytes=SMALL, repeats=1) > 0
    assert len(json.loads((tmp_path / "bandwidth.json").read_text())) == 1


@pytest.mark.parametrize("threads", [0, -2, 1.5, True, "2"])
def test_read_bandwidth_rejects_bad_thread_counts(threads):
    with pytest.raises(ValueError, match="threads"):
        bandwidth.read_bandwidth(threads, nbytes=SMALL)


def test_default_text_is_english_prose_from_a_package():
    t = texts.default_text()
    if os.path.exists(texts.DEBIAN_GPL3):
        assert t.source == texts.DEBIAN_GPL3 and "GNU GENERAL PUBLIC LICENSE" in t.text
    else:
        assert t.source.endswith("topics.py")
    words = t.text.split()
    assert len(words) > 5000 and sum(w.lower() in ("the", "of", "and", "to") for w in words) > 300


def test_text_arguments(tmp_path):
    assert texts.as_text("some words").text == "some words"
    f = tmp_path / "doc.txt"
    f.write_text("Call me Ishmael.", encoding="utf-8")
    assert texts.as_text(Path(f)).text == "Call me Ishmael."
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="bad.txt: not UTF-8"):
        texts.read_text(bad)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        texts.read_text(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="empty"):
        texts.as_text("   ")
    with pytest.raises(TypeError, match="text must be"):
        texts.as_text(42)


def _write_cache_entry(tmp_path, threads, gbs, age_s):
    import time
    key = bandwidth._cache_key(threads, SMALL, 1)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - age_s))
    (tmp_path / "bandwidth.json").write_text(json.dumps({key: {"gb_per_s": gbs, "measured_at": when}}))


def test_a_cached_figure_expires_after_a_week_and_says_how_old_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("TERNLM_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", lambda *a, **k: calls.append(a) or 42.0)

    _write_cache_entry(tmp_path, 1, 15.7, age_s=3 * 86400 + 60)          # 3 days: still used
    got = bandwidth.bandwidth_measurement(1, nbytes=SMALL, repeats=1)
    assert got.gb_per_s == 15.7 and got.cached and not calls
    assert abs(got.age_s - (3 * 86400 + 60)) < 5 and got.describe() == "15.7 GB/s, measured 3 days ago"

    _write_cache_entry(tmp_path, 1, 15.7, age_s=bandwidth.MAX_AGE_S + 3600)   # 7 days and an hour
    got = bandwidth.bandwidth_measurement(1, nbytes=SMALL, repeats=1)
    assert got.gb_per_s == 42.0 and not got.cached and len(calls) == 1
    assert got.describe() == "42.0 GB/s, measured now"
    entry = json.loads((tmp_path / "bandwidth.json").read_text())[bandwidth._cache_key(1, SMALL, 1)]
    assert entry["gb_per_s"] == 42.0 and entry["measured_at"] == got.measured_at_utc   # the cache is renewed
    assert bandwidth.read_bandwidth(1, nbytes=SMALL, repeats=1) == 42.0 and len(calls) == 1

    # a shorter max_age_s, and an entry of unknown age (no measured_at), are measured again
    assert bandwidth.read_bandwidth(1, nbytes=SMALL, repeats=1, max_age_s=0) == 42.0 and len(calls) == 2
    key = bandwidth._cache_key(1, SMALL, 1)
    (tmp_path / "bandwidth.json").write_text(json.dumps({key: {"gb_per_s": 15.7}}))
    assert bandwidth.read_bandwidth(1, nbytes=SMALL, repeats=1) == 42.0 and len(calls) == 3


def test_age_text():
    assert bandwidth.age_text(5) == "just now"
    assert bandwidth.age_text(60) == "1 minute ago" and bandwidth.age_text(7200) == "2 hours ago"
    assert bandwidth.age_text(8 * 86400) == "8 days ago"


def test_compare_caption_shows_the_bandwidths_age(tmp_path, monkeypatch, llama_folders):
    """ternlm.compare reads the (fake, 2-day-old) cached figure and its table says how old it is."""
    monkeypatch.setenv("TERNLM_HOME", str(tmp_path))
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth_isolated",
                        lambda *a, **k: pytest.fail("a 2-day-old figure must come from the cache"))
    threads = 1
    key = bandwidth._cache_key(threads, bandwidth.DEFAULT_BYTES, bandwidth.DEFAULT_REPEATS)
    import time
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2 * 86400 - 100))
    (tmp_path / "bandwidth.json").write_text(json.dumps({key: {"gb_per_s": 15.7, "measured_at": when}}))
    table = ternlm.compare(llama_folders["gqa_f32"], formats=["bf16"], text="the cat sat on the mat " * 20,
                           threads=threads, prompt_tokens=4, decode_tokens=2, max_tokens_ppl=24, window=16,
                           stride=8, repeats=1, save_file=False, isolate=False, progress=False)
    assert table.meta["bandwidth_source"] == "cache" and table.meta["bandwidth_measured_at"] == when
    assert table.meta["bandwidth_age_s"] >= 2 * 86400
    caption = repr(table).splitlines()[0]
    assert "15.7 GB/s, measured 2 days ago" in caption
    assert "measured 2 days ago" in str(table).split("\n\n")[-1]          # the legend says it too
