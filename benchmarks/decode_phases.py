"""Where a decode step's time goes at 1 and 2 (or more) threads: per-phase wall time per
token (the transformer's phases, runtime/phase_timers.h), the thread pool's Run() calls per
token, how long the calling thread waits at their end for the other threads (imbalance,
wake-up), each pool thread's time inside tasks, and the same run's read-bandwidth probe.

Needs a core built with the phase timers (they are compiled out of normal builds):

    cmake -S . -B build/phases -G Ninja -DCMAKE_BUILD_TYPE=Release -DTERNLM_PHASE_TIMERS=ON
    cmake --build build/phases
    TERNLM_CORE_DIR=build/phases PYTHONPATH=python python benchmarks/decode_phases.py \
        --synthetic bitnet-2b --threads 1 2 --rounds 3 --json benchmarks/results/decode_phases.json

Each (round, thread count) is a fresh process (`--worker`), thread counts alternating, and
the bandwidth probe runs in the same process right after the steps. The table gives the
medians over rounds; "x" is the 2-thread (last count) time over the 1-thread (first count)
time of the same round, per phase (< 1: the phase got faster with more threads). The load
average is recorded with every process: on a machine shared with other jobs absolute
times mean little, only same-run ratios do.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def model_path(args) -> str:
    if args.model:
        return args.model
    from ternlm.cli import _synthetic_folder
    return _synthetic_folder(args.synthetic)


def worker(args) -> dict:
    import ternlm
    from ternlm._native import core
    if core.phase_times() is None:
        raise SystemExit("decode_phases: this core has no phase timers; build it with -DTERNLM_PHASE_TIMERS=ON "
                         "and point TERNLM_CORE_DIR at it")
    t = args.threads[0]
    m = ternlm.load(model_path(args), threads=t, head=args.head, progress=False, max_sequences=1,
                    context=args.prompt + args.steps + 8)
    eng = m._engine
    vocab = min(m.config.vocab_size, m.tokenizer.vocab_size)
    prompt = np.random.default_rng(0).integers(0, vocab, size=args.prompt).astype(np.int32)
    s = core.Sampler(temperature=0.0)
    tok = eng.prefill(prompt, s, slot=0)
    for _ in range(4):  # warm-up: page-in, pool spin-up
        tok = eng.step(tok, s, slot=0)
    core.reset_phase_times()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        tok = eng.step(tok, s, slot=0)
    wall = time.perf_counter() - t0
    p = core.phase_times()
    n = args.steps
    from ternlm.bandwidth import measure_read_bandwidth
    bw = measure_read_bandwidth(t, repeats=3)
    return {"threads": t, "ms_per_token": 1e3 * wall / n,
            "phases_ms": {k: 1e3 * v[0] / n for k, v in p["phases"].items()},
            "pool_runs_per_token": p["pool_runs"] / n, "caller_wait_ms": 1e3 * p["caller_wait_s"] / n,
            "task_ms_per_thread": [1e3 * x / n for x in p["task_s"]], "bandwidth_gb_s": bw,
            "load_average_1min": os.getloadavg()[0]}


def run(args) -> dict:
    runs = {t: [] for t in args.threads}
    for r in range(args.rounds):
        for t in (args.threads if r % 2 == 0 else list(reversed(args.threads))):
            with tempfile.TemporaryDirectory(prefix="ternlm-phases-") as tmp:
                out = os.path.join(tmp, "r.json")
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", out, "--threads", str(t)] + _forward(args)
                subprocess.run(cmd, check=True)
                with open(out) as f:
                    runs[t].append(json.load(f))
    return {"model": args.model or f"synthetic {args.synthetic}", "head": args.head or "default",
            "steps": args.steps, "prompt": args.prompt, "rounds": args.rounds, "runs": runs}


def _forward(args) -> list:
    out = ["--steps", str(args.steps), "--prompt", str(args.prompt)]
    if args.model:
        out += ["--model", args.model]
    else:
        out += ["--synthetic", args.synthetic]
    if args.head:
        out += ["--head", args.head]
    return out


def table(res) -> str:
    ts = sorted(res["runs"])
    lo, hi = ts[0], ts[-1]
    a, b = res["runs"][lo], res["runs"][hi]
    med = statistics.median

    def ratio(f):
        return med(f(y) / f(x) for x, y in zip(a, b) if f(x) > 0)

    rows = [f"| | {lo} thr ms/token | {hi} thr ms/token | x ({hi} / {lo}, same round) |", "| --- | --- | --- | --- |"]
    rows.append(f"| whole step | {med(r['ms_per_token'] for r in a):.2f} | {med(r['ms_per_token'] for r in b):.2f} | "
                f"{ratio(lambda r: r['ms_per_token']):.2f} |")
    for name in a[0]["phases_ms"]:
        if med(r["phases_ms"][name] for r in a) < 0.005:
            continue
        rows.append(f"| {name} | {med(r['phases_ms'][name] for r in a):.2f} | {med(r['phases_ms'][name] for r in b):.2f} | "
                    f"{ratio(lambda r: r['phases_ms'][name]):.2f} |")
    rows.append(f"| pool runs / token | {med(r['pool_runs_per_token'] for r in a):.0f} | "
                f"{med(r['pool_runs_per_token'] for r in b):.0f} | |")
    rows.append(f"| caller waits at Run's end | {med(r['caller_wait_ms'] for r in a):.2f} | "
                f"{med(r['caller_wait_ms'] for r in b):.2f} | |")
    for i in range(len(b[0]["task_ms_per_thread"])):
        rows.append(f"| thread {i} inside tasks | {med(r['task_ms_per_thread'][i] for r in a) if i < len(a[0]['task_ms_per_thread']) else 0:.2f} | "
                    f"{med(r['task_ms_per_thread'][i] for r in b):.2f} | |")
    rows.append(f"| bandwidth probe GB/s | {med(r['bandwidth_gb_s'] for r in a):.1f} | {med(r['bandwidth_gb_s'] for r in b):.1f} | "
                f"{ratio(lambda r: r['bandwidth_gb_s']):.2f} |")
    rows.append(f"| tok/s | {1e3 / med(r['ms_per_token'] for r in a):.1f} | {1e3 / med(r['ms_per_token'] for r in b):.1f} | "
                f"{1 / ratio(lambda r: r['ms_per_token']):.2f} (speed-up) |")
    loads = [r["load_average_1min"] for t in ts for r in res["runs"][t]]
    rows.append(f"\nload average (1 min) over the processes: {min(loads):.1f} - {max(loads):.1f}")
    return "\n".join(rows)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--synthetic", default="bitnet-2b", choices=("bitnet-2b", "tiny"))
    ap.add_argument("--head", default=None)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        res = worker(args)
        with open(args.worker, "w") as f:
            json.dump(res, f)
        return
    t0 = time.perf_counter()
    res = run(args)
    print(table(res), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"command": "benchmarks/decode_phases.py " + " ".join(argv),
                       "machine": f"{platform.machine()} {os.cpu_count()} cpus (shared with other jobs)",
                       "seconds": time.perf_counter() - t0, "results": [res], "table": table(res)}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
