"""What the embedding/lm_head format costs in quality and buys in speed.

    PYTHONPATH=python .venv/bin/python benchmarks/head_quality.py [--model PATH] [--threads 2]
        [--rounds 5] [--synthetic] [--json benchmarks/results/head_quality.json]

Heads (`head=`): bf16 (the default), bf16c (bf16's values in ~12 bits), int8 (one scale per
row, cpp/formats/int8.h), q6 (~6.6 bits, GGUF Q6_K's numerics, cpp/formats/q6.h) and int4
(group 32). The layer matrices stay as stored.

1. Perplexity of each head on the default text (ternlm.texts: Debian's GPL-3, sliding
   window 512 / stride 256 over the first --tokens tokens) on the default model
   (SmolLM2-135M-Instruct Q4_1) or --model.
2. Greedy decode tok/s with each head, interleaved: every head's model is loaded once, then
   --rounds rounds each decode 32 tokens with every head in turn (after one warm-up round),
   so slow phases of a shared machine hit every head alike; reported as the median per
   head and its median per-round ratio to bf16. With --synthetic the same on
   ternlm.synthetic's random BitNet model of microsoft/bitnet-b1.58-2B-4T's shape (its
   128256 x 2560 head is more than half of the bytes a decoded token reads); its
   perplexity means nothing and is not measured.
Prints tables; --json writes the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import ternlm
from ternlm.default_model import default_model_path
from ternlm.texts import default_text

HEADS = ("bf16", "bf16c", "int8", "q6", "int4")


def decode_once(m, prompt_ids, n=32) -> float:
    m.generate(prompt_ids, max_new_tokens=n, temperature=0)
    return m.stats["decode_tok_s"]


def interleaved_decode(models: dict, prompt_ids, rounds: int) -> dict:
    for m in models.values():                 # warm-up; decode exactly n tokens
        m.eos_token_ids = []
        decode_once(m, prompt_ids, 4)
    speeds = {h: [] for h in models}
    for _ in range(rounds):
        for h, m in models.items():
            speeds[h].append(decode_once(m, prompt_ids))
    base = speeds["bf16"]
    return {h: dict(decode_tok_s=statistics.median(v), decode_runs=v,
                    vs_bf16=statistics.median(x / b for x, b in zip(v, base))) for h, v in speeds.items()}


def load_all(path, threads, heads):
    out = {}
    for h in heads:
        t0 = time.perf_counter()
        out[h] = ternlm.load(path, head=h, threads=threads, context=512, progress=False)
        print(f"loaded head={h} in {time.perf_counter() - t0:.1f} s ({out[h].formats.get('lm_head', out[h].formats.get('embed'))})",
              file=sys.stderr)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: the default model (SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--tokens", type=int, default=2048, help="tokens of the text to score")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--synthetic", action="store_true", help="also decode on the 2B-4T-shaped synthetic model")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    path = args.model or str(default_model_path())
    doc = default_text()
    models = load_all(path, args.threads, HEADS)
    ids = models["bf16"].tokenizer.encode(doc.text)[: args.tokens]
    rows = []
    for h, m in models.items():
        t0 = time.perf_counter()
        ppl = m.perplexity(ids, window=512, stride=256)
        rows.append(dict(model="default", head=h, perplexity=ppl, ppl_tokens=len(ids),
                         ppl_seconds=time.perf_counter() - t0))
        print(f"head={h:5s} ppl={ppl:8.3f}", file=sys.stderr)
    speed = interleaved_decode(models, ids[:64], args.rounds)
    for r in rows:
        r.update(speed[r["head"]])
    del models
    synth = []
    if args.synthetic:
        from ternlm.synthetic import write_synthetic_bitnet
        folder = os.path.join(os.path.expanduser(os.environ.get("TERNLM_HOME") or "~/.cache/ternlm"),
                              "synthetic", "bitnet-2b-seed0")
        if not os.path.exists(os.path.join(folder, "config.json")):
            write_synthetic_bitnet(folder, "bitnet-2b")
        smodels = load_all(folder, args.threads, HEADS)
        sspeed = interleaved_decode(smodels, list(range(100, 164)), args.rounds)
        synth = [dict(model="synthetic bitnet-2b", head=h, **v) for h, v in sspeed.items()]
        del smodels
    base = next(r for r in rows if r["head"] == "bf16")
    print(f"model: {path}; text: {doc.name} ({doc.source}), {len(ids)} tokens, window 512, stride 256; "
          f"decode: {args.threads} threads, median of {args.rounds} interleaved rounds of 32 tokens")
    print("| head | perplexity | vs bf16 | decode tok/s | vs bf16 |" + (" 2B-4T shape tok/s | vs bf16 |" if synth else ""))
    print("| --- | --- | --- | --- | --- |" + (" --- | --- |" if synth else ""))
    for r in rows:
        line = (f"| {r['head']} | {r['perplexity']:.3f} | {(r['perplexity'] / base['perplexity'] - 1) * 100:+.2f}% | "
                f"{r['decode_tok_s']:.1f} | {r['vs_bf16']:.2f}x |")
        if synth:
            s = next(x for x in synth if x["head"] == r["head"])
            line += f" {s['decode_tok_s']:.1f} | {s['vs_bf16']:.2f}x |"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=path, text=doc.name, threads=args.threads, rounds=args.rounds,
                           target=ternlm._core.current_target(), rows=rows, synthetic=synth), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
