"""`ternlm distill`: the command-line face of ternlm.distill (registered by ternlm/cli.py).

    ternlm distill --teacher MODEL --out DIR [--steps N] [--data FILE ...] [--batch-size B]
                   [--seq-len L] [--lr LR] [--lambda-warmup N] [--ce-weight W] [--device cuda]
                   [--compile] [--resume] [--ternlm-out DIR] [--eval-text FILE | --no-eval]
                   [--mode bitnet|quest4] [--weights ternary|int4] [--activations int8|int4]
                   [--clip absmax|gaussian] [--rotate SITES] [--trust T]
"""
from __future__ import annotations

import sys

from ..cli import _positive_int  # one rule for counts in every subcommand

DESCRIPTION = (
    "Make a ternary (BitNet b1.58) or, with --mode quest4, a 4-bit (QuEST) model from --teacher by "
    "quantization-aware distillation: a student of the same architecture whose layer linears use ternary "
    "weights and int8 activations (quest4: int4 weights and activations on Hadamard-rotated inputs) learns "
    "the teacher's next-token distribution (KL), on the text in --data or, without it, on text the teacher "
    "samples itself. Writes a Hugging Face folder (the teacher's architecture + quantization_config "
    "bitnet) that transformers and ternlm both load; quest4 and the other 4-bit settings write a ternlm "
    "folder. Needs PyTorch: pip install 'ternlm[train]'. Runs on CUDA when present (bf16 autocast), else "
    "on the CPU.")


def add_parser(sub):
    d = sub.add_parser("distill", help="make a ternary model from any model by distillation (needs torch)",
                       description=DESCRIPTION)
    d.add_argument("--teacher", metavar="PATH",
                   help="Hugging Face folder, .gguf file or ternlm folder (default: the default model)")
    d.add_argument("--out", metavar="DIR", required=True, help="output folder (new or empty)")
    d.add_argument("--steps", type=int, default=1000, metavar="N", help="optimizer steps (default: 1000)")
    d.add_argument("--data", nargs="+", metavar="FILE",
                   help="UTF-8 text files to train on (default: text the teacher samples itself)")
    d.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="sequences per step (default: 8)")
    d.add_argument("--micro-batch-size", type=_positive_int, default=None, metavar="M",
                   help="sequences per forward, gradients accumulated (default: the batch size)")
    d.add_argument("--seq-len", type=_positive_int, default=256, metavar="L", help="tokens per sequence (default: 256)")
    d.add_argument("--lr", type=float, default=3e-3,
                   help="peak learning rate, relative to each tensor's mean |weight| (default: 3e-3, the best "
                        "of a sweep on SmolLM2-135M)")
    d.add_argument("--warmup-steps", type=int, default=None, metavar="N", help="LR warmup (default: 2%% of steps)")
    d.add_argument("--lambda-warmup", type=int, default=None, metavar="N",
                   help="steps over which the quantization is blended in (default: 10%% of steps; 0: from the start)")
    d.add_argument("--ce-weight", type=float, default=0.0, metavar="W",
                   help="add W x cross-entropy on the data to the KL (default: 0)")
    d.add_argument("--sample-reuse", type=_positive_int, default=1, metavar="K",
                   help="without --data: train on each pool of teacher samples K times (faster, fewer distinct "
                        "tokens; default: 1)")
    q = d.add_argument_group("quantization (default: --mode bitnet)")
    q.add_argument("--mode", choices=("bitnet", "quest4"), default="bitnet",
                   help="bitnet: ternary weights, int8 activations (BitNet b1.58; a Hugging Face folder); quest4: "
                        "int4 weights and activations, Hadamard-rotated inputs, Gaussian clipping and the trust "
                        "estimator (QuEST; a ternlm folder)")
    q.add_argument("--weights", choices=("ternary", "int4"), help="override the mode's weight quantization")
    q.add_argument("--activations", choices=("int8", "int4"), help="override the mode's activation quantization")
    q.add_argument("--clip", choices=("absmax", "gaussian"),
                   help="clip of the 4-bit grids: max|x|, or 2.5139 x RMS (MSE-optimal for a Gaussian)")
    q.add_argument("--rotate", metavar="SITES",
                   help="linear inputs to Hadamard-rotate: a comma-separated subset of qkv,o,gate_up,down, or "
                        "none (quest4: all)")
    q.add_argument("--trust", type=float, metavar="T",
                   help="trust estimator: gradient only where |quantization error| <= T half-steps (quest4: 1; "
                        "0: plain straight-through)")
    d.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    d.add_argument("--compile", action="store_true", help="torch.compile the blocks (faster on GPUs)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--eval-text", metavar="FILE",
                   help="held-out text for the perplexities (default: the GNU GPL v3, ternlm.texts)")
    d.add_argument("--no-eval", action="store_true", help="skip the perplexity evaluation")
    d.add_argument("--checkpoint-dir", metavar="DIR", help="where checkpoints go (default: OUT.checkpoint)")
    d.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="steps between checkpoints (default: 10%% of steps)")
    d.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    d.add_argument("--ternlm-out", metavar="DIR", help="also write a ternlm folder here")
    d.set_defaults(func=cmd_distill)
    return d


def cmd_distill(args) -> int:
    from .api import distill
    teacher = args.teacher
    if teacher is None:
        from ..default_model import default_model_path
        teacher = default_model_path()
    eval_text = None if args.no_eval else (args.eval_text or "default")
    try:
        res = distill(teacher, args.out, steps=args.steps, data=args.data, batch_size=args.batch_size,
                      micro_batch_size=args.micro_batch_size, seq_len=args.seq_len, lr=args.lr,
                      warmup_steps=args.warmup_steps, lambda_warmup=args.lambda_warmup, ce_weight=args.ce_weight,
                      sample_reuse=args.sample_reuse, device=args.device, compile=args.compile, seed=args.seed, eval_text=eval_text,
                      checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                      resume=args.resume, ternlm_out=args.ternlm_out, mode=args.mode, weights=args.weights,
                      activations=args.activations, clip=args.clip,
                      rotate="" if args.rotate == "none" else args.rotate, trust=args.trust)
    except (ImportError, PermissionError) as e:
        raise ValueError(str(e)) from None
    ppl = "  ".join(f"{k} {v:.4g}" for k, v in res.perplexity.items())
    print(f"distilled {res.steps} steps, {res.tokens:,} tokens in {res.seconds:.0f} s on {res.device}"
          + (f"; held-out perplexity: {ppl}" if ppl else ""), file=sys.stderr)
    print(f"load it with ternlm.load({res.out!r}) or --model {res.out}", file=sys.stderr)
    return 0
