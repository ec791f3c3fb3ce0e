"""Compare weight formats of one model side by side: size, memory, speed, quality and the
memory-bandwidth roofline.

    table = ternlm.compare(model, formats=("bf16", "int4", "ternary"), text=None, threads=None)
    table                      # prints as a table (and as HTML in a notebook)
    table.to_json("out.json"); table.plot("out.png")

    ternlm compare --model PATH --formats bf16,int4,ternary --text FILE --threads N \
                   --json out.json --plot out.png          (parsed in ternlm.cli)

Each format is loaded and measured in a fresh Python process (ternlm.compare.worker), so
its peak RSS is its own (VmHWM on Linux, see ternlm.memory; the bandwidth probe runs in a
process of its own too). Per format: stored bits per weight (layer matrices and whole
model), the size of the folder Model.save writes, peak RSS, load time, prefill and decode
tokens/s (greedy, best of `repeats` after a warm-up, prompt cut from the text), and
perplexity on the text. Perplexity uses a sliding window: forwards of `window` tokens
every `stride` tokens, each token scored once with at least window - stride tokens of left
context (except in the first window); only the first `max_tokens_ppl` tokens are scored.
The roofline: a decoded token reads every layer matrix, the output head, the norms and one
embedding row once (`bytes_per_token`); the machine's streaming read bandwidth (measured by
ternlm.bandwidth, cached per machine) divided by that is the most tokens/s memory allows,
and `achieved` is the measured decode speed as a fraction of it (above 100% when the
weights fit in the CPU caches, which serve reads faster than memory).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings

from .table import ComparisonTable

FORMATS = ("bf16", "int4", "ternary")          # the default set
ACCEPTED = FORMATS + ("bf16c",)                 # bf16c: bf16's values in ~12 bits per weight
# and "nano:<bits>" (0 < bits < 2): sub-1-bit low-rank sign factors (ternlm.nano)


class FormatError(ValueError):
    """A model could not be loaded or measured in one of the requested formats."""


def _is_nano(parse_nano, fmt) -> bool:
    try:
        return parse_nano(fmt) is not None
    except ValueError:
        return False


def _check_formats(formats) -> tuple:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = tuple(formats)
    if not formats:
        raise ValueError(f"formats is empty; choose from {', '.join(ACCEPTED)}")
    from ..nano import parse as parse_nano
    bad = [f for f in formats if f not in ACCEPTED and not _is_nano(parse_nano, f)]
    if bad:
        raise ValueError(f"unknown format(s) {', '.join(map(repr, bad))}; choose from {', '.join(ACCEPTED)} "
                         "or nano:<bits> (0 < bits < 2, e.g. nano:0.8)")
    if len(set(formats)) != len(formats):
        raise ValueError(f"formats has duplicates: {list(formats)}")
    return formats


def _positive_int(name, value, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _child_env() -> dict:
    """The environment of a worker: this one, with the folder holding the imported ternlm
    package first on PYTHONPATH so the child imports the same ternlm (and, through
    TERNLM_CORE_DIR if set, the same core)."""
    import ternlm
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(ternlm.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _run_isolated(request: dict, timeout) -> dict:
    with tempfile.TemporaryDirectory(prefix="ternlm-compare-") as tmp:
        req_path, res_path = os.path.join(tmp, "request.json"), os.path.join(tmp, "result.json")
        with open(req_path, "w", encoding="utf-8") as f:
            json.dump(request, f)
        try:
            proc = subprocess.run([sys.executable, "-m", "ternlm.compare.worker", req_path, res_path],
                                  env=_child_env(), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FormatError(f"{request['fmt']}: measuring {request['model_path']} took longer than "
                              f"timeout={timeout} s") from None
        if not os.path.exists(res_path):
            raise FormatError(f"{request['fmt']}: the worker process for {request['model_path']} died "
                              f"(exit code {proc.returncode}):\n{proc.stderr[-2000:]}")
        with open(res_path, encoding="utf-8") as f:
            result = json.load(f)
    if "error" in result:
        raise FormatError(f"model {request['model_path']} cannot be run as {request['fmt']}: "
                          f"{result['error']}: {result['message']}")
    return result["row"]


def compare(model, formats=FORMATS, text=None, threads=None, prompt_tokens=128, decode_tokens=32,
            max_tokens_ppl=1024, window=512, stride=256, repeats=3, bandwidth=None,
            refresh_bandwidth=False, save_file=True, isolate=True, timeout=None,
            progress=True) -> ComparisonTable:
    """Measure `model` (a path ternlm.load accepts) in each of `formats` and return a
    ComparisonTable (a list of row dicts; see ternlm.compare.table for the keys).

    text: None (the default prose of ternlm.texts), a str (the text itself), a
    pathlib.Path (a UTF-8 file) or a ternlm.texts.Text. threads: None = all cores.
    bandwidth: GB/s to use instead of ternlm.bandwidth.bandwidth_measurement(threads,
    refresh_bandwidth) (a cached figure older than 7 days is measured again; the table's
    caption says how old the figure is). progress: a bar over the formats where a person
    watches (a terminal or a notebook).
    isolate: measure each format in a fresh process (honest peak RSS); False measures in
    this process (faster to start, RSS is then a running maximum). timeout: seconds per
    format (isolated only). Raises FormatError naming the format the model cannot take.
    """
    from .. import bandwidth as bw_mod
    from ..hints import warn_threads
    from ..hub import resolve
    from ..progress import progress_bar
    from ..texts import as_text

    formats = _check_formats(formats)
    model_path = resolve(model)
    n_threads = bw_mod.resolve_threads(threads)
    warn_threads(n_threads)
    for name, value, lo in (("prompt_tokens", prompt_tokens, 1), ("decode_tokens", decode_tokens, 1),
                            ("max_tokens_ppl", max_tokens_ppl, 2), ("window", window, 2),
                            ("stride", stride, 1), ("repeats", repeats, 1)):
        _positive_int(name, value, lo)
    if stride > window:
        raise ValueError(f"stride ({stride}) must be <= window ({window})")
    doc = as_text(text)

    # The probe reads a 1 GiB buffer: in its own process, so this one's peak stays its own.
    if bandwidth is not None:
        gbs, bw_meta = float(bandwidth), dict(bandwidth_source="given")
    else:
        probe = bw_mod.bandwidth_measurement(n_threads, refresh=refresh_bandwidth, isolate=True)
        gbs = probe.gb_per_s
        bw_meta = dict(bandwidth_source="cache" if probe.cached else "probe",
                       bandwidth_measured_at=probe.measured_at_utc, bandwidth_age_s=round(probe.age_s))
    if not gbs > 0:
        raise ValueError(f"bandwidth must be > 0 GB/s, got {bandwidth!r}")
    request = dict(model_path=os.path.abspath(model_path), text=doc.text, threads=n_threads,
                   prompt_tokens=prompt_tokens, decode_tokens=decode_tokens,
                   max_tokens_ppl=max_tokens_ppl, window=window, stride=stride, repeats=repeats,
                   save_file=save_file)
    rows = []
    bar = progress_bar(formats, enabled=progress, desc="compare", unit="format")
    for fmt in bar:
        bar.set_postfix_str(fmt)
        if isolate:
            row = _run_isolated(dict(request, fmt=fmt), timeout)
        else:
            from .worker import measure_format
            try:
                row = measure_format(fmt=fmt, **request)
            except Exception as e:
                raise FormatError(f"model {model_path} cannot be run as {fmt}: {type(e).__name__}: {e}") from e
        if row.get("file_error"):
            warnings.warn(f"compare: no file size for {fmt}: {row['file_error']}", RuntimeWarning, stacklevel=2)
        row["bandwidth_gb_s"] = gbs
        row["roofline_tok_s"] = gbs * 1e9 / row["bytes_per_token"]
        row["achieved"] = (row["decode_tok_s"] / row["roofline_tok_s"]) if row.get("decode_tok_s") else None
        rows.append(row)
    meta = dict(model=model_path, formats=list(formats), text_name=doc.name, text_source=doc.source,
                threads=n_threads, window=window, stride=stride, max_tokens_ppl=max_tokens_ppl,
                ppl_tokens=rows[0].get("ppl_tokens") if rows else None, prompt_tokens=prompt_tokens,
                decode_tokens=decode_tokens, repeats=repeats, bandwidth_gb_s=gbs, **bw_meta,
                isolated=bool(isolate))
    try:
        from ..bandwidth import cpu_model
        meta["cpu"] = cpu_model()
    except Exception:   # a name for the table only
        pass
    return ComparisonTable(rows, meta)


# ---- CLI: `ternlm compare` is parsed and run by ternlm.cli -------------------------------------------
def main(argv=None) -> int:
    """`ternlm compare ARGS` (ternlm.cli.main(["compare", *argv])); returns the exit status."""
    from ..cli import main as cli_main
    return cli_main(["compare", *(sys.argv[1:] if argv is None else argv)])


__all__ = ["compare", "main", "FormatError", "FORMATS", "ComparisonTable"]

# `ternlm.compare` is this function once the package is imported (the module stays in
# sys.modules); keep `ternlm.compare.main` working for callers that reach it that way.
compare.main = main
compare.FormatError = FormatError
