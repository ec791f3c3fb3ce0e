"""End-to-end speed of a model: load time, prefill and decode tokens/s, peak memory.

    rows = run_bench(model_path, weights=[None], threads=[1, 2], prompt_tokens=128, decode_tokens=64)
    print(format_table(rows))

Each (weights, threads) row is measured in a fresh Python process (`python -m ternlm.bench
REQUEST.json RESULT.json`), so its peak RSS and load time are its own. Inside it:
load -> one short warm-up generation -> `repeats` runs of a prompt of exactly
`prompt_tokens` token ids (a fixed pseudo-random sequence) followed by exactly
`decode_tokens` greedy tokens (EOS is ignored so the count is fixed); the best run is kept.
Prefill tok/s = prompt tokens / time of the prompt's forward; decode tok/s = decoded
tokens / time after the prompt (the sampler and detokenizer included, as a user sees it).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from .memory import peak_rss_mb


def measure(model, weights=None, threads=None, prompt_tokens=128, decode_tokens=64, repeats=2,
            seed=0, kv_dtype="f32", head=None) -> dict:
    """One row, in this process."""
    import ternlm
    t0 = time.perf_counter()
    m = ternlm.load(model, weights=weights, threads=threads, head=head,
                    context=prompt_tokens + decode_tokens + 8, progress=False, kv_dtype=kv_dtype)
    load_s = time.perf_counter() - t0
    m.eos_token_ids = []                               # decode exactly decode_tokens tokens
    vocab = min(m.config.vocab_size, m.tokenizer.vocab_size)
    ids = np.random.default_rng(seed).integers(0, vocab, size=prompt_tokens).tolist()
    m.generate(ids[:8], max_new_tokens=2, temperature=0.0)       # warm-up: thread pool, page-in
    best = None
    for _ in range(max(1, int(repeats))):
        m.generate(ids, max_new_tokens=decode_tokens, temperature=0.0)
        s = dict(m.stats)
        if best is None or s["prompt_s"] + s["decode_s"] < best["prompt_s"] + best["decode_s"]:
            best = s
    kinds = sorted(set(m.formats.values()))
    return {"model": os.fspath(model), "weights": weights or "as stored", "head": head or "default",
            "formats": kinds,
            "threads": threads, "kv_dtype": kv_dtype, "load_s": load_s,
            "prompt_tokens": best["prompt_tokens"], "decode_tokens": best["decode_tokens"],
            "prefill_tok_s": best["prompt_tok_s"], "decode_tok_s": best["decode_tok_s"],
            "peak_rss_mb": peak_rss_mb()}


def _child_env() -> dict:
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_bench(model, weights=(None,), threads=(None,), prompt_tokens=128, decode_tokens=64,
              repeats=2, timeout=3600, log=None, kv_dtypes=("f32",), heads=(None,)) -> list:
    """Measure every (weights, head, threads, KV dtype) combination in its own process;
    returns the rows. heads: formats for embed/lm_head (ternlm.load's head=; None = default)."""
    from .hints import warn_threads
    warn_threads(list(threads))          # here: the rows' own processes would warn unseen
    rows = []
    for w, h, t, kv in ((w, h, t, kv) for w in weights for h in heads for t in threads for kv in kv_dtypes):
        request = {"model": os.fspath(model), "weights": w, "threads": t, "prompt_tokens": prompt_tokens,
                   "decode_tokens": decode_tokens, "repeats": repeats, "kv_dtype": kv, "head": h}
        if log:
            log(f"bench: weights={w or 'as stored'} head={h or 'default'} threads={t or 'all'} kv={kv} ...")
        with tempfile.TemporaryDirectory(prefix="ternlm-bench-") as tmp:
            req, res = os.path.join(tmp, "request.json"), os.path.join(tmp, "result.json")
            with open(req, "w") as f:
                json.dump(request, f)
            proc = subprocess.run([sys.executable, "-m", "ternlm.bench", req, res], env=_child_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
            if not os.path.exists(res):
                raise RuntimeError(f"bench worker for weights={w} head={h} threads={t} died "
                                   f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}")
            with open(res) as f:
                result = json.load(f)
        if "error" in result:
            raise RuntimeError(f"bench weights={w} head={h} threads={t}: {result['error']}: {result['message']}")
        rows.append(result["row"])
    return rows


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info.update(kernel_info())
    return info


def kernel_info() -> dict:
    """Which kernel paths this process runs: the Highway target and the run-time choices
    made for this CPU (runtime/targets.h)."""
    from ._native import core
    return {"targets": list(core.supported_targets()), "target": core.current_target(),
            "avx3_vnni": bool(core.avx3_vnni()), "arm_dotprod": bool(core.arm_dotprod()),
            "amx": bool(core.amx()), "prefetch_bytes": int(core.prefetch_distance())}


def kernel_summary() -> str:
    k = kernel_info()
    extras = [name for name, on in (("AVX-512 VNNI on AVX3", k["avx3_vnni"] and k["target"] == "AVX3"),
                                     ("dot-product", k["arm_dotprod"]), ("AMX prefill", k["amx"])) if on]
    return (f"kernels: {k['target']}" + (" + " + ", ".join(extras) if extras else "")
            + f"; software prefetch {k['prefetch_bytes'] or 'off'}"
            + (" B" if k["prefetch_bytes"] else ""))


def format_table(rows) -> str:
    head = ["weights", "head", "threads", "KV", "load s", "prefill tok/s", "decode tok/s", "peak RSS MB"]
    body = [[str(r["weights"]), str(r.get("head", "default")), str(r["threads"] or "all"), r.get("kv_dtype", "f32"), f"{r['load_s']:.2f}",
             f"{r['prefill_tok_s']:.1f}",
             f"{r['decode_tok_s']:.2f}", f"{r['peak_rss_mb']:.0f}"] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))   # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def main(argv=None) -> int:
    """python -m ternlm.bench REQUEST.json RESULT.json (the per-row worker)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m ternlm.bench REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        request = json.load(f)
    try:
        result, code = {"row": measure(**request)}, 0
    except Exception as e:     # reported by the parent with the row's settings
        result, code = {"error": type(e).__name__, "message": str(e)}, 1
    with open(argv[1], "w") as f:
        json.dump(result, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
