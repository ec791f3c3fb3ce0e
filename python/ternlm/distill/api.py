"""ternlm.distill(teacher, out, ...): the whole run, from a teacher ternlm loads to an exported
ternary model.

Order of work, so that bad input fails before anything is written or trained: settings
checked; the teacher read (ternlm's checkpoint readers); `out` (and `ternlm_out`) checked to
be new or empty folders in writable places; the data checked; an existing checkpoint
refused unless resume=True. Only then torch is imported, the teacher and student built,
the held-out perplexities of the teacher and of the post-training-quantized student measured,
the student trained, measured again and exported (out written under a temporary name, then
renamed). The checkpoint folder is removed after a successful export unless
keep_checkpoint=True.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field


@dataclass
class DistillResult:
    out: str
    ternlm_out: str | None
    device: str
    steps: int
    tokens: int
    seconds: float
    perplexity: dict = field(default_factory=dict)   # teacher, ptq, student (held-out text)
    history: list = field(default_factory=list)      # see ternlm.distill.train.train
    student: object = None                           # the trained torch model (student.Transformer)

    def __repr__(self):
        ppl = ", ".join(f"{k} {v:.4g}" for k, v in self.perplexity.items())
        return (f"DistillResult(out={self.out!r}, steps={self.steps}, tokens={self.tokens:,}, "
                f"seconds={self.seconds:.0f}, device={self.device!r}" + (f", perplexity: {ppl}" if ppl else "") + ")")


def _stderr(msg):
    print(msg, file=sys.stderr, flush=True)


def default_prefixes(tokenizer) -> list:
    """Starts of teacher samples: plain text (BOS when the tokenizer adds one) and, for a chat
    model, its chat template up to the user's message."""
    prefixes = [[tokenizer.bos_token_id] if tokenizer.add_bos_token else []]
    if tokenizer.chat_template:
        marker = "\u2063\u2063MESSAGE\u2063\u2063"
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], add_generation_prompt=False)
        except Exception:                     # a template that needs more than one message
            text = ""
        if marker in text:
            prefixes.append(tokenizer.encode(text.split(marker)[0], add_special_tokens=False))
    return prefixes


def first_token_ids(tokenizer, vocab_size: int) -> list:
    """Token ids a teacher sample may start with: the vocabulary without added (special) tokens."""
    added = set(tokenizer.backend.get_added_tokens_decoder())
    return [i for i in range(vocab_size) if i not in added]


