"""The GPU side of distilling the default model (README, "Make your own ternary model"), for a
machine that has torch and numpy but not ternlm's C++ core: it imports ternlm's pure-Python
pieces (ternlm.config, the GGUF reader, ternlm.distill's torch modules) without running
ternlm/__init__.py. benchmarks/distill_gpu.py prepares its inputs and assembles its outputs.

    python distill_device.py measure --setup setup.json --out DIR
        training and teacher-sampling tokens/s on random weights of the model's shape
    python distill_device.py train --setup setup.json --gguf MODEL.gguf --out DIR --steps N
        [--seconds S] [--sweep 3e-3,1e-2,3e-2] [--sweep-steps K] [--reuse K] [--resume]
        [--mode bitnet|quest4]
        distill (checkpoint in --work), then write to DIR: the ternary layers packed
        (transformers' uint8 layout + s_w) and the norms in two .npz files under 16 MiB, and
        run.json (loss history, sweep, tokens, seconds, held-out perplexities); with
        --mode quest4 (ternlm.distill.quest) the 4-bit layers as nibbles (column 2j in the
        low 4 bits of byte j, 2j+1 in the high) + per-row units and the norms in four
        student_q{0..3}.npz files (distill_gpu.py assemble writes either as a model folder)

setup.json (written by distill_gpu.py prepare): the ModelConfig, the GGUF tensor names (from
ternlm.schema, which needs the C++ core), the sampling prefixes and first-token ids, and the
held-out text's token ids.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))


def _import_ternlm(python_dir):
    """Make `ternlm` a bare package over python_dir/ternlm (no C++ core import)."""
    pkg = types.ModuleType("ternlm")
    pkg.__path__ = [os.path.join(python_dir, "ternlm")]
    sys.modules["ternlm"] = pkg


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def models(cfg, tensors, device, mode="bitnet"):
    import torch
    from ternlm.distill.quest import spec_for
    from ternlm.distill.student import build
    teacher = build(cfg, tensors, quantize=False, device=device)
    if device == "cuda":
        for m in teacher.bitlinears():              # frozen: bf16 matrices, float norms/embedding
            m.weight.data = m.weight.data.to(torch.bfloat16)
    student = build(cfg, tensors, quantize=True, device=device, spec=spec_for(mode))
    return teacher, student


def sampler(setup, teacher, batch, seq_len, seed, device, gen_batch, reuse=1):
    import torch
    from ternlm.distill.data import TeacherSamples
    return TeacherSamples(teacher, seq_len, batch, setup["prefixes"], setup["first_ids"], device=device,
                          gen_batch=gen_batch, temperature=1.0, seed=seed,
                          autocast_dtype=torch.bfloat16 if device == "cuda" else None, reuse=reuse)


def cmd_measure(args, setup, cfg):
    import torch
    from ternlm.distill.train import TrainConfig, train
    dev = args.device
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    teacher, student = models(cfg, random_tensors(cfg), dev, args.mode)
    report = {}
    seq = args.seq_len
    for compile_ in args.compile_modes:
        for mb in args.micro_batches:
            batch = mb * 2
            data = torch.randint(100, cfg.vocab_size, (batch, seq), device=dev)
            tc = TrainConfig(steps=args.measure_steps, batch_size=batch, micro_batch_size=mb, seq_len=seq,
                             lambda_warmup=0, compile=compile_, log_every=1)
            t0 = time.perf_counter()
            sync()
            try:
                res = train(student, teacher, lambda s: iter(lambda: data, None), tc, dev, progress=False)
            except torch.cuda.OutOfMemoryError:
                log(f"compile={compile_} micro={mb}x{seq}: out of memory")
                torch.cuda.empty_cache()
                continue
            sync()
            h = res["history"]
            first = h[2]["seconds"]                     # after compile / warm-up steps
            rate = (h[-1]["tokens"] - h[2]["tokens"]) / (h[-1]["seconds"] - first)
            key = f"train compile={compile_} micro={mb}x{seq}"
            report[key] = {"tok_s": rate, "warmup_s": first, "total_s": time.perf_counter() - t0,
                           "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if dev == "cuda" else 0}
            log(f"{key}: {rate:,.0f} tok/s (first 3 steps {first:.1f} s)")
            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
    for gb in args.gen_batches:
        s = sampler(setup, teacher, gb, seq, 0, dev, gb)
        s.sample(gb, setup["prefixes"][0])              # warm-up
        sync()
        t0 = time.perf_counter()
        s.sample(gb, setup["prefixes"][-1])
        sync()
        dt = time.perf_counter() - t0
        report[f"sample gen_batch={gb}"] = {"tok_s": gb * seq / dt, "seconds": dt}
        log(f"sample gen_batch={gb}: {gb * seq / dt:,.0f} tok/s ({dt:.1f} s)")
    return report


def random_tensors(cfg):
    """Weights of the model's shape (matrices ~ N(0, 0.15), norms ~ 1) for speed and smoke runs."""
    import numpy as np
    from ternlm.distill.student import Transformer
    shapes = Transformer(cfg, quantize=False)
    rng = np.random.default_rng(0)
    out = {}
    for name in shapes.tensor_names():
        shape = tuple(shapes.module_for(name).weight.shape)
        a = rng.standard_normal(shape, dtype=np.float32)
        out[name] = a * 0.15 if len(shape) == 2 else 1.0 + 0.1 * a
    return out


