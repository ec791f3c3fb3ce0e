"""The distillation loop: the student (BitLinear layers) learns the teacher's next-token
distribution.

    loss = T^2 KL(softmax(teacher / T) || softmax(student / T))  [+ ce_weight * CE(student, next token)]

averaged over every position of every sequence. Per step (optimizer update):
    λ   rises linearly from 0 to 1 over the first `lambda_warmup` steps (0: quantized from
        the start), blending the quantization in (student.py);
    lr  warms up linearly over `warmup_steps`, then follows a cosine down to lr * min_lr_ratio.
        It is relative: each tensor's AdamW step size is lr x its mean |value| at the start
        (Adam moves every element by about its step size), so a ternary matrix with large
        weights and a norm with small ones change at the same relative pace, whatever the
        teacher's weight scale;
    a batch of batch_size sequences of seq_len tokens, in micro-batches of micro_batch_size
    (gradients accumulated), AdamW over the latent layer weights and the norms (embedding
    and lm_head stay the teacher's unless train_embeddings).
On CUDA the forwards run under bf16 autocast (latent weights and optimizer state stay float32);
compile=True compiles each transformer block and the loss with torch.compile.

Checkpoints (`checkpoint_path`, one file, written atomically every `checkpoint_every` steps,
at the end, and when interrupted) hold the trainable weights, the optimizer state, the step
and the loss history; `resume=True` continues from one with the same model and settings.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

CHECKPOINT_FORMAT = "ternlm-distill-checkpoint-1"


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 256
    micro_batch_size: int | None = None      # None: the whole batch at once
    lr: float = 3e-3                         # relative (see the module docstring)
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None          # None: 2% of steps
    lambda_warmup: int | None = None         # None: 10% of steps; 0: quantized from step 0
    ce_weight: float = 0.0
    temperature: float = 1.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    train_embeddings: bool = False
    compile: bool = False
    seed: int = 0
    checkpoint_every: int = 0                # steps; 0: only at the end / on interrupt
    log_every: int = 0                       # steps between history entries; 0: ~100 entries

    def resolved(self) -> "TrainConfig":
        c = TrainConfig(**asdict(self))
        if c.warmup_steps is None:
            c.warmup_steps = max(1, c.steps // 50)
        if c.lambda_warmup is None:
            c.lambda_warmup = c.steps // 10
        if not c.micro_batch_size:
            c.micro_batch_size = c.batch_size
        if not c.log_every:
            c.log_every = max(1, c.steps // 100)
        return c

    def check(self) -> None:
        def bad(msg):
            raise ValueError(msg)
        for name in ("steps", "batch_size", "seq_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(f"{name} must be an int >= 1, got {v!r}")
        if self.seq_len < 2:
            bad(f"seq_len must be >= 2, got {self.seq_len}")
        if self.micro_batch_size is not None and not (1 <= self.micro_batch_size <= self.batch_size
                                                      and self.batch_size % self.micro_batch_size == 0):
            bad(f"micro_batch_size must divide batch_size {self.batch_size}, got {self.micro_batch_size}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad(f"lr must be a finite number > 0, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            bad(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        for name in ("warmup_steps", "lambda_warmup"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                bad(f"{name} must be None or an int >= 0, got {v!r}")
        if not self.ce_weight >= 0:
            bad(f"ce_weight must be >= 0, got {self.ce_weight!r}")
        if not self.temperature > 0:
            bad(f"temperature must be > 0, got {self.temperature!r}")


def lr_at(c: TrainConfig, step: int) -> float:
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    span = max(1, c.steps - c.warmup_steps)
    progress = min(1.0, (step - c.warmup_steps) / span)
    return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def lambda_at(c: TrainConfig, step: int) -> float:
    return 1.0 if c.lambda_warmup == 0 else min(1.0, step / c.lambda_warmup)


def kd_loss(student_logits, teacher_logits, temperature: float):
    """Mean over positions of T^2 KL(p_teacher || p_student), in float32."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * (temperature * temperature)


def ce_loss(student_logits, ids):
    return F.cross_entropy(student_logits[:, :-1].float().reshape(-1, student_logits.shape[-1]),
                           ids[:, 1:].reshape(-1))