def distill(teacher, out, *, steps: int = 1000, data=None, batch_size: int = 8, seq_len: int = 256,
            micro_batch_size: int | None = None, lr: float = 3e-3, warmup_steps: int | None = None,
            lambda_warmup: int | None = None, ce_weight: float = 0.0, temperature: float = 1.0,
            train_embeddings: bool = False, sample_temperature: float = 1.0, gen_batch: int | None = None,
            sample_reuse: int = 1,
            device: str | None = None, compile: bool = False, seed: int = 0, eval_text="default",
            eval_tokens: int = 1024, checkpoint_dir=None, checkpoint_every: int | None = None,
            resume: bool = False, keep_checkpoint: bool = False, ternlm_out=None,
            float_dtype: str = "bfloat16", progress: bool | None = None, log=_stderr, mode: str = "bitnet",
            weights: str | None = None, activations: str | None = None, clip: str | None = None,
            rotate: str | None = None, trust: float | None = None) -> DistillResult:
    """Distill `teacher` (a Hugging Face folder, GGUF file or ternlm folder) into a BitNet b1.58
    student of the same architecture and write it to `out` (a Hugging Face folder, module
    ternlm.distill.export); returns a DistillResult.

    data: None (the teacher writes its own training text), a text file path or a list of
    them, or an iterable of strings / {"text": ...} records (ternlm.distill.data).
    sample_reuse: with teacher samples, train on each generated pool this many times.
    steps x batch_size x seq_len tokens are trained on; lr is relative to each tensor's mean
    |weight|; lambda_warmup (None: steps // 10) steps blend the quantization in; ce_weight
    adds cross-entropy on the data to the KL (meaningful with real text).
    eval_text: "default" (ternlm.texts.default_text()), a file path, a str of text, or None;
    its first eval_tokens tokens give the held-out perplexities.
    Checkpoints go to checkpoint_dir (default: out + ".checkpoint") every checkpoint_every
    steps (default: steps // 10); resume=True continues one. ternlm_out: also write a
    ternlm folder there. log: a function taking one line (None: silent); progress: a bar
    (default: when stderr is a terminal).
    mode: "bitnet" (ternary weights, int8 activations: BitNet b1.58) or "quest4" (QuEST:
    int4 weights and activations, Hadamard-rotated inputs, Gaussian clipping, the trust
    estimator; ternlm.distill.quest); weights ("ternary" | "int4"), activations ("int8" |
    "int4"), clip ("absmax" | "gaussian"), rotate ("qkv,o,gate_up,down" or a subset, "" for
    none) and trust (a bound in half-steps; 0: plain straight-through) override the mode's.
    A student other than plain BitNet is written to `out` as a ternlm folder (export.py).
    """
    from .export import check_output_folder
    from .quest import spec_for
    spec = spec_for(mode, weights=weights, activations=activations, clip=clip, rotate=rotate, trust=trust)
    from .train import TrainConfig
    tc = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, micro_batch_size=micro_batch_size,
                     lr=lr, warmup_steps=warmup_steps, lambda_warmup=lambda_warmup, ce_weight=ce_weight,
                     temperature=temperature, train_embeddings=train_embeddings, compile=compile, seed=seed,
                     checkpoint_every=max(1, steps // 10) if checkpoint_every is None else checkpoint_every)
    tc.check()
    if float_dtype not in ("bfloat16", "float32"):
        raise ValueError(f"float_dtype must be 'bfloat16' or 'float32', got {float_dtype!r}")
    log = log or (lambda msg: None)

    ckpt = _read_teacher(teacher)
    out = os.path.abspath(os.fspath(out))
    if os.path.abspath(os.fspath(teacher)) == out:
        raise ValueError(f"out {out}: is the teacher; write the student to another folder")
    check_output_folder(out)
    if ternlm_out is not None and not spec.is_bitnet:
        raise ValueError(f"ternlm_out: mode {mode!r} writes a ternlm folder to out already")
    if ternlm_out is not None:
        ternlm_out = os.path.abspath(os.fspath(ternlm_out))
        if ternlm_out == out:
            raise ValueError("ternlm_out must differ from out")
        check_output_folder(ternlm_out, "ternlm_out")
    if data is not None:
        from .data import check_text_source
        check_text_source(data)
    eval_ids = _eval_ids(eval_text, ckpt.tokenizer, eval_tokens)
    ckpt_dir = os.path.abspath(os.fspath(checkpoint_dir)) if checkpoint_dir else out + ".checkpoint"
    ckpt_path = os.path.join(ckpt_dir, "state.pt")
    if os.path.exists(ckpt_path) and not resume:
        raise FileExistsError(f"{ckpt_path}: a checkpoint of an earlier run is there; pass resume=True "
                              f"(--resume) to continue it, or delete it to start over")
    if resume and not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"resume: no checkpoint at {ckpt_path}")

    try:
        import torch
    except ImportError:
        raise ImportError("ternlm distill needs PyTorch: pip install 'ternlm[train]'") from None
    from .data import TeacherSamples, text_batches
    from .export import write_hf_folder, write_quantized_folder, write_ternlm_folder
    from .student import build
    from .teacher import float_tensors
    from .train import perplexity, train

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    cfg, tok = ckpt.config, ckpt.tokenizer
    tensors = float_tensors(ckpt)
    teacher_m = build(cfg, tensors, quantize=False, device=dev)
    for site in spec.sites():
        width = {"qkv": cfg.hidden_size, "o": cfg.num_heads * cfg.head_dim, "gate_up": cfg.hidden_size,
                 "down": cfg.intermediate_size}[site]
        if width % 16:
            raise ValueError(f"rotate: the input of {site} has {width} values, not a multiple of 16")
    student = build(cfg, tensors, quantize=True, device=dev, spec=spec)
    del tensors
    if dev.type == "cuda":
        for m in teacher_m.bitlinears():
            m.weight.data = m.weight.data.to(torch.bfloat16)
    ppl = {}
    if eval_ids:
        ppl["teacher"] = perplexity(teacher_m, eval_ids, dev)
        ppl["ptq"] = perplexity(student, eval_ids, dev)
        log(f"held-out perplexity ({len(eval_ids)} tokens): teacher {ppl['teacher']:.3f}, "
            f"post-training {spec.weights} {ppl['ptq']:.4g}")

    if data is None:
        autocast = torch.bfloat16 if dev.type == "cuda" else None
        prefixes, first = default_prefixes(tok), first_token_ids(tok, cfg.vocab_size)

        def make_batches(start):
            return iter(TeacherSamples(teacher_m, seq_len, batch_size, prefixes, first, device=dev,
                                       gen_batch=gen_batch, temperature=sample_temperature,
                                       seed=seed + start, autocast_dtype=autocast, reuse=sample_reuse))
    else:
        eos = tok.eos_token_ids[0] if tok.eos_token_ids else None

        def make_batches(start):
            it = text_batches(data, lambda s: tok.encode(s, add_special_tokens=False), eos, seq_len,
                              batch_size, seed=seed)
            for _ in range(start):                      # resume: skip what was trained on
                next(it)
            return it

    log(f"distilling ({mode}: {spec.weights} weights, {spec.activations} activations"
        + (f", rotated {spec.rotate}" if spec.rotate else "") + f") on {dev.type}: {steps} steps x {batch_size} x {seq_len} tokens, "
        f"data: {'teacher samples' if data is None else 'text'}")
    res = train(student, teacher_m, make_batches, tc, dev, checkpoint_path=ckpt_path, resume=resume,
                progress=progress, log=log)
    if eval_ids:
        ppl["student"] = perplexity(student, eval_ids, dev)
        log(f"held-out perplexity: distilled {spec.weights} {ppl['student']:.3f}")

    if spec.is_bitnet:
        write_hf_folder(out, cfg, student.ternary_weights(), student.float_weights(), tok, source=ckpt.source,
                        float_dtype=float_dtype)
    else:
        write_quantized_folder(out, cfg, spec, student.quantized_weights(), student.float_weights(), tok,
                               source=ckpt.source, float_dtype=float_dtype)
    log(f"wrote {out}")
    if ternlm_out is not None:
        write_ternlm_folder(out, ternlm_out)
        log(f"wrote {ternlm_out}")
    if not keep_checkpoint:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return DistillResult(out=out, ternlm_out=ternlm_out, device=str(dev), steps=res["steps_done"],
                         tokens=res["tokens"], seconds=res["seconds"], perplexity=ppl, history=res["history"],
                         student=student)


