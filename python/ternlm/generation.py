"""A generation as its caller sees it: start one on a KV-cache slot (sequences.py), then
read its tokens as text, watching stop strings, and keep the stats. Model.stream /
generate / chat and Session run through here; the rules they follow are in model.py's
docstring.

    s = m.session()            a sequence of one's own: its slot is held until s.close()
    s.generate(prompt, ...)    (or the end of a `with m.session() as s:` block); each call
    s.chat(messages, ...)      prefills only what its prompt adds to the tokens already in
    s.stats                    the slot (the longest common prefix is reused)
"""
from __future__ import annotations

import threading
import time

from .memory import peak_rss_mb
from .sequences import Request, common_prefix
from .speculative import LookupDrafter


def new_stats(prompt_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "prefill_tokens": 0, "cached_tokens": 0, "decode_tokens": 0,
            "prompt_tok_s": 0.0, "decode_tok_s": 0.0, "prompt_s": 0.0, "decode_s": 0.0,
            "drafted_tokens": 0, "accepted_tokens": 0,
            "stop_reason": "max_new_tokens", "peak_rss_mb": 0.0}


def start(model, ids, max_new, sampler, stats, session=None, reuse_cache=False, timeout=None, lookup=None):
    """Takes a slot (the session's, or a free one from the model's pool: may wait); with
    reuse_cache (chat turns, sessions) keeps the longest prefix of its cached tokens that ids
    start with (leaving at least the last prompt token to prefill: its logits give the first
    token), else starts from position 0; and submits the request. Returns the Request, or
    None for max_new == 0 (nothing runs). lookup: speculative.Lookup options (drafts from
    ids and the output), or None.

    generate / stream start afresh: their prefill is what a caller times (ternlm bench
    warms up on a prefix of the prompt it then measures)."""
    if max_new == 0:
        return None
    reuse_cache = reuse_cache or session is not None
    slot = session.slot if session is not None else model._slots.acquire(ids if reuse_cache else None, timeout)
    try:
        reuse = min(common_prefix(slot.tokens, ids), len(ids) - 1) if reuse_cache else 0
        model._engine.truncate(reuse, slot=slot.index)
        del slot.tokens[reuse:]
        sampler.set_history(ids, model.config.vocab_size)
    except BaseException:
        if session is None:
            model._slots.release(slot)
        raise
    stats["cached_tokens"] = reuse
    stats["prefill_tokens"] = len(ids) - reuse
    drafter = LookupDrafter(lookup, ids) if lookup is not None else None
    req = Request(slot, sampler, ids, reuse, max_new, set(model.eos_token_ids), model.context,
                  owns_slot=session is None, drafter=drafter)
    model._scheduler.submit(req)
    return req


def pieces(model, req, stats, stops, t0):
    """The text of request req in pieces (complete UTF-8 only; a stop string is never
    yielded, not even in part). Cancels the request when the reader stops early."""
    decoder = model.tokenizer.stream_decoder()
    text, emitted, generated = "", 0, 0     # decoded text so far; how much was yielded
    hold = max((len(s) for s in stops), default=1) - 1
    # Timing: prompt_s = submit to the first token (time to first token); decode_s =
    # everything after, minus the time the caller spends between our yields.
    busy, clock = 0.0, None
    scheduler = model._scheduler
    try:
        while req is not None:
            tok = scheduler.next_token(req)
            if clock is None:
                clock = time.perf_counter()
                stats["prompt_s"] = clock - t0
            if tok is None:
                stats["stop_reason"] = req.reason
                break
            if tok in req.eos:
                stats["stop_reason"] = "eos"
                break
            generated += 1
            text += decoder.push(tok)
            cut = find_stop(text, stops)
            if cut is not None:
                stats["stop_reason"] = "stop"
                if cut > emitted:
                    busy += time.perf_counter() - clock
                    yield text[emitted:cut]
                    clock = time.perf_counter()
                emitted = cut
                break
            safe = len(text) - partial_stop_len(text, stops, hold)
            if safe > emitted:
                busy += time.perf_counter() - clock
                yield text[emitted:safe]
                clock = time.perf_counter()
                emitted = safe
        if stats["stop_reason"] != "stop":
            text += decoder.flush()
            cut = find_stop(text, stops)
            if cut is not None:
                stats["stop_reason"] = "stop"
                text = text[:cut]
            if len(text) > emitted:
                yield text[emitted:]
    finally:
        if req is not None:
            scheduler.cancel(req)
        if clock is not None:
            busy += time.perf_counter() - clock
        else:
            stats["prompt_s"] = time.perf_counter() - t0
        stats["prompt_tok_s"] = stats["prompt_tokens"] / max(stats["prompt_s"], 1e-9)
        stats["decode_tokens"] = generated
        if req is not None:
            stats["drafted_tokens"], stats["accepted_tokens"] = req.drafted, req.accepted
        stats["decode_s"] = busy
        stats["decode_tok_s"] = (generated - 1) / busy if generated > 1 and busy > 0 else 0.0
        stats["peak_rss_mb"] = peak_rss_mb()


def find_stop(text, stops):
    hits = [text.find(s) for s in stops]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None


def partial_stop_len(text, stops, hold):
    """Length of the longest tail of text that is a proper prefix of a stop string."""
    for n in range(min(hold, len(text)), 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stops):
            return n
    return 0


class Session:
    """A sequence held across calls (see the module docstring). Not for two threads at
    once: a call while another of the same session runs is a RuntimeError."""

    def __init__(self, model, timeout=None):
        self._model = model
        self.slot = model._slots.acquire([], timeout)
        self.stats: dict = {}
        self._busy = threading.Lock()      # held while one of its generations runs
        self._closed = False

    def enter(self):
        """Called as a generation of this session starts; exit() when it ends."""
        if self._closed:
            raise RuntimeError("this session is closed")
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this session is already generating (one call at a time per session)")

    def exit(self):
        self._busy.release()

    def stream(self, prompt, *args, **kwargs):
        """Model.stream on this session's sequence."""
        if self._closed:
            raise RuntimeError("this session is closed")
        return self._model.stream(prompt, *args, _session=self, **kwargs)

    def generate(self, prompt, *args, **kwargs) -> str:
        """Model.generate on this session's sequence."""
        return "".join(self.stream(prompt, *args, **kwargs))

    def chat(self, messages, *args, **kwargs):
        """Model.chat on this session's sequence: pass the whole conversation each turn."""
        if self._closed:
            raise RuntimeError("this session is closed")
        return self._model.chat(messages, *args, _session=self, **kwargs)

    @property
    def cached_tokens(self) -> int:
        """Tokens in this session's KV cache."""
        return len(self.slot.tokens)

    def close(self):
        """Free the session's slot (its cache stays there for whoever takes it next)."""
        if not self._closed:
            if not self._busy.acquire(blocking=False):
                raise RuntimeError("close(): this session is still generating (finish or close its stream first)")
            self._closed = True
            self._busy.release()
            self._model._slots.release(self.slot)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass
