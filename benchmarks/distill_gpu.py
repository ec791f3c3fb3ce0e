"""The CPU side of distilling a GGUF model on a remote GPU that has torch but not ternlm
(benchmarks/distill_device.py runs there). Used for README's "Make your own ternary model".

    python benchmarks/distill_gpu.py prepare --teacher MODEL.gguf --carry DIR [--parts 2]
        DIR/code/   python/ternlm (pure-Python files), distill_device.py, setup.json, and the
                    `gguf` wheel (its GGUF reader needs the package)
        DIR/part0/ DIR/part1/ ...   the GGUF file cut in pieces that fit a transfer limit
                    (cat DIR/part*/gguf.* > model.gguf puts it back)
    python benchmarks/distill_gpu.py assemble --teacher MODEL.gguf --returned DIR --out HF_FOLDER
        [--ternlm-out FOLDER]
        the Hugging Face folder from the returned ternary layers and norms + the teacher's
        embedding and tokenizer (ternlm.distill.export.write_hf_folder)

setup.json: the ModelConfig, the GGUF tensor names, the sampling prefixes and first-token ids (ternlm.distill.api),
and the first 1024 token ids of the default text (ternlm.texts, the GPL-3) for the
held-out perplexity the device prints.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare(args):
    from ternlm import texts
    from ternlm.distill.api import default_prefixes, first_token_ids
    from ternlm.distill.teacher import gguf_names
    from ternlm.loading import read_checkpoint
    ckpt = read_checkpoint(args.teacher)
    code = os.path.join(args.carry, "code")
    if os.path.exists(args.carry):
        shutil.rmtree(args.carry)
    os.makedirs(code)
    tok = ckpt.tokenizer
    setup = {"config": ckpt.config.to_dict(), "gguf_names": gguf_names(ckpt.config), "prefixes": default_prefixes(tok),
             "first_ids": first_token_ids(tok, ckpt.config.vocab_size),
             "eval_ids": tok.encode(texts.default_text().text)[:args.eval_tokens]}
    with open(os.path.join(code, "setup.json"), "w") as f:
        json.dump(setup, f)
    src = os.path.join(REPO, "python")
    for path in glob.glob(os.path.join(src, "ternlm", "**", "*.py"), recursive=True):
        dst = os.path.join(code, "python", os.path.relpath(path, src))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(path, dst)
    shutil.copyfile(os.path.join(REPO, "benchmarks", "distill_device.py"), os.path.join(code, "distill_device.py"))
    import importlib.metadata as md
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "-d", os.path.join(code, "whl"), f"gguf=={md.version('gguf')}"], check=True)
    size = os.path.getsize(args.teacher)
    step = -(-size // args.parts)
    with open(args.teacher, "rb") as f:
        for i in range(args.parts):
            os.makedirs(os.path.join(args.carry, f"part{i}"))
            with open(os.path.join(args.carry, f"part{i}", f"gguf.{i}"), "wb") as g:
                g.write(f.read(step))
    print(f"wrote {args.carry}: code/ ({len(setup['eval_ids'])} eval tokens, prefixes "
          f"{[len(p) for p in setup['prefixes']]}), {args.parts} parts of {step / 2**20:.1f} MiB")


def assemble(args):
    import numpy as np

    from ternlm.distill.export import write_hf_folder, write_ternlm_folder
    from ternlm.distill.teacher import float_tensors
    from ternlm.io.hf import unpack_bitnet_weight
    from ternlm.loading import read_checkpoint
    ckpt = read_checkpoint(args.teacher)
    cfg = ckpt.config
    teacher = float_tensors(ckpt)
    if os.path.exists(os.path.join(args.returned, "student_q0.npz")):
        return assemble_quantized(args, ckpt, teacher)
    ternary, floats = {}, {}
    for part in ("a", "b"):
        with np.load(os.path.join(args.returned, f"student_{part}.npz")) as z:
            for key in z.files:
                if key.endswith(".packed"):
                    name = key[:-len(".packed")]
                    rows = teacher[name].shape[0]
                    ternary[name] = (unpack_bitnet_weight(z[key], rows, key), float(z[name + ".s_w"]))
                elif not key.endswith(".s_w"):
                    floats[key] = np.asarray(z[key], dtype=np.float32)
    for name in cfg.tensor_names():
        if name not in ternary and name not in floats:
            floats[name] = teacher[name]                # embedding / lm_head: the teacher's
    missing = [n for n in cfg.tensor_names() if n.startswith("layers.") and n.rsplit(".", 1)[-1] in
               ("q", "k", "v", "o", "gate", "up", "down") and n not in ternary]
    if missing:
        raise SystemExit(f"{args.returned}: no ternary weights for {missing[:3]}")
    write_hf_folder(args.out, cfg, ternary, floats, ckpt.tokenizer, source=ckpt.source)
    print(f"wrote {args.out}")
    if args.ternlm_out:
        write_ternlm_folder(args.out, args.ternlm_out)
        print(f"wrote {args.ternlm_out}")


def assemble_quantized(args, ckpt, teacher):
    """distill_device.py --mode quest4's parts -> a ternlm folder (export.write_quantized_folder)."""
    import json

    import numpy as np

    from ternlm.distill.export import write_quantized_folder
    from ternlm.distill.quest import QuantSpec
    from ternlm.io.hf import unpack_bitnet_weight
    with open(os.path.join(args.returned, "run.json")) as f:
        spec = QuantSpec(**json.load(f)["quant"]).check()
    quant, floats = {}, {}
    for k in range(4):
        with np.load(os.path.join(args.returned, f"student_q{k}.npz")) as z:
            for key in z.files:
                name, _, kind = key.rpartition(".")
                if kind == "nibbles":
                    rows, cols = teacher[name].shape
                    b = z[key]
                    codes = np.stack([b & 15, b >> 4], axis=-1).reshape(rows, -1)[:, :cols]
                    quant[name] = (np.ascontiguousarray(codes), np.asarray(z[name + ".unit"], np.float32))
                elif kind == "packed":
                    rows = teacher[name].shape[0]
                    quant[name] = (unpack_bitnet_weight(z[key], rows, key), float(z[name + ".unit"]))
                elif kind != "unit":
                    floats[key] = np.asarray(z[key], dtype=np.float32)
    for name in ckpt.config.tensor_names():
        if name not in quant and name not in floats:
            floats[name] = teacher[name]                # embedding / lm_head: the teacher's
    write_quantized_folder(args.out, ckpt.config, spec, quant, floats, ckpt.tokenizer, source=ckpt.source)
    print(f"wrote {args.out} (a ternlm folder: {spec.weights} weights, {spec.activations} activations)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--teacher", required=True)
    a.add_argument("--carry", required=True)
    a.add_argument("--parts", type=int, default=2)
    a.add_argument("--eval-tokens", type=int, default=1024)
    b = sub.add_parser("assemble")
    b.add_argument("--teacher", required=True)
    b.add_argument("--returned", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--ternlm-out")
    args = p.parse_args()
    prepare(args) if args.cmd == "prepare" else assemble(args)


if __name__ == "__main__":
    main()
