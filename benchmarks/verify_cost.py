"""What a speculative verify step costs against a plain decode step: one `Transformer.batch`
entry of 1 + k rows (the last token and k drafted ones, every row's logits computed and
judged) against a 1-row decode step, on the same model, slot and position.

    PYTHONPATH=python .venv/bin/python benchmarks/verify_cost.py --threads 2 --rounds 9 \
        --json benchmarks/results/verify_cost.json [--model PATH | --synthetic bitnet-2b]

One process. Each round times every row count once (a burst of `--steps` batches each, the
order rotating between rounds so drift on a shared machine spreads over all of them) and the
table reports, per k, the median over rounds of (time of a 1+k-row step) / (time of a 1-row
step) of the same round. The drafts are tokens the model rejects (greedy: not the argmax),
so each step keeps one row, and the slot is truncated back after it: every step runs at
the same position. The machine's load average is recorded with the result; absolute times
on a shared machine mean little, the same-round ratios are what to compare.

Before / after a change: `--cores LABEL=DIR LABEL=DIR ...` runs the measurement in fresh
processes, one per core build (TERNLM_CORE_DIR=DIR), alternating `--processes` times, and
tables the median ratio per build side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import subprocess
import tempfile

import numpy as np


def load(args):
    import ternlm
    if args.synthetic:
        from ternlm.synthetic import write_synthetic_bitnet
        from ternlm.default_model import cache_dir
        folder = os.path.join(cache_dir(), "synthetic", args.synthetic)
        if not os.path.exists(os.path.join(folder, "tokenizer.json")):
            write_synthetic_bitnet(folder, args.synthetic)
        path = folder
    elif args.model:
        path = args.model
    else:
        from ternlm.default_model import default_model_path
        path = default_model_path(quiet=True)
    return ternlm.load(path, threads=args.threads, head=args.head, progress=False, max_sequences=1,
                       context=args.prompt + 64)


def run(args) -> dict:
    import ternlm
    m = load(args)
    eng = m._engine
    vocab = m.config.vocab_size
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, min(vocab, m.tokenizer.vocab_size), size=args.prompt).astype(np.int32)
    sampler = ternlm._core.Sampler(temperature=0.0)
    eng.reset(slot=0)
    last = eng.prefill(prompt, sampler, slot=0)
    base = eng.position_of(0)
    # A draft the greedy sampler rejects: any token but this position's argmax.
    top = int(np.argmax(eng.forward(np.array([last], np.int32), slot=0)))
    eng.truncate(base, slot=0)
    bad = (top + 1) % vocab
    ks = [0] + list(args.k)
    times = {k: [] for k in ks}

    def burst(k):
        entry = (0, [last] + [bad] * k, sampler, True, k) if k else (0, last, sampler, True)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            eng.batch([entry])
            eng.truncate(base, slot=0)
        return (time.perf_counter() - t0) / args.steps

    for k in ks:  # warm-up
        burst(k)
    loads = []
    for r in range(args.rounds):
        order = ks[r % len(ks):] + ks[:r % len(ks)]
        for k in order:
            times[k].append(burst(k))
        loads.append(os.getloadavg()[0])
    rows = []
    for k in ks:
        ratios = [t / t1 for t, t1 in zip(times[k], times[0])]
        rows.append({"rows": 1 + k, "median_ms": 1e3 * statistics.median(times[k]),
                     "ratio_to_1_row": statistics.median(ratios), "runs_ms": [1e3 * t for t in times[k]]})
    return {"model": m.source, "formats": sorted(set(m.formats.values())), "threads": args.threads,
            "position": base, "steps": args.steps, "rounds": args.rounds, "load_average_1min": loads,
            "rows": rows}


def table(res) -> str:
    lines = ["| rows | median ms | x 1-row step (same-round medians) |", "| --- | --- | --- |"]
    for r in res["rows"]:
        lines.append(f"| {r['rows']} | {r['median_ms']:.2f} | {r['ratio_to_1_row']:.2f}x |")
    return "\n".join(lines)


def compare_cores(args, argv) -> dict:
    """Alternate fresh processes over the core builds; per build the medians of each process's ratios."""
    builds = [c.split("=", 1) for c in args.cores]
    child = []
    skip = False
    for a in argv:  # the options without --cores / --json / --processes and their values
        if skip and not a.startswith("--"):
            continue
        skip = a in ("--cores", "--json", "--processes")
        if not skip:
            child.append(a)
    per = {label: [] for label, _ in builds}
    for i in range(args.processes):
        for label, core_dir in (builds if i % 2 == 0 else list(reversed(builds))):
            with tempfile.TemporaryDirectory(prefix="ternlm-verify-") as tmp:
                out = os.path.join(tmp, "r.json")
                env = dict(os.environ, TERNLM_CORE_DIR=os.path.abspath(core_dir))
                subprocess.run([sys.executable, os.path.abspath(__file__), *child, "--json", out], env=env, check=True,
                               stdout=subprocess.DEVNULL)
                with open(out) as f:
                    per[label].append(json.load(f)["results"][0])
    return {"builds": dict(builds), "processes": args.processes, "runs": per}


def compare_table(res) -> str:
    labels = list(res["runs"])
    lines = ["| rows | " + " | ".join(f"{l}: x 1-row step" for l in labels) + " |",
             "| --- |" + " --- |" * len(labels)]
    first = res["runs"][labels[0]][0]["rows"]
    for i, r in enumerate(first):
        cells = [f"{statistics.median(run['rows'][i]['ratio_to_1_row'] for run in res['runs'][l]):.2f}x" for l in labels]
        lines.append(f"| {r['rows']} | " + " | ".join(cells) + " |")
    loads = [x for l in labels for run in res["runs"][l] for x in run["load_average_1min"]]
    lines.append(f"\nload average (1 min) during the runs: {min(loads):.1f} - {max(loads):.1f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="default: the default model")
    ap.add_argument("--synthetic", default=None, help="a synthetic shape (ternlm.synthetic), e.g. bitnet-2b")
    ap.add_argument("--head", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64, help="tokens in the cache before the steps")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 4, 5, 7])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cores", nargs="+", default=None, metavar="LABEL=DIR")
    ap.add_argument("--processes", type=int, default=4, help="with --cores: processes per build")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    if args.cores:
        res = compare_cores(args, argv)
        print(compare_table(res), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"command": "benchmarks/verify_cost.py " + " ".join(argv),
                           "machine": f"{platform.machine()} {os.cpu_count()} cpus (shared with other jobs)",
                           "results": [res], "table": compare_table(res)}, f, indent=2)
                f.write("\n")
        return
    res = run(args)
    print(table(res), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"command": "benchmarks/verify_cost.py " + " ".join(argv),
                       "machine": f"{platform.machine()} {os.cpu_count()} cpus (shared with other jobs)",
                       "results": [res], "table": table(res)}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
