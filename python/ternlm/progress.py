"""Progress bars only where a person watches.

    bar = progress_bar(items, desc="loading weights", unit="tensor", enabled=True)

A bar is drawn when `enabled` and someone can see it: stderr is a terminal, or the code runs
in a Jupyter kernel. Elsewhere (logs, pipes, CI, subprocesses whose output is captured) the
bar is a silent pass-through, so redirected stderr holds no carriage-return noise.

In Jupyter, tqdm.auto draws an ipywidgets bar, and without ipywidgets installed it warns
"TqdmWarning: IProgress not found" and draws nothing useful; so the widget bar is used only
when ipywidgets imports, and plain tqdm (text on the cell's stderr) otherwise.
"""
from __future__ import annotations

import importlib.util
import sys


def in_notebook() -> bool:
    """True inside a Jupyter (ipykernel) kernel: its stderr is not a terminal, yet a
    person reads the cell's output."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def watched(stream=None) -> bool:
    """Whether a person probably watches `stream` (default sys.stderr)."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream is not None and stream.isatty():
            return True
    except (AttributeError, ValueError):        # no isatty, or closed
        pass
    return in_notebook()


def progress_bar(iterable=None, enabled=True, delay=0.0, **kwargs):
    """tqdm over `iterable` (kwargs go to tqdm), drawn only if `enabled` and watched();
    `delay` seconds pass before it first appears, so short work shows nothing."""
    from tqdm import tqdm as text_bar
    if not (enabled and watched()):
        return text_bar(iterable, disable=True, **kwargs)
    if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as widget_bar
        return widget_bar(iterable, delay=delay, **kwargs)
    return text_bar(iterable, delay=delay, file=sys.stderr, **kwargs)


__all__ = ["progress_bar", "watched", "in_notebook"]
