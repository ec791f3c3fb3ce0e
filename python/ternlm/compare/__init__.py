"""Compare weight formats of one model side by side: size, memory, speed, quality and the
memory-bandwidth roofline.

    table = ternlm.compare(model, formats=("bf16", "int4", "ternary"), text=None, threads=None)
    table                      # prints as a table (and as HTML in a notebook)
    table.to_json("out.json"); table.plot("out.png")

    ternlm compare --model PATH --formats bf16,int4,ternary --text FILE --threads N \
                   --json out.json --plot out.png

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
and `achieved` is the measured decode speed as a fraction of it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings

from .table import ComparisonTable

FORMATS = ("bf16", "int4", "ternary")          # the default set
ACCEPTED = FORMATS + ("bf16c",)                 # bf16c: bf16's values in ~12 bits per weight


class FormatError(ValueError):
    """A model could not be loaded or measured in one of the requested formats."""


def _check_formats(formats) -> tuple:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = tuple(formats)
    if not formats:
        raise ValueError(f"formats is empty; choose from {', '.join(ACCEPTED)}")
    bad = [f for f in formats if f not in ACCEPTED]
    if bad:
        raise ValueError(f"unknown format(s) {', '.join(map(repr, bad))}; choose from {', '.join(ACCEPTED)}")
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
    bandwidth: GB/s to use instead of ternlm.bandwidth.read_bandwidth(threads, refresh_bandwidth).
    isolate: measure each format in a fresh process (honest peak RSS); False measures in
    this process (faster to start, RSS is then a running maximum). timeout: seconds per
    format (isolated only). Raises FormatError naming the format the model cannot take.
    """
    from tqdm.auto import tqdm

    from .. import bandwidth as bw_mod
    from ..texts import as_text

    formats = _check_formats(formats)
    model_path = os.fspath(model)
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"{model_path}: no such model file or folder")
    n_threads = bw_mod.resolve_threads(threads)
    for name, value, lo in (("prompt_tokens", prompt_tokens, 1), ("decode_tokens", decode_tokens, 1),
                            ("max_tokens_ppl", max_tokens_ppl, 2), ("window", window, 2),
                            ("stride", stride, 1), ("repeats", repeats, 1)):
        _positive_int(name, value, lo)
    if stride > window:
        raise ValueError(f"stride ({stride}) must be <= window ({window})")
    doc = as_text(text)

    # The probe reads a 1 GiB buffer: in its own process, so this one's peak stays its own.
    gbs = (float(bandwidth) if bandwidth is not None
           else bw_mod.read_bandwidth(n_threads, refresh=refresh_bandwidth, isolate=True))
    if not gbs > 0:
        raise ValueError(f"bandwidth must be > 0 GB/s, got {bandwidth!r}")
    request = dict(model_path=os.path.abspath(model_path), text=doc.text, threads=n_threads,
                   prompt_tokens=prompt_tokens, decode_tokens=decode_tokens,
                   max_tokens_ppl=max_tokens_ppl, window=window, stride=stride, repeats=repeats,
                   save_file=save_file)
    rows = []
    bar = tqdm(formats, desc="compare", unit="format", disable=not progress)
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
                decode_tokens=decode_tokens, repeats=repeats, bandwidth_gb_s=gbs,
                isolated=bool(isolate))
    try:
        from ..bandwidth import cpu_model
        meta["cpu"] = cpu_model()
    except Exception:   # a name for the table only
        pass
    return ComparisonTable(rows, meta)


# ---- CLI: ternlm compare ------------------------------------------------------------------------------
def build_parser(parser=None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="ternlm compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="HF folder, GGUF file or ternlm folder (default: the default model)")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated, from bf16,bf16c,int4,ternary (default: bf16,int4,ternary)")
    p.add_argument("--text", help="UTF-8 text file for perplexity (default: the GNU GPL v3 that Debian's "
                                  "base-files installs at /usr/share/common-licenses/GPL-3; see ternlm.texts)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--json", dest="json_path", help="write the table as JSON here")
    p.add_argument("--plot", dest="plot_path", help="write a figure here (PNG/SVG/PDF; needs matplotlib)")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length for prefill speed")
    p.add_argument("--decode-tokens", type=int, default=32, help="tokens decoded for decode speed")
    p.add_argument("--ppl-tokens", type=int, default=1024, help="score at most this many tokens")
    p.add_argument("--window", type=int, default=512, help="perplexity window (tokens)")
    p.add_argument("--stride", type=int, default=256, help="perplexity stride (tokens)")
    p.add_argument("--repeats", type=int, default=3, help="speed runs per format (best is kept)")
    p.add_argument("--refresh-bandwidth", action="store_true", help="measure the read bandwidth again")
    p.add_argument("--bandwidth", type=float, default=None,
                   help="use this read bandwidth (GB/s) instead of measuring it")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return p


def _default_model_path():
    from .. import default_model
    for name in ("default_model_path", "ensure_default_model", "default_model"):
        fn = getattr(default_model, name, None)
        if callable(fn):
            return fn()
    raise RuntimeError("ternlm.default_model has no default_model_path(); pass --model PATH")


def run_cli(args) -> int:
    from pathlib import Path
    model = args.model or _default_model_path()
    table = compare(model, formats=args.formats, text=Path(args.text) if args.text else None,
                    threads=args.threads, prompt_tokens=args.prompt_tokens,
                    decode_tokens=args.decode_tokens, max_tokens_ppl=args.ppl_tokens,
                    window=args.window, stride=args.stride, repeats=args.repeats,
                    bandwidth=args.bandwidth, refresh_bandwidth=args.refresh_bandwidth)
    print(table.to_markdown() if args.markdown else table)
    if args.json_path:
        table.to_json(args.json_path)
        print(f"wrote {args.json_path}")
    if args.plot_path:
        table.plot(args.plot_path)
        print(f"wrote {args.plot_path}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_cli(args)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        print(f"ternlm compare: error: {e}", file=sys.stderr)
        return 2


__all__ = ["compare", "main", "FormatError", "FORMATS", "ComparisonTable"]

# `ternlm.compare` is this function once the package is imported (the module stays in
# sys.modules); keep `ternlm.compare.main` working for callers that reach it that way.
compare.main = main
compare.FormatError = FormatError
