"""Many sequences on one model: KV-cache slots and the engine thread that decodes them
together (continuous batching). Model (model.py) is the only user; docs/ARCHITECTURE.md
("Sequences and batching") has the picture.

    SlotPool    the engine's KV-cache slots (ternlm.load's max_sequences). A generation
                or a scoring call takes a free slot for its duration, waiting in line when
                all are taken (or SequencesBusyError after `timeout`). For a chat turn the
                free slot whose cached tokens share the longest prefix with the new prompt
                is chosen, so the next turn lands on the previous turn's cache and prefills
                only the new tokens (ties, and every other call: the least recently used).
    Request     one generation: its slot, its C++ Sampler (own seed and penalty history),
                the prompt tokens still to prefill, and the tokens sampled so far, which
                the engine thread appends and the caller's iterator takes.
    Scheduler   one engine thread, started with the first request and ended when none is
                left. Each turn it gives every decoding request one row and fills the rest
                of the chunk with prefill tokens (first come, first served), runs them as one
                Transformer.batch (one pass over the weights, GIL released), and hands each
                request its token. A long prompt is prefilled a chunk per turn, so it never
                stalls the others' decode for more than one chunk.

The engine thread stops a request at EOS, max_new_tokens or the context; stop strings are
found by the caller's iterator, which then cancels it. A request whose caller stops
reading (closed, garbage-collected, interrupted) is cancelled the same way, and its slot
freed at the next turn; one that is merely not read yet runs on to its end, and its slot
is freed then (its tokens wait for the reader).
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np

# A waiting caller wakes at least this often (seconds). Ctrl-C is delivered to any one
# thread of the process, often the engine thread; Python runs the handler, and raises
# KeyboardInterrupt, only when the main thread next executes bytecode, which a wait
# without a timeout would postpone until the next token (or for ever).
POLL_S = 0.05


class SequencesBusyError(TimeoutError):
    """Every KV-cache slot stayed in use for the whole timeout."""


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Slot:
    __slots__ = ("index", "tokens", "busy", "used")

    def __init__(self, index):
        self.index = index
        self.tokens: list = []     # the token ids in this slot's KV cache, in order
        self.busy = False
        self.used = 0              # LRU stamp


class SlotPool:
    def __init__(self, count: int, cond: threading.Condition):
        self.slots = [Slot(i) for i in range(count)]
        self._cond = cond
        self._clock = 0

    @property
    def active(self) -> int:
        return sum(s.busy for s in self.slots)

    def acquire(self, prompt=None, timeout=None) -> Slot:
        """A free slot (the longest common prefix with prompt if given, then least recently
        used); waits while none is free. timeout (s): SequencesBusyError when it passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                free = [s for s in self.slots if not s.busy]
                if free:
                    best = max(free, key=lambda s: (common_prefix(s.tokens, prompt) if prompt else 0, -s.used))
                    best.busy = True
                    return best
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise SequencesBusyError(
                        f"all {len(self.slots)} sequences of this model stayed in use for {timeout} s "
                        f"(max_sequences={len(self.slots)}; load with a larger max_sequences= or retry later)")
                self._cond.wait(POLL_S if left is None else min(left, POLL_S))

    def release(self, slot: Slot):
        with self._cond:
            self._clock += 1
            slot.used = self._clock
            slot.busy = False
            self._cond.notify_all()


class Request:
    """One generation on a slot (see the module docstring)."""

    def __init__(self, slot: Slot, sampler, prompt: list, reuse: int, max_new: int, eos, context: int,
                 owns_slot: bool = True, drafter=None):
        self.slot = slot
        self.sampler = sampler
        self.prompt_len = len(prompt)
        self.todo = np.asarray(prompt[reuse:], dtype=np.int32)  # still to prefill
        self.done_rows = 0                 # of todo
        self.max_new = max_new
        self.eos = eos
        self.context = context
        self.owns_slot = owns_slot         # False: a Session's slot, kept after the request
        self.pending = None                # last sampled token, appended at the next turn
        self.generated = 0                 # sampled tokens that count (EOS excluded)
        self.out = collections.deque()     # sampled tokens not yet taken by the reader
        self.finished = False              # no more tokens will come
        self.released = False              # the engine let go of it (slot freed if owned)
        self.reason = None                 # "eos" | "max_new_tokens" | "context"
        self.error = None                  # an exception for the reader
        self.cancelled = False
        self.drafter = drafter             # speculative.LookupDrafter, or None: plain decoding
        self.drafted = 0                   # drafted tokens verified
        self.accepted = 0                  # of those, accepted


