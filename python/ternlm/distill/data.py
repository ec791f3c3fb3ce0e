"""Training batches for distillation: int64 token ids [batch_size, seq_len], one batch per step.

Two sources:
- text: files, or any iterable of strings or of {"text": ...} records (a `datasets`
  dataset, a generator, a list). Each document is tokenized without special tokens and
  followed by the end-of-sequence id; the stream of ids is cut into seq_len windows, which
  a shuffle buffer mixes before they are batched. A re-iterable source (files, a list, a
  dataset) is read again from the start when it ends; a one-shot iterator that ends stops
  the run with an error naming the step.
- teacher samples (data-free, as LLM-QAT): the teacher writes its own training text. Each
  sequence starts from a prefix (e.g. BOS, or a chat template up to the user's message),
  then a token drawn uniformly from the ordinary vocabulary, then `greedy_tokens` argmax
  tokens (a coherent start), then tokens sampled from the teacher at `temperature`. Sequences
  are generated `gen_batch` at a time with a KV cache (default_gen_batch), one prefix per
  generation batch, in turn. Sampling costs about as much GPU time per token as a training
  step, so `reuse` > 1 trains on each generated pool that many times (a fresh shuffle each
  pass) before sampling the next: more steps per second, fewer distinct tokens.
"""
from __future__ import annotations

import os
import random
from collections.abc import Iterable

import numpy as np


class DataExhausted(RuntimeError):
    """A one-shot data iterator ended before the last training step."""


def is_file_list(data) -> bool:
    """A path, or a list/tuple of paths (as opposed to an iterable of texts or records)."""
    if isinstance(data, (str, os.PathLike)):
        return True
    return isinstance(data, (list, tuple)) and bool(data) and all(isinstance(d, (str, os.PathLike)) for d in data)