def _read_teacher(teacher):
    from ..loading import read_checkpoint
    if not isinstance(teacher, (str, os.PathLike)):
        raise TypeError(f"teacher must be a path (Hugging Face folder, .gguf file or ternlm folder), "
                        f"got {type(teacher).__name__}")
    try:
        ckpt = read_checkpoint(teacher)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise ValueError(f"teacher {os.fspath(teacher)}: ternlm cannot load it ({e})") from e
    # the student (student.py) has Llama / BitNet blocks only
    c = ckpt.config
    extra = [name for name, on in (("q/k/v biases (Qwen2)", c.attention_bias), ("q/k norms (Qwen3)", c.qk_norm),
                                   ("a sliding window (Mistral)", c.sliding_window),
                                   ("o_proj / MLP biases", c.o_bias or c.mlp_bias),
                                   ("BitNet use_rms_norm linear input norms", c.linear_norm)) if on]
    if extra:
        raise ValueError(f"teacher {os.fspath(teacher)}: ternlm distill's student has Llama / BitNet blocks; "
                         f"this model has {', '.join(extra)}, which it does not model")
    return ckpt


def _eval_ids(eval_text, tokenizer, limit: int) -> list:
    if eval_text is None:
        return []
    from .. import texts
    if isinstance(eval_text, texts.Text):
        body = eval_text.text
    elif eval_text == "default":
        body = texts.default_text().text
    elif isinstance(eval_text, os.PathLike) or (isinstance(eval_text, str) and "\n" not in eval_text
                                                 and os.path.isfile(eval_text)):
        body = texts.read_text(eval_text).text
    elif isinstance(eval_text, str):
        body = eval_text
    else:
        raise TypeError(f"eval_text must be None, 'default', a path, a str or a ternlm.texts.Text, "
                        f"got {type(eval_text).__name__}")
    ids = tokenizer.encode(body)[:int(limit)]
    if len(ids) < 2:
        raise ValueError("eval_text: fewer than 2 tokens to score")
    return ids
