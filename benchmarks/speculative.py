"""Prompt-lookup speculative decoding (python/ternlm/speculative.py) against plain decoding on
the default model (SmolLM2-135M-Instruct Q4_1 -> int4, f32 head): greedy chat replies to
prompts whose answer repeats the prompt (summarize / rewrite / code edit of a given text:
lookup helps) and open questions (it should not hurt).

    PYTHONPATH=python .venv/bin/python benchmarks/speculative.py --threads 2 --reps 5 \
        --json benchmarks/results/speculative.json

One process, one model. For each repetition every prompt runs plain and with
speculative="lookup" back to back, the order alternating between repetitions, so drift on a
shared machine spreads over both. Decode tok/s is m.stats' (decode tokens - 1) / decode
time (the first token, which prefill gives, excluded); the table shows the medians over
repetitions, "x (medians)" is lookup's / plain's of the same prompt and "x (bests)" the
ratio of the fastest runs (the least disturbed on a machine shared with other jobs). "x (CPU
time)" is plain's / lookup's median process CPU time per reply (prompt included, the same for
both): with --threads 1 nothing spins, so it counts the work done and holds on a machine
where other jobs take the cores away (wall time then measures them too). Acceptance = accepted / drafted tokens;
"drafted / token" = drafted tokens per generated token. "same text": whether the lookup
reply equals the plain one (greedy: it must, a verify row's logits being a decode row's bit
for bit; tests/test_exact_rows.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

PARAGRAPH = (
    "The committee met on Tuesday to review the budget for the coming year. After a long "
    "discussion, the members agreed to increase funding for the public library by ten percent, "
    "to repair the roof of the community center before winter, and to postpone the new parking "
    "lot until the spring. The chair thanked the volunteers who organized the summer festival, "
    "which raised more money than any festival before it. The next meeting will be held on the "
    "first Monday of next month at seven in the evening.")

CODE = '''def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def partial_stop_len(text, stops, hold):
    for n in range(min(hold, len(text)), 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stops):
            return n
    return 0
'''

PROMPTS = [
    ("lookup", "summarize", "Summarize the following text in a few sentences.\n\n" + PARAGRAPH),
    ("lookup", "rewrite", "Rewrite the following text in the past tense, keeping everything else as it is.\n\n"
     + PARAGRAPH),
    ("lookup", "code edit", "Rename the variable `n` to `limit` in this Python code and show the whole code.\n\n"
     + CODE),
    ("open", "question 1", "What are the main causes of the seasons on Earth?"),
    ("open", "question 2", "Give me some advice for learning to play the guitar."),
    ("open", "question 3", "Why do cats purr?"),
]


def run(args) -> dict:
    import ternlm
    from ternlm.default_model import default_model_path
    m = ternlm.load(default_model_path(quiet=True), threads=args.threads, progress=False, max_sequences=1)
    m.chat([{"role": "user", "content": "Hi"}], max_new_tokens=4)         # warm-up
    spec = ternlm.Lookup(draft=args.draft, ngram=args.ngram, min_ngram=args.min_ngram)
    runs = {(name, mode): [] for _, name, _ in PROMPTS for mode in ("plain", "lookup")}
    texts = {}
    loads = []
    for rep in range(args.reps):
        loads.append(os.getloadavg()[0])
        for _, name, prompt in PROMPTS:
            msgs = [{"role": "user", "content": prompt}]
            modes = ("plain", "lookup") if rep % 2 == 0 else ("lookup", "plain")
            for mode in modes:
                c0 = time.process_time()
                out = m.chat(msgs, max_new_tokens=args.decode, speculative=spec if mode == "lookup" else None)
                s = dict(m.stats)
                s["cpu_s"] = time.process_time() - c0
                runs[name, mode].append(s)
                texts[name, mode] = out
    rows = []
    for kind, name, _ in PROMPTS:
        plain, look = runs[name, "plain"], runs[name, "lookup"]
        p = statistics.median(s["decode_tok_s"] for s in plain)
        q = statistics.median(s["decode_tok_s"] for s in look)
        drafted = sum(s["drafted_tokens"] for s in look)
        accepted = sum(s["accepted_tokens"] for s in look)
        tokens = sum(s["decode_tokens"] for s in look)
        pb = max(s["decode_tok_s"] for s in plain)
        qb = max(s["decode_tok_s"] for s in look)
        rows.append({"kind": kind, "prompt": name, "decode_tokens": look[-1]["decode_tokens"],
                     "plain_tok_s": p, "lookup_tok_s": q, "x": q / p,
                     "plain_best_tok_s": pb, "lookup_best_tok_s": qb, "x_best": qb / pb,
                     "x_cpu": statistics.median(a["cpu_s"] for a in plain) / statistics.median(b["cpu_s"] for b in look),
                     "plain_runs": [s["decode_tok_s"] for s in plain], "lookup_runs": [s["decode_tok_s"] for s in look],
                     "acceptance": accepted / drafted if drafted else 0.0,
                     "drafted_per_token": drafted / tokens if tokens else 0.0,
                     "same_text": texts[name, "plain"] == texts[name, "lookup"]})
    return {"model": m.source, "formats": sorted(set(m.formats.values())), "threads": args.threads,
            "options": repr(spec), "decode": args.decode, "reps": args.reps, "load_average_1min": loads,
            "rows": rows}


def table(res) -> str:
    lines = ["| kind | prompt | tokens | plain tok/s | lookup tok/s | x (medians) | x (bests) | x (CPU time) | acceptance | "
             "drafted / token | same text |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        lines.append(f"| {r['kind']} | {r['prompt']} | {r['decode_tokens']} | {r['plain_tok_s']:.1f} | "
                     f"{r['lookup_tok_s']:.1f} | {r['x']:.2f}x | {r['x_best']:.2f}x | {r['x_cpu']:.2f}x | {r['acceptance']:.0%} | "
                     f"{r['drafted_per_token']:.2f} | {'yes' if r['same_text'] else 'no'} |")
    loads = res.get("load_average_1min") or [0.0]
    lines.append(f"\nload average (1 min) at each repetition: {min(loads):.1f} - {max(loads):.1f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--draft", type=int, default=8)
    ap.add_argument("--ngram", type=int, default=3)
    ap.add_argument("--min-ngram", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run(args)
    print(table(res), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"command": "benchmarks/speculative.py " + " ".join(argv or sys.argv[1:]),
                       "machine": f"{platform.machine()} {os.cpu_count()} cpus (shared with other jobs)",
                       "seconds": time.perf_counter() - t0, "results": [res], "table": table(res)}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