class Scheduler:
    def __init__(self, engine, pool: SlotPool, cond: threading.Condition):
        self._engine = engine
        self._pool = pool
        self._cond = cond
        self._chunk = int(getattr(engine, "chunk", 1))  # no engine: a Model only saved (ternlm convert)
        self._requests: list = []          # in arrival order
        self._thread = None

    # ---- the reader's side ---------------------------------------------------------------
    def submit(self, req: Request):
        with self._cond:
            self._requests.append(req)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ternlm-engine", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def next_token(self, req: Request):
        """The next sampled token, or None when the request has finished (req.reason says
        why); raises the request's error. Interruptible (Ctrl-C) while it waits."""
        with self._cond:
            while not req.out and not req.finished:
                self._cond.wait(POLL_S)
            if req.out:
                return req.out.popleft()
            if req.error is not None:
                raise req.error
            return None

    def cancel(self, req: Request):
        """Stop a request; returns once the engine let go of it (its slot is free), except
        when called on the engine thread itself (a generator collected there)."""
        with self._cond:
            if req.released:
                return
            req.cancelled = True
            self._cond.notify_all()
            if threading.current_thread() is self._thread:
                return
            while not req.released:
                self._cond.wait(POLL_S)

    # ---- the engine thread --------------------------------------------------------------------
    def _release(self, req: Request):  # holds the condition
        req.finished = req.released = True
        if req.owns_slot:
            self._pool.release(req.slot)
        self._requests.remove(req)
        self._cond.notify_all()

    def _run(self):
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 -- a bug here must not leave readers waiting
            with self._cond:
                for r in list(self._requests):
                    r.error = e
                    self._release(r)
                self._thread = None
            raise

    def _loop(self):
        while True:
            with self._cond:
                for req in [r for r in self._requests if r.cancelled]:
                    self._release(req)
                if not self._requests:
                    self._thread = None
                    return
                batch = self._plan()
                if not batch:                 # nothing runnable (not expected): wait for a change
                    self._cond.wait(0.1)
                    continue
            try:
                results = self._engine.batch([(r.slot.index, tokens, sampler, decode, draft)
                                              for r, tokens, sampler, decode, draft in batch])
            except BaseException as e:  # noqa: BLE001 -- handed to every reader in the batch
                with self._cond:
                    for r, *_ in batch:
                        r.error = e
                        self._release(r)
                continue
            with self._cond:
                for (r, tokens, sampler, decode, draft), got in zip(batch, results):
                    self._deliver(r, tokens, decode, draft, got)
                self._cond.notify_all()

    def _plan(self):
        """This turn's entries (request, tokens, sampler, decode, drafted): one decode row
        per decoding request, plus the drafts of speculative ones (verified in the same
        pass), then prefill rows for the others in arrival order, up to a chunk in all.
        Drafts take at most what every decode row leaves, and half the chunk while a
        prompt waits, so prefill always moves."""
        decoding = [r for r in self._requests if r.pending is not None]
        waiting = any(r.pending is None and r.done_rows < len(r.todo) for r in self._requests)
        room = self._chunk - len(decoding) - (self._chunk // 2 if waiting else 0)
        batch, rows = [], 0
        for r in decoding:
            draft = []
            if r.drafter is not None and room > 0:
                # never past max_new_tokens or the context: a verify yields up to 1 + len(draft)
                left = min(r.max_new - r.generated, r.context - r.prompt_len - r.generated) - 1
                draft = r.drafter.draft(min(room, left))
            if draft:
                room -= len(draft)
                batch.append((r, np.asarray([r.pending] + draft, dtype=np.int32), r.sampler, True, len(draft)))
            else:
                batch.append((r, int(r.pending), r.sampler, True, 0))
            rows += 1 + len(draft)
        for r in self._requests:
            if r.pending is None and rows < self._chunk and r.done_rows < len(r.todo):
                take = min(self._chunk - rows, len(r.todo) - r.done_rows)
                tokens = r.todo[r.done_rows:r.done_rows + take]
                last = r.done_rows + take == len(r.todo)
                batch.append((r, tokens, r.sampler if last else None, False, 0))
                rows += take
        return batch

    def _deliver(self, r: Request, tokens, decode, draft, got):  # holds the condition
        if r.released:
            return
        if draft:
            r.slot.tokens.append(int(tokens[0]))
            r.pending = None
            if isinstance(got, list):       # the accepted drafts are in the cache too
                r.slot.tokens.extend(got[:-1])
                r.drafted += draft
                r.accepted += len(got) - 1
                r.drafter.verified(draft, len(got) - 1)
        elif decode:
            r.slot.tokens.append(int(tokens))
            r.pending = None
        else:
            r.slot.tokens.extend(int(t) for t in tokens)
            r.done_rows += len(tokens)
        if r.cancelled or got is None:
            return
        if isinstance(got, str):
            r.error = ValueError(f"logits at step {r.generated} are not finite (NaN weights or overflow); {got}")
            self._release(r)
            return
        for tok in (got if isinstance(got, list) else (got,)):
            r.out.append(tok)
            if tok in r.eos:
                r.reason = "eos"
                break
            r.generated += 1
            if r.drafter is not None:
                r.drafter.push(tok)
            if r.generated >= r.max_new:
                r.reason = "max_new_tokens"
                break
            if r.prompt_len + r.generated >= r.context:
                r.reason = "context"
                break
        else:
            r.pending = tok
            return
        self._release(r)
