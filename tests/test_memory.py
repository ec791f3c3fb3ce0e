"""ternlm.memory.peak_rss_mb: one rule for every OS, and every caller uses it."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ternlm import memory

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_linux_reads_vmhwm_and_sees_a_new_allocation():
    before = memory.peak_rss_mb()
    assert memory.peak_rss_source().startswith("VmHWM")
    with open("/proc/self/status", encoding="ascii") as f:
        hwm_kb = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
    assert before == pytest.approx(hwm_kb / 1024, abs=64)     # MB = 2**20 bytes; RSS moves a bit
    block = np.ones(96 << 20, dtype=np.uint8)                  # 96 MiB, every page touched
    with open("/proc/self/status", encoding="ascii") as f:
        rss_now = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024
    peak = memory.peak_rss_mb()
    assert peak >= rss_now - 1 and peak >= before and rss_now >= 96
    del block


@pytest.mark.parametrize("platform, factor", [("linux", 1024), ("darwin", 1)])
def test_ru_maxrss_units_per_os(monkeypatch, platform, factor):
    """Without /proc: Linux's ru_maxrss is KiB, macOS's is bytes."""
    resource = pytest.importorskip("resource")

    class Usage:
        ru_maxrss = 300 * (1 << 20) // factor                  # 300 MB in that OS's unit
    monkeypatch.setattr(memory, "_vmhwm_mb", lambda: None)
    monkeypatch.setattr(resource, "getrusage", lambda who: Usage)
    mb, source = memory._measure(platform)
    assert mb == pytest.approx(300.0) and "ru_maxrss" in source
    assert ("bytes" if platform == "darwin" else "KiB") in source


def test_windows_uses_psutil_or_says_why_not(monkeypatch):
    class Info:
        peak_wset = 512 << 20

    class Process:
        def memory_info(self):
            return Info()
    fake = type(sys)("psutil")
    fake.Process = Process
    monkeypatch.setitem(sys.modules, "psutil", fake)
    assert memory._measure("win32") == (512.0, "psutil peak working set")
    monkeypatch.setitem(sys.modules, "psutil", None)          # import psutil -> ImportError
    mb, why = memory._measure("win32")
    assert mb is None and "psutil" in why and "win32" in why


def test_import_ternlm_needs_no_resource_module():
    """`resource` does not exist on Windows: importing ternlm must not need it."""
    code = ("import sys; sys.modules['resource'] = None\n"
            "import ternlm, ternlm.bench, ternlm.compare.worker, ternlm.memory\n"
            "print(ternlm.memory.peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) > 0


def test_one_implementation():
    """No module keeps its own copy of the peak-RSS rule."""
    offenders = []
    for folder in ("python", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "memory.py":
                continue
            text = path.read_text(encoding="utf-8")
            if "getrusage" in text:
                offenders.append(str(path.relative_to(ROOT)))
            if "def _peak_rss_mb" in text or "def peak_rss_mb" in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders
