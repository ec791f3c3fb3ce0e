"""Warnings and error messages about how ternlm is called, not about a model's numbers:
settings that work but run badly (more threads than cores, a context beyond what the model
was trained for) and paths that are not what the caller meant (a Hugging Face Hub id).

Every warning here is a TernlmWarning (a UserWarning), so that callers can filter them in
one line and the `ternlm` command can print them as one-line notes.
"""
from __future__ import annotations

import os
import re
import warnings


class TernlmWarning(UserWarning):
    """A setting ternlm accepts but that is probably not what the caller wants."""


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS reports it (a
    container or `taskset` can restrict it below os.cpu_count()), else os.cpu_count()."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def warn_threads(threads, stacklevel=3) -> None:
    """Warn when `threads` (None = all cores, an int, or a list of ints) asks for more
    worker threads than there are cores: the threads then take turns on the cores and
    every matmul waits for the slowest, so decode gets several times slower, not faster."""
    counts = threads if isinstance(threads, (list, tuple)) else [threads]
    cores = available_cores()
    over = [t for t in counts if t is not None and int(t) > cores]
    if over:
        warnings.warn(f"threads={max(over)} is more than the {cores} cores this process can use: threads "
                      f"would share cores and run slower (decode can drop several-fold); use threads=None "
                      f"(all cores) or at most {cores}", TernlmWarning, stacklevel=stacklevel)


def warn_context(context: int, max_position_embeddings: int, stacklevel=3) -> None:
    """Warn when the KV cache is longer than the positions the model was trained on:
    tokens past max_position_embeddings get rotary positions the model never saw, and
    its output usually degrades there."""
    if max_position_embeddings and context > max_position_embeddings:
        warnings.warn(f"context={context} is more than this model's max_position_embeddings="
                      f"{max_position_embeddings}: text past position {max_position_embeddings} uses "
                      f"positions the model was not trained on and usually degrades; pass "
                      f"context={max_position_embeddings} or less", TernlmWarning, stacklevel=stacklevel)


# "org/name" as the Hub spells repository ids: one slash, no path syntax around it.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def looks_like_hub_id(path) -> bool:
    """True for a string such as "HuggingFaceTB/SmolLM2-135M-Instruct" that is not a path
    on this machine (nothing of that name exists, no ./, ../, / or ~ in front)."""
    s = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(s, str) or os.path.exists(s) or s.startswith((".", "~")):
        return False
    return bool(_HUB_ID.fullmatch(s)) and not s.endswith(".gguf")


def missing_model_message(path) -> str:
    """The message for a model path that does not exist, naming the likely mistake."""
    s = os.fspath(path)
    if looks_like_hub_id(s):
        return (f"{s}: no such file or folder. It looks like a Hugging Face Hub id, which ternlm "
                f"fetches through huggingface_hub's cache when the Hub can be reached. Or download it "
                f"where it can, e.g. `hf download {s} --local-dir ./{s.split('/')[-1]}` (huggingface_hub), "
                f"then pass that folder: ternlm.load('./{s.split('/')[-1]}') or --model ./{s.split('/')[-1]}")
    return f"{s}: no such file or folder"


__all__ = ["TernlmWarning", "available_cores", "warn_threads", "warn_context", "looks_like_hub_id",
           "missing_model_message"]


def require_modules(modules, hint: str, what: str = "not installed") -> None:
    """Import each of `modules`; an ImportError that starts with `hint` (how to install the
    extra that provides them) and names the missing ones."""
    missing = []
    for mod in modules:
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError(f"{hint} ({', '.join(missing)} {what})")
