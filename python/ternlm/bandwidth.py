"""The machine's memory read bandwidth, measured by ternlm's own C++ probe and cached.

    ternlm.bandwidth.read_bandwidth(threads=None, refresh=False) -> GB/s (1 GB = 1e9 bytes)
    ternlm.bandwidth.bandwidth_measurement(threads=None) -> Measurement (GB/s, when, cached?)

Decoding one token of a weight-bound model reads every weight once, so
`bandwidth / weight bytes per token` is the most tokens/s any engine can reach on this
machine (the roofline the comparison reports). The probe (cpp/runtime/bandwidth.cc) reads
a 1 GiB buffer, far beyond any last-level cache, with `threads` threads and keeps the best
of 5 runs.

The result is cached in `$TERNLM_HOME/bandwidth.json` (default `~/.cache/ternlm/`), keyed
by CPU model, thread count and probe size, because a measurement takes a second or two and
the number belongs to the machine. A cached figure expires after `max_age_s` (default
MAX_AGE_S, 7 days) and is then measured again: the same machine reads at quite different
speeds on different days (other tenants of a VM host, memory clocks, kernel updates), and a
stale figure would skew every roofline. `bandwidth_measurement` returns the figure with
when it was measured, so that whoever prints it can say how old it is. `refresh=True`
measures again (do so when comparing against speeds taken now on a busy machine: the
figure drifts by ±10% run to run).
`isolate=True` runs the probe in a child Python process (bandwidth.main), so that
its 1 GiB buffer never counts toward this process's peak memory (ternlm.compare does so).
"""
from __future__ import annotations

import calendar
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from ._native import core as _core

DEFAULT_BYTES = 1 << 30
DEFAULT_REPEATS = 5
CACHE_FILE = "bandwidth.json"
MAX_AGE_S = 7 * 24 * 3600        # a cached figure older than this is measured again
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"   # measured_at in the cache file, UTC


@dataclass(frozen=True)
class Measurement:
    """A read-bandwidth figure and where it came from.

    gb_per_s: GB/s (1e9 bytes). measured_at: Unix time of the probe run. cached: True when
    read from the cache file, False when this call ran the probe."""
    gb_per_s: float
    measured_at: float
    cached: bool

    @property
    def age_s(self) -> float:
        """Seconds since the probe ran (0 for a clock that went backwards)."""
        return max(0.0, time.time() - self.measured_at)

    @property
    def measured_at_utc(self) -> str:
        return time.strftime(_TIME_FORMAT, time.gmtime(self.measured_at))

    def describe(self) -> str:
        """e.g. "32.4 GB/s, measured now" or "32.4 GB/s, measured 3 days ago" """
        return f"{self.gb_per_s:.1f} GB/s, measured {age_text(self.age_s) if self.cached else 'now'}"


def age_text(seconds: float) -> str:
    """A rounded age for people: "just now", "12 minutes ago", "5 hours ago", "3 days ago"."""
    seconds = max(0.0, float(seconds))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        n = int(seconds // size)
        if n >= 1:
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


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


def _cached_measurement(entry):
    """A cache entry as a Measurement, or None when it is not a usable one (no positive
    figure, or no readable measured_at: an entry of unknown age counts as expired)."""
    if not isinstance(entry, dict):
        return None
    gbs, when = entry.get("gb_per_s"), entry.get("measured_at")
    if isinstance(gbs, bool) or not isinstance(gbs, (int, float)) or not gbs > 0 or not isinstance(when, str):
        return None
    try:
        t = calendar.timegm(time.strptime(when, _TIME_FORMAT))
    except ValueError:
        return None
    return Measurement(float(gbs), float(t), cached=True)


def bandwidth_measurement(threads=None, refresh=False, nbytes=DEFAULT_BYTES, repeats=DEFAULT_REPEATS,
                          isolate=False, max_age_s=MAX_AGE_S) -> Measurement:
    """This machine's streaming read bandwidth for `threads` threads (None: all cores) as a
    Measurement: from the cache if it was measured with the same settings less than
    `max_age_s` seconds ago, else measured now and cached. refresh=True always measures
    (and updates the cache). isolate=True measures in a child process (see
    measure_read_bandwidth_isolated)."""
    n = resolve_threads(threads)
    path = os.path.join(cache_dir(), CACHE_FILE)
    key = _cache_key(n, int(nbytes), int(repeats))
    if not refresh:
        hit = _cached_measurement(_read_cache(path).get(key))
        if hit is not None and hit.age_s <= max_age_s:
            return hit
    measure = measure_read_bandwidth_isolated if isolate else measure_read_bandwidth
    now = Measurement(float(measure(n, nbytes, repeats)), time.time(), cached=False)
    data = _read_cache(path)
    data[key] = {"gb_per_s": now.gb_per_s, "measured_at": now.measured_at_utc}
    try:
        _write_cache(path, data)
    except OSError:
        pass                         # a read-only home still gets the measurement
    return now


def read_bandwidth(threads=None, refresh=False, nbytes=DEFAULT_BYTES, repeats=DEFAULT_REPEATS,
                   isolate=False, max_age_s=MAX_AGE_S) -> float:
    """bandwidth_measurement(...).gb_per_s: the figure alone, in GB/s."""
    return bandwidth_measurement(threads, refresh, nbytes, repeats, isolate, max_age_s).gb_per_s


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


__all__ = ["read_bandwidth", "bandwidth_measurement", "Measurement", "age_text", "MAX_AGE_S",
           "measure_read_bandwidth", "measure_read_bandwidth_isolated", "cpu_model",
           "cache_dir", "resolve_threads"]
