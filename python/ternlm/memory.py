"""This process's peak resident memory, the same way on every OS.

    ternlm.memory.peak_rss_mb() -> float MB (2**20 bytes), or None where it cannot be read
    ternlm.memory.peak_rss_source() -> what the number is, or why there is none

Sources, first that works:
  Linux    VmHWM in /proc/self/status (kB): the high-water mark of this process's own
           address space, which starts afresh at exec. Not ru_maxrss: the kernel carries
           that across exec (and Python's subprocess starts children with vfork, whose
           child execs from the parent's address space), so a worker started by a big
           parent would report at least the parent's peak.
  Linux    ru_maxrss (KiB), when /proc is not mounted.
  macOS    ru_maxrss, in bytes there.
  other    psutil's peak working set (Windows: peak_wset), when psutil is importable.
`resource` is imported only where it is called: it does not exist on Windows.
"""
from __future__ import annotations

import sys

_MB = float(1 << 20)


def _vmhwm_mb():
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / _MB          # "VmHWM:  1234 kB"
    except (OSError, ValueError, IndexError):
        pass
    return None


def _ru_maxrss_mb(platform: str):
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux and the BSDs report KiB; macOS reports bytes.
    return peak / _MB if platform == "darwin" else peak * 1024 / _MB


def _psutil_mb():
    try:
        import psutil
    except ImportError:
        return None
    info = psutil.Process().memory_info()
    peak = getattr(info, "peak_wset", None)      # Windows; elsewhere psutil has no peak field
    return None if peak is None else peak / _MB


def _measure(platform: str):
    """(MB or None, description) for `platform` (a sys.platform value)."""
    if platform.startswith("linux"):
        mb = _vmhwm_mb()
        if mb is not None:
            return mb, "VmHWM (/proc/self/status)"
    if platform != "win32":
        mb = _ru_maxrss_mb(platform)
        if mb is not None:
            return mb, "ru_maxrss (" + ("bytes" if platform == "darwin" else "KiB") + ")"
    mb = _psutil_mb()
    if mb is not None:
        return mb, "psutil peak working set"
    return None, (f"peak RSS is not available on {platform}: "
                  f"install psutil (pip install psutil) to measure it there")


def peak_rss_mb():
    """This process's peak resident set size so far in MB (2**20 bytes), or None where no
    source exists (peak_rss_source() then says why)."""
    return _measure(sys.platform)[0]


def peak_rss_source() -> str:
    """Where peak_rss_mb() reads from on this machine, or the reason it returns None."""
    return _measure(sys.platform)[1]


__all__ = ["peak_rss_mb", "peak_rss_source"]
