"""nano decode speed at the BitNet b1.58 2B-4T shape (random weights: speed only), beside
ternary in the same process and run (interleaved repetitions).

    python benchmarks/nano_speed.py [--bits 0.55,0.8,1.0] [--threads 2] [--json FILE]

The layer matrices of the synthetic bitnet-2b checkpoint (ternlm.synthetic, seed 0; written
once by `ternlm bench --synthetic bitnet-2b`) are replaced by random sign factors at the rank
python/ternlm/nano.py picks for each budget (a factorization of random weights would take
an hour and measure nothing more: the kernels' time does not depend on the signs); the
embedding / head stay bf16 as for ternary. Prints and writes decode tok/s per format (best
of the repetitions, each a 64-token greedy decode after a 128-token prompt), the bytes of
the layer matrices and their bits per weight.
"""
import argparse
import json
import os
import sys

import numpy as np

import ternlm
from ternlm import nano
from ternlm.loading import EngineWeights, _convert_one, build_engine, read_checkpoint, target_formats
from ternlm.model import Model


def random_nano(shape, bits, rng):
    out, inn = shape
    r = nano.rank_for(out, inn, bits)
    u = np.where(rng.random((out, r)) < 0.5, 1, -1).astype(np.int8)
    v = np.where(rng.random((inn, r)) < 0.5, 1, -1).astype(np.int8)
    s_out = np.full(out, 1.0 / np.sqrt(r * inn), np.float32)
    return ternlm.from_nano(u, v, s_out, np.ones(inn, np.float32))


def load_random_nano(folder, bits, threads, context=256):
    from ternlm import formats as fm
    ckpt = read_checkpoint(folder)
    formats = target_formats(ckpt, "ternary", None)
    rng = np.random.default_rng(0)
    tensors = {}
    for name in ckpt.config.tensor_names():
        if formats.get(name) == "ternary":
            formats[name] = f"nano:{bits}"
            tensors[name] = random_nano(ckpt.tensors[name].shape, bits, rng)
        else:
            tensors[name] = _convert_one(ckpt.tensors[name], formats.get(name), fm)
    norms = {k: v for k, v in tensors.items() if k not in formats}
    engine = build_engine(ckpt.config, tensors, context, threads)
    return Model(engine, ckpt.tokenizer, ckpt.config, formats, context, source=folder,
                 matrices=EngineWeights(engine, ckpt.config, norms))


def layer_bytes(m):
    from ternlm.compare.worker import weight_accounting
    return weight_accounting(m)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bits", default="0.55,0.8,1.0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    a = p.parse_args(argv)
    from ternlm.cli import _synthetic_folder
    folder = _synthetic_folder("bitnet-2b")
    models = {"ternary": ternlm.load(folder, weights="ternary", threads=a.threads, context=256, progress=False)}
    for b in a.bits.split(","):
        models[f"nano:{b}"] = load_random_nano(folder, float(b), a.threads)
    prompt_ids = list(range(1000, 1128))
    best = {k: 0.0 for k in models}
    for _ in range(a.repeats):                      # interleaved: each repetition runs every format
        for k, m in models.items():
            m.generate(m.tokenizer.decode(prompt_ids), max_new_tokens=64, temperature=0.0)
            best[k] = max(best[k], m.stats["decode_tok_s"])
    rows = []
    for k, m in models.items():
        acc = layer_bytes(m)
        rows.append({"format": k, "decode_tok_s": round(best[k], 2),
                     "layer_bits_per_weight": round(acc["layer_bits_per_weight"], 4),
                     "bytes_per_token_mb": round(acc["bytes_per_token"] / 1e6, 1)})
        print(f"{k:10s} decode {best[k]:6.2f} tok/s  layers {acc['layer_bits_per_weight']:.3f} bits/weight  "
              f"{acc['bytes_per_token'] / 1e6:.0f} MB read per token", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"shape": "bitnet-2b (random weights)", "threads": a.threads, "rows": rows,
                       "cpu_count": os.cpu_count()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
