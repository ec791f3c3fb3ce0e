"""One measurement of vs_llamacpp.py, run in a fresh process so that its peak RSS is its own:

    python benchmarks/bench_worker.py REQUEST.json RESULT.json

REQUEST: {"engine": "llama.cpp" | "ternlm", "path", "threads", "prompt_ids": [...],
          "decode_tokens", "context", "warmup_tokens",
          ternlm: "weights" (None | "bf16" | "int4" | "ternary"), "head" (None | "bf16" | "int4");
          llama.cpp: "n_batch", "flash_attn"}
RESULT:  {"prefill_tok_s", "decode_tok_s", "prompt_tokens", "decode_tokens", "load_s",
          "peak_rss_mb", ternlm only: "bytes_per_token", "weight_bytes"}
      or {"error": type, "message", "traceback"}

What is timed, the same for both engines (greedy, one sequence, batch of 1):
  prefill = the prompt's forward (one batch, logits of the last token only) + choosing the
            first token;  prefill tok/s = prompt tokens / that time.
  decode  = `decode_tokens` steps of (forward of one token + choosing the next);
            decode tok/s = decode_tokens / that time.
Both engines first run one untimed warm-up generation (`warmup_tokens` of the prompt, 4
new tokens) so that weights are paged in and thread pools started.
ternlm is timed by its own Model.stats (generate with decode_tokens + 1 new tokens: the first
is chosen inside "prefill"); EOS is disabled so it decodes exactly as many tokens as
llama.cpp, whose loop ignores EOS.
llama.cpp runs through llama_cpp.Llama (eval + argmax over llama_get_logits_ith(-1)).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time


def _pure_module(name: str):
    """python/ternlm/<name>.py (memory: the one peak-RSS rule; worker_io: the request/result
    protocol) loaded without importing the ternlm package, whose import loads the C++ core and
    would add its pages to llama.cpp's peak."""
    spec = importlib.util.find_spec("ternlm")
    if spec is None or not spec.origin:
        raise ImportError("bench_worker.py needs ternlm importable (PYTHONPATH=python)")
    # beside __init__.py: an editable install lists its build folder first among the
    # package's search locations, and that folder holds only the compiled core
    path = os.path.join(os.path.dirname(spec.origin), f"{name}.py")
    mspec = importlib.util.spec_from_file_location(f"_ternlm_{name}", path)
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module


peak_rss_mb = _pure_module("memory").peak_rss_mb


def measure_llamacpp(req: dict) -> dict:
    import numpy as np
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=req["path"], n_ctx=int(req["context"]), n_batch=int(req["n_batch"]),
                          n_ubatch=int(req["n_batch"]), n_threads=int(req["threads"]),
                          n_threads_batch=int(req["threads"]), logits_all=False,
                          flash_attn=bool(req.get("flash_attn", False)), verbose=False)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()

    def greedy() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(logits.argmax())

    def run(prompt, n_new):
        llm.reset()                       # eval() then drops the whole KV cache
        t_start = time.perf_counter()
        llm.eval(prompt)
        tok = greedy()
        t_prefill = time.perf_counter()
        for _ in range(n_new):
            llm.eval([tok])
            tok = greedy()
        return t_prefill - t_start, time.perf_counter() - t_prefill

    prompt = [int(i) for i in req["prompt_ids"]]
    run(prompt[:int(req["warmup_tokens"])], 4)
    n_decode = int(req["decode_tokens"])
    prefill_s, decode_s = run(prompt, n_decode)
    return {"prefill_tok_s": len(prompt) / prefill_s, "decode_tok_s": n_decode / decode_s if n_decode else None,
            "prompt_tokens": len(prompt), "decode_tokens": n_decode, "load_s": load_s}


def measure_ternlm(req: dict) -> dict:
    import ternlm
    from ternlm.compare.worker import weight_accounting

    t0 = time.perf_counter()
    m = ternlm.load(req["path"], weights=req.get("weights"), head=req.get("head"), threads=int(req["threads"]),
                    context=int(req["context"]), progress=False)
    load_s = time.perf_counter() - t0
    m.eos_token_ids = []                  # decode a fixed number of tokens, as the llama.cpp loop does
    prompt = [int(i) for i in req["prompt_ids"]]
    m.generate(prompt[:int(req["warmup_tokens"])], max_new_tokens=4, temperature=0.0)
    n_decode = int(req["decode_tokens"])
    m.generate(prompt, max_new_tokens=n_decode + 1, temperature=0.0)
    s = dict(m.stats)
    if s["prompt_tokens"] != len(prompt) or s["decode_tokens"] != n_decode + 1:
        raise RuntimeError(f"ternlm decoded {s['decode_tokens']} tokens after a {s['prompt_tokens']}-token "
                           f"prompt, expected {n_decode + 1} after {len(prompt)} (stop_reason {s['stop_reason']})")
    peak = peak_rss_mb()                  # before weight_accounting, which copies each matrix out
    acct = weight_accounting(m)
    return {"peak_rss_mb": peak, "prefill_tok_s": s["prompt_tok_s"], "decode_tok_s": s["decode_tok_s"] if n_decode else None,
            "prompt_tokens": len(prompt), "decode_tokens": n_decode, "load_s": load_s,
            "bytes_per_token": int(acct["bytes_per_token"]), "weight_bytes": int(acct["weight_bytes"]),
            "formats": sorted(set(m.formats.values()))}


def prepare_ternlm(req: dict) -> dict:
    """Convert a checkpoint once and save it as a ternlm folder (later runs map it)."""
    import ternlm
    m = ternlm.load(req["path"], weights=req.get("weights"), head=req.get("head"), threads=1,
                    context=int(req.get("context", 256)), progress=False)
    m.save(req["out"])
    return {"saved": req["out"], "peak_rss_mb": peak_rss_mb()}


def _run(req: dict) -> dict:
    if req.get("prepare"):
        result = prepare_ternlm(req)
    elif req["engine"] == "llama.cpp":
        result = measure_llamacpp(req)
    elif req["engine"] == "ternlm":
        result = measure_ternlm(req)
    else:
        raise ValueError(f"engine {req['engine']!r}: choose 'llama.cpp' or 'ternlm'")
    result.setdefault("peak_rss_mb", peak_rss_mb())
    return result


def main(argv=None) -> int:
    return _pure_module("worker_io").run_worker(sys.argv[1:] if argv is None else argv,
                                                "python benchmarks/bench_worker.py", _run)


if __name__ == "__main__":
    sys.exit(main())