def autocast_for(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def trainable_parameters(student, train_embeddings: bool):
    params = {}
    for name, p in student.named_parameters():
        frozen = name.startswith("embed.") or name.startswith("lm_head.")
        p.requires_grad_(train_embeddings or not frozen)
        if p.requires_grad:
            params[name] = p
    return params


def compiled_forward(model):
    """model's training forward (no KV cache) with each block compiled by torch.compile. The
    blocks share one graph (same code, parameters as inputs), so compiling takes one block's
    time; the model itself stays eager for sampling, whose shapes change every token."""
    blocks = [torch.compile(b) for b in model.layers]

    def forward(ids):
        x = model.embed(ids).float()
        cos, sin = model._rope(0, ids.shape[1], ids.device)
        for b in blocks:
            x = b(x, cos, sin)
        return model.head(model.norm(x))
    return forward


def _fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def train(student, teacher, make_batches, config: TrainConfig, device, checkpoint_path=None, resume=False,
          progress=None, log=None, max_seconds=None) -> dict:
    """Run the loop (see the module docstring). make_batches(start_step) returns an iterator
    of [batch_size, seq_len] id batches (torch or numpy). Returns {"history": [...],
    "steps_done", "tokens", "seconds", "stopped"}; history entries are dicts with step,
    tokens, kl, ce, lambda, lr, seconds."""
    c = config.resolved()
    c.check()
    device = torch.device(device)
    params = trainable_parameters(student, c.train_embeddings)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    with torch.no_grad():
        groups = [{"params": [p], "lr_scale": max(float(p.abs().mean()), 1e-6)} for p in params.values()]
    opt = torch.optim.AdamW(groups, lr=c.lr, betas=(0.9, 0.95), weight_decay=c.weight_decay,
                            **({"fused": True} if device.type == "cuda" else {}))
    start, history, tokens_done = 0, [], 0
    if resume and checkpoint_path and os.path.exists(checkpoint_path):
        start, history, tokens_done = load_checkpoint(checkpoint_path, student, opt, c, params)
    if start >= c.steps:
        return {"history": history, "steps_done": start, "tokens": tokens_done, "seconds": 0.0, "stopped": "done"}

    s_fwd, t_fwd, loss_fn = student, teacher, kd_loss
    if c.compile:
        s_fwd, t_fwd = compiled_forward(student), compiled_forward(teacher)
        loss_fn = torch.compile(kd_loss)

    n_micro = c.batch_size // c.micro_batch_size
    batches = make_batches(start)
    tty = sys.stderr.isatty() if progress is None else bool(progress)
    bar = None
    if tty:
        from tqdm.auto import tqdm
        bar = tqdm(total=c.steps, initial=start, desc="distilling", unit="step", dynamic_ncols=True)
    sums = torch.zeros(2, device=device)            # kl, ce since the last history entry
    count, t0, stopped = 0, time.perf_counter(), "done"
    tok_at_t0, last_log_t = tokens_done, t0
    student.train()
    step = start
    try:
        for step in range(start, c.steps):
            lam, lr = lambda_at(c, step), lr_at(c, step)
            student.set_lambda(lam)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            try:
                batch = next(batches)
            except StopIteration:
                from .data import DataExhausted
                raise DataExhausted(f"data ran out at step {step} of {c.steps}") from None
            batch = torch.as_tensor(batch, dtype=torch.long).to(device, non_blocking=True)
            for mb in batch.split(c.micro_batch_size):
                with autocast_for(device):
                    with torch.no_grad():
                        t_logits = t_fwd(mb)
                    s_logits = s_fwd(mb)
                    kl = loss_fn(s_logits, t_logits, c.temperature)
                    ce = ce_loss(s_logits, mb) if c.ce_weight > 0 else kl.new_zeros(())
                    loss = kl + c.ce_weight * ce
                (loss / n_micro).backward()
                sums += torch.stack([kl.detach(), ce.detach()]) / n_micro
                del t_logits, s_logits, loss
            if c.grad_clip:
                torch.nn.utils.clip_grad_norm_(list(params.values()), c.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens_done += batch.numel()
            count += 1
            done = step + 1
            if done % c.log_every == 0 or done == c.steps:
                kl_v, ce_v = (sums / count).tolist()
                now = time.perf_counter()
                entry = {"step": done, "tokens": tokens_done, "kl": kl_v, "ce": ce_v if c.ce_weight > 0 else None,
                         "lambda": lam, "lr": lr, "seconds": now - t0}
                history.append(entry)
                sums.zero_()
                count = 0
                rate = (tokens_done - tok_at_t0) / max(now - t0, 1e-9)
                if bar is not None:
                    bar.set_postfix_str(f"kl {kl_v:.3f} λ {lam:.2f} {rate:,.0f} tok/s")
                elif log is not None and (now - last_log_t > 10 or done == c.steps):
                    eta = (c.steps - done) * (now - t0) / max(done - start, 1)
                    log(f"step {done}/{c.steps}  kl {kl_v:.4f}" + (f"  ce {ce_v:.4f}" if c.ce_weight > 0 else "")
                        + f"  λ {lam:.2f}  lr {lr:.2e}  {rate:,.0f} tok/s  eta {_fmt_time(eta)}")
                    last_log_t = now
            if bar is not None:
                bar.update(1)
            if checkpoint_path and c.checkpoint_every and done % c.checkpoint_every == 0 and done < c.steps:
                save_checkpoint(checkpoint_path, student, opt, c, params, done, history, tokens_done)
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds and done < c.steps:
                stopped = "time"
                step = done
                break
        else:
            step = c.steps
    except KeyboardInterrupt:
        if checkpoint_path and step > start:
            save_checkpoint(checkpoint_path, student, opt, c, params, step, history, tokens_done)
        raise
    finally:
        if bar is not None:
            bar.close()
    if checkpoint_path:
        save_checkpoint(checkpoint_path, student, opt, c, params, step, history, tokens_done)
    student.eval()
    return {"history": history, "steps_done": step, "tokens": tokens_done,
            "seconds": time.perf_counter() - t0, "stopped": stopped}


# ---- checkpoints ----------------------------------------------------------------------------------
def _signature(student, c: TrainConfig) -> dict:
    keep = ("steps", "batch_size", "seq_len", "micro_batch_size", "lr", "min_lr_ratio", "warmup_steps",
            "lambda_warmup", "ce_weight", "temperature", "weight_decay", "train_embeddings")
    spec = getattr(student, "spec", None)
    return {"model": student.config.to_dict(), "train": {k: getattr(c, k) for k in keep},
            "quant": spec.to_dict() if spec is not None else None}


def save_checkpoint(path, student, opt, c, params, step, history, tokens):
    state = {"format": CHECKPOINT_FORMAT, "signature": _signature(student, c), "step": step, "tokens": tokens,
             "history": history, "weights": {k: p.detach().cpu() for k, p in params.items()},
             "optimizer": opt.state_dict()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".partial"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, student, opt, c, params):
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a ternlm distill checkpoint")
    sig = _signature(student, c)
    if state["signature"] != sig:
        diff = [k for k in sig["train"] if state["signature"]["train"].get(k) != sig["train"][k]]
        what = ("the model" if state["signature"]["model"] != sig["model"]
                else ", ".join(diff) or "the quantization mode")
        raise ValueError(f"{path}: this checkpoint was written with different settings ({what}); "
                         f"resume with the same ones, or delete it to start over")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state["weights"][k])
    opt.load_state_dict(state["optimizer"])
    return int(state["step"]), list(state["history"]), int(state["tokens"])


# ---- evaluation -----------------------------------------------------------------------------------
def perplexity(model, ids, device, window: int = 512, stride: int = 256) -> float:
    """exp(mean NLL) over ids with a sliding window (each token scored once, with at least
    window - stride tokens of left context after the first window), as ternlm's
    Model.perplexity. Quantized layers run their exact integer forward."""
    ids = [int(i) for i in ids]
    if len(ids) < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    was_training = model.training
    model.eval()
    if hasattr(model, "set_exact"):
        model.set_exact(True)
    nll, count, scored_to = 0.0, 0, 1
    try:
        with torch.no_grad(), autocast_for(device):
            for begin in range(0, len(ids), stride):
                end = min(begin + window, len(ids))
                if end <= scored_to:
                    continue
                x = torch.tensor([ids[begin:end]], device=device)
                logp = F.log_softmax(model(x)[0].float(), dim=-1)
                first = max(scored_to, begin + 1)
                rows = logp[first - begin - 1:end - begin - 1]
                target = torch.tensor(ids[first:end], device=device)
                nll -= float(rows.gather(1, target[:, None]).sum())
                count += len(target)
                scored_to = end
                if end == len(ids):
                    break
    finally:
        if hasattr(model, "set_exact"):
            model.set_exact(False)
        model.train(was_training)
    return math.exp(nll / count)
