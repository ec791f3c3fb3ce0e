"""The machine's memory read bandwidth, measured by ternlm's own C++ probe and cached.

    ternlm.bandwidth.read_bandwidth(threads=None, refresh=False) -> GB/s (1 GB = 1e9 bytes)

Decoding one token of a weight-bound model reads every weight once, so
`bandwidth / weight bytes per token` is the most tokens/s any engine can reach on this
machine (the roofline the comparison reports). The probe (cpp/runtime/bandwidth.cc) reads
a 1 GiB buffer, far beyond any last-level cache, with `threads` threads and keeps the best
of 5 runs.

The result is cached in `$TERNLM_HOME/bandwidth.json` (default `~/.cache/ternlm/`), keyed
by CPU model, thread count and probe size, because a measurement takes a second or two and
the number belongs to the machine. `refresh=True` measures again (do so when comparing
against speeds taken now on a busy machine: the figure drifts by ±10% run to run).
`isolate=True` runs the probe in a child Python process (bandwidth.main), so that
its 1 GiB buffer never counts toward this process's peak memory (ternlm.compare does so).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from ._native import core as _core

DEFAULT_BYTES = 1 << 30
DEFAULT_REPEATS = 5
CACHE_FILE = "bandwidth.json"


def cache_dir() -> str:
    """$TERNLM_HOME, else ~/.cache/ternlm (created on first write)."""
    home = os.environ.get("TERNLM_HOME")
    return home if home else os.path.join(os.path.expanduser("~"), ".cache", "ternlm")


def cpu_model() -> str:
    """A human-readable CPU name: /proc/cpuinfo on Linux, sysctl on macOS, else platform."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown cpu"


def resolve_threads(threads) -> int:
    """None -> all cores of this machine; an int >= 1 as is; anything else is a ValueError."""
    if threads is None:
        return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be None (all cores) or an int >= 1, got {threads!r}")
    return threads


def measure_read_bandwidth(threads=None, nbytes=DEFAULT_BYTES, repeats=DEFAULT_REPEATS) -> float:
    """Run the probe now (no cache): GB/s reading `nbytes` (>= 64 KiB) with `threads`
    threads, best of `repeats`. The GIL is released while it runs."""
    return float(_core.measure_read_bandwidth(resolve_threads(threads), int(nbytes), int(repeats)))


def _child_env() -> dict:
    """This environment with the folder holding this ternlm package first on PYTHONPATH, so
    a child process imports the same ternlm (and, through TERNLM_CORE_DIR, the same core)."""
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def measure_read_bandwidth_isolated(threads=None, nbytes=DEFAULT_BYTES, repeats=DEFAULT_REPEATS,
                                    timeout=600) -> float:
    """measure_read_bandwidth in a fresh Python process: the probe's buffer is allocated
    and touched there, not in this process (whose peak RSS would otherwise grow by nbytes)."""
    # -c rather than -m: `import ternlm` already imports this module, and runpy warns then.
    cmd = [sys.executable, "-c", "import sys; from ternlm.bandwidth import main; sys.exit(main())",
           str(resolve_threads(threads)), str(int(nbytes)), str(int(repeats))]
    proc = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the bandwidth probe process failed (exit code {proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    try:
        return float(json.loads(proc.stdout)["gb_per_s"])
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f"the bandwidth probe process printed {proc.stdout[-500:]!r}") from None


def _cache_key(threads: int, nbytes: int, repeats: int) -> str:
    return f"{cpu_model()} | {os.cpu_count()} cpus | {threads} threads | {nbytes} bytes | best of {repeats}"


def _read_cache(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}                    # missing or damaged: it is only a cache


def _write_cache(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Write a temporary file and rename it, so concurrent writers never leave half a file.
    fd, tmp = tempfile.mkstemp(prefix=".bandwidth.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_bandwidth(threads=None, refresh=False, nbytes=DEFAULT_BYTES, repeats=DEFAULT_REPEATS,
                   isolate=False) -> float:
    """This machine's streaming read bandwidth in GB/s for `threads` threads (None: all
    cores), from the cache if it was measured before with the same settings, else measured
    now and cached. refresh=True always measures (and updates the cache). isolate=True
    measures in a child process (see measure_read_bandwidth_isolated)."""
    n = resolve_threads(threads)
    path = os.path.join(cache_dir(), CACHE_FILE)
    key = _cache_key(n, int(nbytes), int(repeats))
    if not refresh:
        entry = _read_cache(path).get(key)
        if isinstance(entry, dict) and isinstance(entry.get("gb_per_s"), (int, float)) and entry["gb_per_s"] > 0:
            return float(entry["gb_per_s"])
    measure = measure_read_bandwidth_isolated if isolate else measure_read_bandwidth
    gbs = measure(n, nbytes, repeats)
    data = _read_cache(path)
    data[key] = {"gb_per_s": gbs, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        _write_cache(path, data)
    except OSError:
        pass                         # a read-only home still gets the measurement
    return gbs


def main(argv=None) -> int:
    """main([THREADS, BYTES, REPEATS]) (default: sys.argv[1:]): one uncached measurement,
    printed as {"gb_per_s": ...}; the child of measure_read_bandwidth_isolated."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: ternlm.bandwidth.main([THREADS, BYTES, REPEATS])", file=sys.stderr)
        return 2
    threads, nbytes, repeats = (int(a) for a in argv)
    print(json.dumps({"gb_per_s": measure_read_bandwidth(threads, nbytes, repeats)}))
    return 0


__all__ = ["read_bandwidth", "measure_read_bandwidth", "measure_read_bandwidth_isolated", "cpu_model",
           "cache_dir", "resolve_threads"]