def check_text_source(data) -> None:
    """Fail early, before any training, on file paths that are not readable UTF-8 text."""
    if is_file_list(data):
        for path in ([data] if isinstance(data, (str, os.PathLike)) else data):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"data: {os.fspath(path)}: no such text file")
            try:
                with open(path, encoding="utf-8") as f:
                    f.read(1 << 16)
            except UnicodeDecodeError as e:
                raise ValueError(f"data: {os.fspath(path)}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    elif not isinstance(data, Iterable) or isinstance(data, (bytes, dict)):
        raise TypeError(f"data must be a text file path, a list of them, or an iterable of strings or "
                        f"{{'text': str}} records, got {type(data).__name__}")


def _documents(source):
    """One pass over the source's documents (str)."""
    if is_file_list(source):
        for path in ([source] if isinstance(source, (str, os.PathLike)) else source):
            with open(path, encoding="utf-8") as f:
                yield f.read()
        return
    for item in source:
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            yield item["text"]
        else:
            raise TypeError(f"data: expected strings or {{'text': str}} records, got {type(item).__name__}")


def text_batches(data, encode, eos_id, seq_len: int, batch_size: int, seed: int = 0, shuffle_buffer: int = 512):
    """Yield [batch_size, seq_len] int64 numpy batches forever (see the module docstring).
    encode: str -> list of ids (no special tokens)."""
    rng = random.Random(seed)
    one_shot = not is_file_list(data) and iter(data) is data
    buffer, ids, yielded = [], [], 0
    while True:
        got_any = False
        for doc in _documents(data):
            ids.extend(encode(doc))
            if eos_id is not None:
                ids.append(int(eos_id))
            while len(ids) >= seq_len:
                buffer.append(np.asarray(ids[:seq_len], dtype=np.int64))
                del ids[:seq_len]
                got_any = True
                if len(buffer) >= max(shuffle_buffer, batch_size):
                    yield _take(buffer, batch_size, rng)
                    yielded += 1
        if not got_any and yielded == 0 and len(buffer) < batch_size:
            raise ValueError(f"data: the text holds fewer than batch_size x seq_len = {batch_size} x {seq_len} "
                             f"tokens; give more text or a smaller batch_size / seq_len")
        if one_shot:
            while len(buffer) >= batch_size:
                yield _take(buffer, batch_size, rng)
                yielded += 1
            raise DataExhausted(f"data ran out after {yielded} batches")


def _take(buffer, n, rng):
    picks = sorted(rng.sample(range(len(buffer)), n), reverse=True)
    return np.stack([buffer.pop(i) for i in picks])


def default_gen_batch(cfg, seq_len: int, batch_size: int, device) -> int:
    """Sequences sampled at once: sampling is one forward per token, so on a GPU the batch is
    as large as a quarter of the free memory allows (KV cache in bf16, the step's logits and
    probabilities in float32), at most 4096; on the CPU one training batch."""
    import torch
    if device.type != "cuda":
        return batch_size
    per_seq = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * seq_len * 2 + cfg.vocab_size * 4 * 3
    free, _ = torch.cuda.mem_get_info(device)
    n = min(4096, int(free * 0.25) // per_seq)
    return max(batch_size, n // batch_size * batch_size)


class TeacherSamples:
    """Data-free batches: text the teacher writes (see the module docstring).

    teacher: a student.Transformer (quantize=False) on `device`; prefixes: lists of token ids
    (an empty list is allowed); first_ids: token ids the random first token is drawn from."""

    def __init__(self, teacher, seq_len: int, batch_size: int, prefixes, first_ids, device="cpu",
                 gen_batch: int | None = None, temperature: float = 1.0, greedy_tokens: int = 3,
                 seed: int = 0, autocast_dtype=None, reuse: int = 1):
        import torch
        if int(reuse) < 1:
            raise ValueError(f"reuse must be >= 1, got {reuse}")
        self.reuse = int(reuse)
        self.teacher, self.seq_len, self.batch_size = teacher, int(seq_len), int(batch_size)
        self.prefixes = [list(map(int, p)) for p in prefixes] or [[]]
        longest = max(len(p) for p in self.prefixes)
        if longest + 2 > self.seq_len:
            raise ValueError(f"seq_len {seq_len} leaves no room to sample after a prefix of {longest} tokens")
        self.first_ids = torch.as_tensor(np.asarray(first_ids, dtype=np.int64))
        if self.first_ids.numel() == 0:
            raise ValueError("no token ids to start teacher samples from")
        self.device = torch.device(device)
        if gen_batch is None:
            gen_batch = default_gen_batch(teacher.config, self.seq_len, self.batch_size, self.device)
        self.gen_batch = max(int(gen_batch), self.batch_size)
        self.temperature, self.greedy_tokens = float(temperature), int(greedy_tokens)
        self.autocast_dtype = autocast_dtype
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.cpu_rng = np.random.default_rng(seed)

    def sample(self, n: int, prefix) -> "torch.Tensor":
        """n sequences [n, seq_len] (int64, on the device) starting with prefix."""
        import torch
        dev, L, p = self.device, self.seq_len, len(prefix)
        ids = torch.empty(n, L, dtype=torch.long, device=dev)
        if p:
            ids[:, :p] = torch.as_tensor(prefix, device=dev)
        pick = torch.randint(0, self.first_ids.numel(), (n,), generator=self.generator, device=dev)
        ids[:, p] = self.first_ids.to(dev)[pick]
        ctx = (torch.autocast(dev.type, dtype=self.autocast_dtype) if self.autocast_dtype
               else torch.autocast(dev.type, enabled=False))
        with torch.no_grad(), ctx:
            cache_dtype = self.autocast_dtype or torch.float32
            cache = self.teacher.new_cache(n, L, dtype=cache_dtype, device=dev)
            logits = self.teacher(ids[:, :p + 1], cache, 0)[:, -1].float()
            for pos in range(p + 1, L):
                if pos <= p + self.greedy_tokens or self.temperature == 0:
                    tok = logits.argmax(-1)
                else:
                    probs = torch.softmax(logits / self.temperature, dim=-1)
                    tok = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
                ids[:, pos] = tok
                if pos + 1 < L:
                    logits = self.teacher(ids[:, pos:pos + 1], cache, pos)[:, -1].float()
        return ids

    def __iter__(self):
        k = 0
        while True:
            prefix = self.prefixes[k % len(self.prefixes)]
            k += 1
            pool = self.sample(self.gen_batch, prefix)
            for _ in range(self.reuse):
                order = self.cpu_rng.permutation(self.gen_batch)
                for i in range(0, self.gen_batch - self.batch_size + 1, self.batch_size):
                    yield pool[order[i:i + self.batch_size]]
