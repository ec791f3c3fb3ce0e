"""Distilled 4-bit (QuEST, `--mode quest4`) vs the file's int4 vs distilled ternary (BitNet
b1.58) on the default model, at the same number of training tokens, then every model's
perplexity on the held-out GPL-3 (ternlm.texts.default_text) in ternlm's engine.

    python benchmarks/quest_compare.py --tokens 200000 --work /tmp/quest_cmp \
        --out benchmarks/results/quest.json [--device cpu] [--threads 2]

Training text: the Python Language Reference (CPython's pydoc_data.topics, ~120k tokens,
repeated as needed), so both students see the same tokens and neither sees the held-out
text; batches of 8 x 128 tokens, the distill defaults otherwise (lr 3e-3 relative, λ warmup
10% of steps, KL to the teacher). A small-budget comparison on a CPU says which way the
methods point, not where they end: see README "4-bit models (QuEST)".
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--work", default="/tmp/quest_cmp")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--modes", default="quest4,bitnet")
    p.add_argument("--eval-tokens", type=int, default=2048)
    args = p.parse_args()
    import torch

    import ternlm
    from ternlm.default_model import default_model_path
    from ternlm.texts import default_text
    torch.set_num_threads(args.threads)
    teacher = default_model_path()
    os.makedirs(args.work, exist_ok=True)
    data = os.path.join(args.work, "pyref.txt")
    from pydoc_data import topics
    with open(data, "w", encoding="utf-8") as f:
        f.write("\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics)))
    steps = max(1, args.tokens // (args.batch * args.seq_len))
    runs = {}
    for mode in args.modes.split(","):
        out = os.path.join(args.work, mode)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out + ".checkpoint", ignore_errors=True)
        t0 = time.time()
        res = ternlm.distill(teacher, out, steps=steps, batch_size=args.batch, seq_len=args.seq_len, data=[data],
                             eval_text=None, device=args.device, mode=mode, progress=False,
                             log=lambda m: print(m, file=sys.stderr, flush=True))
        runs[mode] = {"folder": out, "steps": res.steps, "tokens": res.tokens, "train_seconds": round(res.seconds, 1),
                      "wall_seconds": round(time.time() - t0, 1),
                      "kl_first": res.history[0]["kl"], "kl_last": res.history[-1]["kl"],
                      "history": [{k: h[k] for k in ("step", "tokens", "kl", "lambda")} for h in res.history]}
        del res

    # the QuEST grid without training: the same export of a student built from the teacher
    from ternlm.distill.export import write_quantized_folder
    from ternlm.distill.quest import spec_for
    from ternlm.distill.student import build
    from ternlm.distill.teacher import float_tensors
    from ternlm.loading import read_checkpoint
    ckpt = read_checkpoint(teacher)
    ptq = os.path.join(args.work, "quest4_ptq")
    shutil.rmtree(ptq, ignore_errors=True)
    s0 = build(ckpt.config, float_tensors(ckpt), quantize=True, spec=spec_for("quest4"))
    write_quantized_folder(ptq, ckpt.config, s0.spec, s0.quantized_weights(), s0.float_weights(), ckpt.tokenizer,
                           source=ckpt.source)
    del s0

    text = default_text()
    m0 = ternlm.load(teacher, weights="bf16", progress=False)
    ids = m0.tokenizer.encode(text.text)[:args.eval_tokens]
    rows = []
    for label, path, weights in [("bf16 (the file dequantized)", teacher, "bf16"),
                                 ("int4 (the file's Q4_1, post-training)", teacher, None),
                                 ("ternary, post-training", teacher, "ternary"),
                                 ("int4 W4A4 (QuEST grid, rotated), post-training", ptq, None)] + \
            [(f"{'int4 W4A4 (QuEST), distilled' if mode == 'quest4' else 'ternary (BitNet b1.58), distilled'}",
              runs[mode]["folder"], None) for mode in runs]:
        m = ternlm.load(path, weights=weights, progress=False)
        t0 = time.time()
        ppl = m.perplexity(ids, window=512, stride=256, progress=False)
        rows.append({"model": label, "perplexity": round(ppl, 3), "weight_formats": sorted(set(m.formats.values())),
                     "activations": (f"4-bit per token, {m.config.activation_clip} clip" if m.config.activation_bits == 4
                                     else "the format's own (f32 / int8 per 32 / int8 per token)")
                     + (f", rotated {m.config.rotate_inputs}" if m.config.rotate_inputs else ""),
                     "eval_seconds": round(time.time() - t0, 1)})
        print(rows[-1], file=sys.stderr, flush=True)
        del m
    result = {"what": "distilled 4-bit (QuEST) vs the file's int4 vs distilled ternary, same training tokens",
              "teacher": teacher, "eval_text": text.name, "eval_tokens": len(ids), "eval": "ternlm engine, "
              "Model.perplexity(window=512, stride=256)", "train_text": "Python Language Reference (pydoc_data)",
              "device": args.device, "threads": args.threads, "batch": [args.batch, args.seq_len],
              "table": rows, "runs": runs,
              "command": "python benchmarks/quest_compare.py " + " ".join(sys.argv[1:])}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
