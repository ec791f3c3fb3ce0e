"""What a quantized embedding/lm_head costs in quality and buys in speed.

    PYTHONPATH=python .venv/bin/python benchmarks/head_quality.py [--model PATH] [--json OUT]

For each layer format (`--weights`, default: stored,bf16,ternary) the model is loaded twice,
with the embedding/head in bf16 (ternlm's default) and in int4 (`head="int4"`, group 32),
and measured in this process: perplexity on the default text (ternlm.texts: Debian's GPL-3,
sliding window 512 / stride 256 over the first --tokens tokens), greedy decode tok/s
(best of 3 after a warm-up).
Prints a table; --json writes the rows.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import ternlm
from ternlm.default_model import default_model_path
from ternlm.texts import default_text


def decode_speed(m, prompt_ids, n=32, repeats=3) -> float:
    best = 0.0
    m.eos_token_ids = []                      # decode exactly n tokens
    m.generate(prompt_ids, max_new_tokens=4, temperature=0)  # warm-up
    for _ in range(repeats):
        m.generate(prompt_ids, max_new_tokens=n, temperature=0)
        best = max(best, m.stats["decode_tok_s"])
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: the default model (SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--weights", default="stored,bf16,ternary")
    p.add_argument("--tokens", type=int, default=2048, help="tokens of the text to score")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    path = args.model or str(default_model_path())
    doc = default_text()
    rows = []
    for weights in args.weights.split(","):
        for head in ("bf16", "int4"):
            m = ternlm.load(path, weights=None if weights == "stored" else weights, head=head,
                            threads=args.threads, progress=False)
            ids = m.tokenizer.encode(doc.text)[: args.tokens]
            t0 = time.perf_counter()
            ppl = m.perplexity(ids, window=512, stride=256)
            row = dict(weights=weights, head=head, perplexity=ppl, ppl_tokens=len(ids),
                       ppl_seconds=time.perf_counter() - t0,
                       decode_tok_s=decode_speed(m, ids[:64]))
            rows.append(row)
            print(f"{weights:>8s} head={head:5s} ppl={ppl:8.3f} decode={row['decode_tok_s']:7.1f} tok/s",
                  file=sys.stderr)
            del m
    print(f"model: {path}; text: {doc.name} ({doc.source}), {rows[0]['ppl_tokens']} tokens, "
          f"window 512, stride 256")
    print("| layers | head | perplexity | vs bf16 head | decode tok/s | vs bf16 head |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        base = next(b for b in rows if b["weights"] == r["weights"] and b["head"] == "bf16")
        print(f"| {r['weights']} | {r['head']} | {r['perplexity']:.3f} | "
              f"{(r['perplexity'] / base['perplexity'] - 1) * 100:+.2f}% | {r['decode_tok_s']:.1f} | "
              f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=path, text=doc.name, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