def held_out_kl(student, batches, device, temperature=1.0):
    import torch
    from ternlm.distill.train import autocast_for, kd_loss
    total = 0.0
    student.eval()
    with torch.no_grad(), autocast_for(device):
        for ids, t_logits in batches:
            total += float(kd_loss(student(ids), t_logits, temperature))
    student.train()
    return total / len(batches)


def cmd_train(args, setup, cfg):
    import numpy as np
    import torch
    from ternlm.distill.student import LAYER_MATRICES
    from ternlm.distill.teacher import gguf_float_tensors
    from ternlm.distill.train import TrainConfig, autocast_for, perplexity, train
    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = True
    t_start = time.perf_counter()
    tensors = random_tensors(cfg) if args.random else gguf_float_tensors(args.gguf, cfg, setup["gguf_names"])
    teacher, student = models(cfg, tensors, dev, args.mode)
    log(f"teacher and student built ({time.perf_counter() - t_start:.1f} s)")
    os.makedirs(args.work, exist_ok=True)
    ckpt = os.path.join(args.work, "state.pt")
    run_path = os.path.join(args.work, "run.json")
    run = json.load(open(run_path)) if args.resume and os.path.exists(run_path) else {"calls": []}
    eval_ids = setup["eval_ids"][:args.eval_tokens]
    ev = lambda m: perplexity(m, eval_ids, dev, window=512, stride=256)  # noqa: E731

    if not args.resume:
        run["ppl_teacher"] = ev(teacher)
        run["ppl_ptq"] = ev(student)
        log(f"held-out perplexity: teacher {run['ppl_teacher']:.2f}, PTQ ({args.mode}) {run['ppl_ptq']:.4g}")
    lr = args.lr
    if args.sweep and not args.resume:
        # the same teacher-sampled batches for every candidate, and a held-out set to judge them
        pool = sampler(setup, teacher, args.batch, args.seq_len, 1234, dev, args.gen_batch)
        it = iter(pool)
        sweep_batches = [next(it) for _ in range(args.sweep_steps)]
        held = []
        for _ in range(2):
            ids = next(it)
            with torch.no_grad(), autocast_for(dev):
                held.append((ids, teacher(ids).float()))
        init = {k: v.detach().clone() for k, v in student.state_dict().items()}
        results = {}
        for cand in args.sweep:
            student.load_state_dict(init)
            tc = TrainConfig(steps=args.sweep_steps, batch_size=args.batch, micro_batch_size=args.micro_batch,
                             seq_len=args.seq_len, lr=cand, lambda_warmup=0, warmup_steps=max(1, args.sweep_steps // 10),
                             compile=args.compile, log_every=max(1, args.sweep_steps // 4))
            t0 = time.perf_counter()
            train(student, teacher, lambda s: iter(sweep_batches), tc, dev, progress=False)
            results[cand] = held_out_kl(student, held, dev)
            log(f"sweep lr {cand:g}: held-out KL {results[cand]:.4f} ({time.perf_counter() - t0:.0f} s)")
        lr = min(results, key=results.get)
        run["sweep"] = {"steps": args.sweep_steps, "batch": args.batch, "seq_len": args.seq_len,
                        "held_out_kl": {str(k): v for k, v in results.items()}, "chosen": lr}
        student.load_state_dict(init)
        del init, held, sweep_batches
    if args.resume:
        lr = run["lr"]
    run["lr"] = lr
    tc = TrainConfig(steps=args.steps, batch_size=args.batch, micro_batch_size=args.micro_batch, seq_len=args.seq_len,
                     lr=lr, lambda_warmup=args.lambda_warmup, compile=args.compile, checkpoint_every=500,
                     log_every=max(1, args.steps // 200), seed=args.seed)
    make = lambda start: iter(sampler(setup, teacher, args.batch, args.seq_len, args.seed + start, dev,  # noqa: E731
                                      args.gen_batch, args.reuse))
    left = args.seconds - (time.perf_counter() - t_start)
    res = train(student, teacher, make, tc, dev, checkpoint_path=ckpt, resume=args.resume, progress=False,
                log=log, max_seconds=max(30.0, left))
    call = {k: res[k] for k in ("steps_done", "tokens", "seconds", "stopped")}
    call["ppl_student"] = ev(student)
    log(f"steps {res['steps_done']}/{args.steps}, {res['tokens']:,} tokens; held-out perplexity "
        f"{call['ppl_student']:.2f} ({res['stopped']})")
    run["calls"].append(call)
    run["history"] = res["history"]
    run["steps"] = args.steps
    run["settings"] = {k: getattr(args, k) for k in ("batch", "micro_batch", "seq_len", "gen_batch", "lambda_warmup",
                                                       "compile", "seed", "reuse", "mode")}
    with open(run_path, "w") as f:
        json.dump(run, f)
    if student.spec is not None:
        write_quantized_parts(args, cfg, student, run)
        return
    # outputs: packed ternary layers (two files) + norms, and run.json
    from ternlm.distill.export import pack_ternary_rows
    tern = student.ternary_weights()
    floats = student.float_weights()
    half = cfg.num_layers // 2
    for part, layers in (("a", range(0, half)), ("b", range(half, cfg.num_layers))):
        arrays = {}
        for i in layers:
            for p in LAYER_MATRICES:
                t, s = tern[f"layers.{i}.{p}"]
                arrays[f"layers.{i}.{p}.packed"] = pack_ternary_rows(t)
                arrays[f"layers.{i}.{p}.s_w"] = np.float32(s)
        if part == "b":
            for name, a in floats.items():
                if name not in ("embed", "lm_head"):
                    arrays[name] = a
        np.savez(os.path.join(args.out, f"student_{part}.npz"), **arrays)
    with open(os.path.join(args.out, "run.json"), "w") as f:
        json.dump(run, f, indent=1)
    log(f"wrote {sorted(os.listdir(args.out))}")


def write_quantized_parts(args, cfg, student, run):
    """A spec'd student's layers (nibbles or packed ternary rows + units) and norms in four
    .npz files, and run.json (with the spec: distill_gpu.py assemble rebuilds the folder)."""
    import numpy as np
    from ternlm.distill.export import pack_ternary_rows
    quant = student.quantized_weights()
    floats = student.float_weights()
    run["quant"] = student.spec.to_dict()
    bounds = [cfg.num_layers * k // 4 for k in range(5)]
    for k in range(4):
        arrays = {}
        for name, (codes, unit) in quant.items():
            if not bounds[k] <= int(name.split(".")[1]) < bounds[k + 1]:
                continue
            if student.spec.weights == "int4":
                padded = np.zeros((codes.shape[0], codes.shape[1] + codes.shape[1] % 2), np.uint8)
                padded[:, :codes.shape[1]] = codes
                arrays[name + ".nibbles"] = padded[:, 0::2] | (padded[:, 1::2] << 4)
            else:
                arrays[name + ".packed"] = pack_ternary_rows(codes)
            arrays[name + ".unit"] = np.asarray(unit, dtype=np.float32)
        if k == 3:
            arrays.update({n: a for n, a in floats.items() if n not in ("embed", "lm_head")})
        np.savez(os.path.join(args.out, f"student_q{k}.npz"), **arrays)
    with open(os.path.join(args.out, "run.json"), "w") as f:
        json.dump(run, f, indent=1)
    log(f"wrote {sorted(os.listdir(args.out))}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("measure", "train"))
    p.add_argument("--setup", required=True)
    p.add_argument("--python", default=next(d for d in (os.path.join(HERE, "python"), os.path.join(HERE, "..", "python"))
                                            if os.path.isdir(d) or d.endswith(os.path.join("..", "python"))))
    p.add_argument("--out", required=True)
    p.add_argument("--gguf")
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", default="/tmp/ternlm_distill")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=540)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--gen-batch", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--reuse", type=int, default=1, help="train on each pool of teacher samples this many times")
    p.add_argument("--sweep", type=lambda s: [float(x) for x in s.split(",")], default=None)
    p.add_argument("--sweep-steps", type=int, default=40)
    p.add_argument("--lambda-warmup", type=int, default=None)
    p.add_argument("--eval-tokens", type=int, default=1024)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--random", action="store_true", help="random weights instead of --gguf (a smoke run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("bitnet", "quest4"), default="bitnet",
                   help="the student's quantization (ternlm.distill.quest.MODES)")
    p.add_argument("--micro-batches", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32])
    p.add_argument("--gen-batches", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1024])
    p.add_argument("--measure-steps", type=int, default=8)
    p.add_argument("--compile-modes", type=lambda s: [bool(int(x)) for x in s.split(",")], default=[False, True])
    args = p.parse_args()
    _import_ternlm(os.path.abspath(args.python))
    from ternlm.config import ModelConfig
    with open(args.setup) as f:
        setup = json.load(f)
    cfg = ModelConfig.from_dict(setup["config"])
    os.makedirs(args.out, exist_ok=True)
    if args.mode == "measure":
        report = cmd_measure(args, setup, cfg)
        with open(os.path.join(args.out, "measure.json"), "w") as f:
            json.dump(report, f, indent=1)
    else:
        cmd_train(args, setup, cfg)


if __name__ == "__main__":
    main()
