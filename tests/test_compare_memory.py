"""ternlm.compare's peak RSS is each format's own: the workers read VmHWM (which starts afresh
at exec, unlike ru_maxrss) and the 1 GiB bandwidth probe runs in a process of its own."""
import sys

import numpy as np
import pytest

import ternlm
from ternlm import bandwidth, memory

TEXT = ("Once upon a time there was a small language model that ran on a CPU. "
        "It read every weight once for each token it wrote, so memory was its limit. ") * 6
SMALL = dict(prompt_tokens=12, decode_tokens=4, max_tokens_ppl=48, window=32, stride=16, repeats=1,
             threads=1, progress=False, save_file=False)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-peak carry-over is Linux's")


def _in_process_probe(*args, **kwargs):
    raise AssertionError("the bandwidth probe ran inside the parent process")


@linux_only
def test_rows_report_their_own_peak_not_the_parents(llama_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("TERNLM_HOME", str(tmp_path))          # no cached figure: compare must probe
    probes = []
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", _in_process_probe)
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth_isolated",
                        lambda *a, **k: probes.append(a) or 20.0)
    block = np.ones(600 << 20, dtype=np.uint8)                  # the parent's peak: 600 MB more
    parent_peak = memory.peak_rss_mb()
    assert parent_peak > 600
    table = ternlm.compare(llama_folders["tied_bf16"], formats=["bf16", "ternary"], text=TEXT, **SMALL)
    del block
    assert len(probes) == 1 and table.meta["bandwidth_gb_s"] == 20.0
    for row in table:      # a tiny model's worker: Python, numpy, tokenizers, the core: ~100 MB
        assert 0 < row["peak_rss_mb"] < parent_peak - 400, (row["format"], row["peak_rss_mb"], parent_peak)


@linux_only
def test_isolated_probe_leaves_this_process_peak_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("TERNLM_HOME", str(tmp_path))
    monkeypatch.setattr(bandwidth, "measure_read_bandwidth", _in_process_probe)
    before = memory.peak_rss_mb()
    gbs = bandwidth.read_bandwidth(1, nbytes=256 << 20, repeats=1, isolate=True)
    assert 0.1 < gbs < 100_000
    assert memory.peak_rss_mb() < before + 64                 # the 256 MiB buffer was elsewhere
    assert bandwidth.read_bandwidth(1, nbytes=256 << 20, repeats=1, isolate=True) == gbs    # cached


def test_probe_process_reports_errors():
    with pytest.raises(RuntimeError, match="bandwidth probe process failed"):
        bandwidth.measure_read_bandwidth_isolated(1, nbytes=1000, repeats=1)    # < 64 KiB: refused
