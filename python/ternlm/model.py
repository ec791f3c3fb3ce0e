"""The Model API: a loaded model's generation, scoring and saving. ternlm.load
(loading.py, which documents the weight formats and load options) builds it.

    m = ternlm.load(path, weights=None, threads=None, context=4096, head=None, kv_dtype="f32",
                    max_sequences=None)
    m.generate(prompt, max_new_tokens=128, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
               repetition_penalty=1.0, seed=None, stop=None, speculative=None) -> str
    m.stream(prompt, **same) -> iterator of text pieces
    m.chat(messages, **same, stream=False, tools=None, **template_kwargs) -> str
    m.generate([prompt, ...], **same) -> [str, ...]      (decoded together)
    m.logits(token_ids) -> float32 [n, vocab];  m.perplexity(text, window=None, stride=None)
    m.session() -> Session: .generate / .stream / .chat / .stats / .close()
    m.max_sequences, m.active_sequences
    m.tokenizer, m.stats, m.save(folder, force=False)

generate / stream continue raw text; chat renders a conversation with the model's chat
template first. An instruct model expects its template: a bare question given to generate
may end at once (EOS as the first token, ''), and ternlm then warns once, pointing to
chat(). max_tokens= is accepted as an alias of max_new_tokens (OpenAI's and
llama-cpp-python's name).

Generation rules:
- The prompt (after tokenization) must leave room for one new token: len(prompt) < context,
  else ValueError with both numbers. Generation stops when prompt + generated tokens reach
  `context` (the KV cache is full); stats["stop_reason"] is then "context".
- It stops at an EOS id (config.json + generation_config.json + the tokenizer's eos_token),
  or at a `stop` string (the text is cut before it; stop_reason "stop"), or after
  max_new_tokens ("max_new_tokens").
- An empty prompt starts from BOS when the model has one, else ValueError.
- Sampling runs in C++, in the same calls as the forward (Transformer.prefill for the prompt
  and the first token, Transformer.step for each next one; no logits cross into Python):
  temperature 0 is greedy; seed=None draws a fresh seed. A temperature too small for
  float32 logits / temperature (e.g. 1e-40) is still computed exactly: it picks the argmax.
- Logits that are NaN or Inf (NaN weights, or finite weights whose forward overflows
  float32) raise ValueError "logits at step N are not finite ..." (step 0: the first new
  token) instead of sampling garbage; the tokens so far were already yielded by stream().

Concurrency (python/ternlm/sequences.py, docs/ARCHITECTURE.md): every generation runs in
its own sequence, a KV-cache slot of the engine's max_sequences (ternlm.load); calls from
many threads, interleaved streams and m.generate([p1, p2, ...]) (a list of prompts -> a list
of texts) are decoded together, one pass over the weights per step, each returning what it
returns alone. A call beyond the free slots waits for one (timeout=: SequencesBusyError). A conversation's next chat turn
reuses the cached tokens it shares with the previous turn; m.session() holds a sequence of
its own, whose calls all reuse its cache (generation.py); generate / stream start afresh. m.max_sequences, m.active_sequences: slots in all, in use now.

m.stats after generate/stream/chat (the latest generation started; a Session has its own):
prompt_tokens, prefill_tokens (those actually run: the prompt less cached_tokens, the prefix
reused from the slot's cache), decode_tokens (generated, EOS excluded),
prompt_s (prefill + choosing the first token: time to first token), prompt_tok_s,
decode_s (the rest, excluding time the caller spends between streamed pieces),
decode_tok_s ((decode_tokens - 1) / decode_s, each a forward + sample), stop_reason
("eos" | "stop" | "max_new_tokens" | "context"), peak_rss_mb (the process's peak so far),
drafted_tokens / accepted_tokens (speculative decoding: drafts verified, and kept).

speculative="lookup" (or ternlm.Lookup(draft=, ngram=, min_ngram=)): prompt-lookup
speculative decoding (speculative.py): greedy text identical to plain decoding, sampled
text distributed as plain sampling's.
"""
from __future__ import annotations

import math
import secrets
import threading
import time
import warnings
from collections.abc import Mapping

import numpy as np

from . import generation
from .config import ModelConfig
from .sequences import Scheduler, SlotPool
from .speculative import parse as speculative_options
from .tokenizer import Tokenizer


class Model:
    """A loaded model: tokenizer + C++ transformer (+ sampler). Build it with ternlm.load."""

    def __init__(self, engine, tokenizer: Tokenizer, config: ModelConfig, formats: dict,
                 context: int, source: str = "", matrices: dict | None = None):
        self._engine = engine
        self.tokenizer = tokenizer
        self.config = config
        self.formats = dict(formats)         # matrix name -> format, as loaded
        self.context = int(context)
        self.source = source
        self._matrices = matrices            # name -> QuantizedMatrix / norms, for save()
        self.stats: dict = {}
        eos = list(config.eos_token_ids)
        eos += [i for i in tokenizer.eos_token_ids if i not in eos]
        self.eos_token_ids = eos
        self.bos_token_id = config.bos_token_id if config.bos_token_id is not None else tokenizer.bos_token_id
        self._hinted_chat = False            # the "use chat()" warning is given once per model
        cond = threading.Condition()
        self._slots = SlotPool(int(getattr(engine, "sequences", 1)), cond)
        self._scheduler = Scheduler(engine, self._slots, cond)

    @property
    def max_sequences(self) -> int:
        """KV-cache slots: the most generations / scoring calls that run at once."""
        return len(self._slots.slots)

    @property
    def active_sequences(self) -> int:
        """Slots in use now (running generations, scoring calls and open sessions)."""
        return self._slots.active

    def session(self, timeout=None) -> generation.Session:
        """A sequence of one's own (generation.py): s.generate / s.stream / s.chat reuse its
        cached tokens across calls; s.close() (or `with m.session() as s:`) frees it.
        Takes a slot now: waits for one, or SequencesBusyError after timeout seconds."""
        return generation.Session(self, timeout)

    def __repr__(self):
        kinds = sorted(set(self.formats.values()))
        return (f"<ternlm.Model {self.config.arch} layers={self.config.num_layers} "
                f"hidden={self.config.hidden_size} formats={kinds} context={self.context}"
                + (f" kv_dtype={self.kv_dtype}" if self.kv_dtype != "f32" else "") + ">")

    @property
    def kv_dtype(self) -> str:
        """Element type of the KV cache: "f32" or "f16" (ternlm.load's kv_dtype)."""
        return getattr(self._engine, "kv_dtype", "f32") if self._engine is not None else "f32"

    @property
    def memory_bytes(self) -> int:
        return int(getattr(self._engine, "memory_bytes", 0))

    # ---- argument checks ----------------------------------------------------------------
    # The Model methods own the checks of their arguments (types, ranges, prompt ids, room
    # in the context), with the caller's values in the messages. Below them the binding
    # only converts, and C++ keeps the invariants that make a direct _core call fail safely
    # (Transformer::CheckTokens, SamplingParams::Validate, Sampler::SetHistory; the list is
    # in cpp/python/bind_model.cc): for arguments accepted here those never fire.
    @staticmethod
    def _check_sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop):
        def bad(msg):
            raise ValueError(msg)
        def f32(x):     # the value the C++ sampler computes with (so its own check agrees)
            if not isinstance(x, (int, float)):
                return math.nan
            try:
                with np.errstate(over="ignore"):
                    return float(np.float32(x))
            except OverflowError:                  # an int beyond any float
                return math.inf
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            bad(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not (math.isfinite(f32(temperature)) and f32(temperature) >= 0):
            bad(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        if not isinstance(top_k, (int, np.integer)) or top_k < 0:
            bad(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
        if not 0 < f32(top_p) <= 1:
            bad(f"top_p must be in (0, 1], got {top_p!r}")
        if not 0 <= f32(min_p) <= 1:
            bad(f"min_p must be in [0, 1], got {min_p!r}")
        if not (math.isfinite(f32(repetition_penalty)) and f32(repetition_penalty) > 0):
            bad(f"repetition_penalty must be a finite number > 0 (1 = off), got {repetition_penalty!r}")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
            bad(f"seed must be None or an int >= 0, got {seed!r}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if not all(isinstance(s, str) and s for s in stops):
            bad(f"stop must be None, a non-empty string or a list of them, got {stop!r}")
        return stops

    def _prompt_ids(self, prompt, add_special_tokens=True) -> list:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        elif isinstance(prompt, (list, tuple, np.ndarray)):
            if any(isinstance(p, Mapping) for p in prompt if not isinstance(p, (int, np.integer))):
                raise TypeError("prompt is a list of messages ({'role': ..., 'content': ...}); generate() and "
                                "stream() take a str or token ids: use m.chat(messages) for a conversation")
            ids = self._int_ids(prompt, "prompt")
        else:
            raise TypeError(f"prompt must be a str or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            if self.bos_token_id is None:
                raise ValueError("empty prompt, and this model has no BOS token to start from")
            ids = [self.bos_token_id]
        self._check_ids(ids)
        if len(ids) >= self.context:
            raise ValueError(f"prompt is {len(ids)} tokens but context is {self.context}: it must leave room "
                             f"for at least one new token (load with a larger context= or shorten the prompt)")
        return ids

    @staticmethod
    def _int_ids(seq, what) -> list:
        """Token ids as Python ints; a float (1.5, or 2.0), bool or string among them is a
        TypeError rather than being truncated to some other token."""
        if isinstance(seq, np.ndarray) and seq.dtype.kind not in "iu":
            raise TypeError(f"{what}: token ids must be integers, got a numpy array of {seq.dtype}")
        ids = list(seq)
        for i in ids:
            if not isinstance(i, (int, np.integer)) or isinstance(i, (bool, np.bool_)):
                raise TypeError(f"{what}: token ids must be integers, got {i!r:.50} ({type(i).__name__})")
        return [int(i) for i in ids]

    def _check_ids(self, ids):
        v = self.config.vocab_size
        bad = [i for i in ids if not 0 <= i < v]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {v})")

    # ---- generation ---------------------------------------------------------------------
    @staticmethod
    def _new_sampler(seed, params):
        """A C++ Sampler holding the sampling parameters and, once prefill sets it, the
        repetition-penalty history of one generation."""
        from ._native import core
        seed = secrets.randbits(63) if seed is None else int(seed) % 2**63   # the binding's range
        return core.Sampler(seed, *params)

    def stream(self, prompt, max_new_tokens=128, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
               repetition_penalty=1.0, seed=None, stop=None, _add_special_tokens=True, *, max_tokens=None,
               timeout=None, speculative=None, _session=None, _reuse_cache=False, _stats=None):
        """Yield the generated text in pieces as it is decoded (complete UTF-8 only). A stop
        string is never yielded, not even in part: text that could be the start of one is
        held back until it is ruled out. Raw text, as generate(); max_tokens: alias of
        max_new_tokens. The generation starts (takes a slot) at the first next(); while all
        max_sequences slots are in use it waits, or with timeout (seconds) raises
        SequencesBusyError once that has passed.
        _stats: a dict this generation's stats are written into (m.stats is the latest
        generation started, which another thread's may replace; the server reads its own)."""
        _check_timeout(timeout)
        max_new_tokens = _max_new_tokens(max_new_tokens, max_tokens)
        stops = self._check_sampling(max_new_tokens, temperature, top_k, top_p, min_p,
                                     repetition_penalty, seed, stop)
        lookup = speculative_options(speculative)
        ids = self._prompt_ids(prompt, _add_special_tokens)
        # top_k beyond any vocabulary means "off", as does the binding's largest
        params = (float(temperature), min(int(top_k), 2**62), float(top_p), float(min_p),
                  float(repetition_penalty))
        stats = generation.new_stats(len(ids))
        if _stats is not None:
            _stats.clear()
            _stats.update(stats)
            stats = _stats
        pieces = self._generate_pieces(ids, max_new_tokens, params, seed, stops, stats, _session, _reuse_cache,
                                       timeout, lookup)
        # chat() renders its prompt with the template and passes _add_special_tokens=False:
        # only a raw text prompt can be "the wrong way to ask an instruct model"
        if _add_special_tokens and isinstance(prompt, str) and self.tokenizer.chat_template and not self._hinted_chat:
            return self._hint_chat_after(pieces, stats)
        return pieces

    def _hint_chat_after(self, pieces, s):
        """The pieces, then, if the model ended the raw prompt at once, a warning (once per
        model) that this model has a chat template and m.chat() uses it."""
        yield from pieces
        if s.get("stop_reason") == "eos" and s.get("decode_tokens") == 0 and not self._hinted_chat:
            self._hinted_chat = True
            from .hints import TernlmWarning
            warnings.warn("the model ended this raw prompt at once (its first token was end-of-sequence). It has a "
                          "chat template: instruct models answer questions through it, so use "
                          "m.chat([{'role': 'user', 'content': prompt}]) (generate/stream continue raw text)",
                          TernlmWarning, stacklevel=3)

    def _generate_pieces(self, ids, max_new, params, seed, stops, stats, session=None, reuse_cache=False,
                         timeout=None, lookup=None):
        if session is not None:
            session.enter()
        try:
            req, t0 = self._start(ids, max_new, params, seed, stats, session, reuse_cache, timeout, lookup)
            yield from generation.pieces(self, req, stats, stops, t0)
        finally:
            if session is not None:
                session.exit()

    def _start(self, ids, max_new, params, seed, stats, session=None, reuse_cache=False, timeout=None,
               lookup=None):
        """Takes a slot and submits the generation (generation.start); (request, start time)."""
        self.stats = stats
        if session is not None:
            session.stats = stats
        t0 = time.perf_counter()
        return generation.start(self, ids, max_new, self._new_sampler(seed, params), stats, session,
                                reuse_cache, timeout, lookup=lookup), t0

    def generate(self, prompt, max_new_tokens=128, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                 repetition_penalty=1.0, seed=None, stop=None, *, max_tokens=None, timeout=None,
                 speculative=None) -> str:
        """The generated continuation of `prompt` (str or token ids), without the prompt.

        This is the raw language model: the prompt is continued as text, without the chat
        template. To ask an instruct (chat) model something, use chat(): given a bare
        question here it may end at once and return '' (ternlm warns once when that
        happens on a model that has a chat template). max_tokens: alias of max_new_tokens.

        A list of prompts (str or token-id lists) returns the list of their continuations,
        decoded together (a seed, if given, seeds each prompt's sampler alike). timeout: as
        stream()'s, for each prompt's slot."""
        if _is_batch(prompt):
            return self._generate_batch(list(prompt), max_new_tokens, temperature, top_k, top_p, min_p,
                                        repetition_penalty, seed, stop, max_tokens, timeout, speculative)
        return "".join(self.stream(prompt, max_new_tokens, temperature, top_k, top_p, min_p,
                                   repetition_penalty, seed, stop, max_tokens=max_tokens, timeout=timeout,
                                   speculative=speculative))

    def _generate_batch(self, prompts, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty,
                        seed, stop, max_tokens, timeout, speculative=None):
        """Every prompt submitted before any is read: the engine decodes them together,
        each finishing (and freeing its slot) without waiting for its reader, so prompts
        beyond max_sequences wait for a slot here."""
        _check_timeout(timeout)
        max_new = _max_new_tokens(max_new_tokens, max_tokens)
        stops = self._check_sampling(max_new, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop)
        lookup = speculative_options(speculative)
        params = (float(temperature), min(int(top_k), 2**62), float(top_p), float(min_p),
                  float(repetition_penalty))
        all_ids = [self._prompt_ids(p) for p in prompts]
        started = []
        try:
            for ids in all_ids:
                stats = generation.new_stats(len(ids))
                req, t0 = self._start(ids, max_new, params, seed, stats, timeout=timeout, lookup=lookup)
                started.append((req, stats, t0))
            return ["".join(generation.pieces(self, req, stats, stops, t0)) for req, stats, t0 in started]
        finally:
            for req, _, _ in started:
                if req is not None:
                    self._scheduler.cancel(req)

    def chat(self, messages, max_new_tokens=128, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
             repetition_penalty=1.0, seed=None, stop=None, stream=False, *, max_tokens=None, tools=None,
             timeout=None, speculative=None, _session=None, **template_kwargs):
        """Reply to a conversation [{"role", "content"}, ...] rendered with the model's chat
        template. The rendered text is tokenized without adding special tokens (the template
        writes BOS itself), as transformers' apply_chat_template does. stream=True returns
        the piece iterator instead of a string. tools (JSON-schema dicts) and any other
        keyword (e.g. enable_thinking=False) go to the template, as in transformers; one
        the template never reads is a TernlmWarning (a misspelt sampling option lands
        there too). max_tokens: alias of max_new_tokens."""
        if template_kwargs:
            unread = sorted(set(template_kwargs) - self.tokenizer.chat_template_variables())
            if unread:
                from .hints import TernlmWarning
                warnings.warn(f"chat(): {', '.join(unread)} {'is' if len(unread) == 1 else 'are'} neither a "
                              f"sampling option nor read by this model's chat template; ignored",
                              TernlmWarning, stacklevel=2)
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools,
                                                    **template_kwargs)
        pieces = self.stream(prompt, max_new_tokens, temperature, top_k, top_p, min_p,
                             repetition_penalty, seed, stop, _add_special_tokens=False, max_tokens=max_tokens,
                             timeout=timeout, speculative=speculative, _session=_session, _reuse_cache=True)
        return pieces if stream else "".join(pieces)

    # ---- scoring --------------------------------------------------------------------------
    def logits(self, token_ids) -> np.ndarray:
        """float32 [n, vocab]: one fresh forward of token_ids from position 0."""
        ids = self._int_ids(token_ids, "logits")
        if not ids:
            raise ValueError("logits() needs at least one token id")
        self._check_ids(ids)
        if len(ids) > self.context:
            raise ValueError(f"{len(ids)} tokens do not fit in context {self.context}")
        slot = self._slots.acquire()
        try:
            slot.tokens.clear()
            self._engine.reset(slot=slot.index)
            out = self._engine.forward(np.asarray(ids, dtype=np.int32), logits="all", slot=slot.index)
            slot.tokens.extend(ids)
        finally:
            self._slots.release(slot)
        return np.asarray(out, dtype=np.float32).reshape(len(ids), -1)

    def perplexity(self, text, window=None, stride=None, progress=True) -> float:
        """exp(mean negative log-likelihood) of the tokens of `text` (BOS added if the
        tokenizer adds it; the first token is context only).

        Sliding window: forwards of at most `window` tokens (default: context) starting every
        `stride` tokens (default: window, i.e. disjoint chunks). In each window only tokens
        not scored by an earlier window count, each predicted from all window tokens before
        it — the transformers perplexity recipe. stride < window gives more left context per
        scored token, at more compute. progress: a bar over the scored tokens where a person
        watches (a terminal or a notebook), shown once the work takes more than a second."""
        ids = self.tokenizer.encode(text) if isinstance(text, str) else self._int_ids(text, "perplexity")
        if len(ids) < 2:
            raise ValueError(f"perplexity needs at least 2 tokens, the text has {len(ids)}")
        window = int(window or self.context)
        stride = int(stride or window)
        if not 2 <= window <= self.context:
            raise ValueError(f"window must be in [2, context={self.context}], got {window}")
        if not 1 <= stride <= window:
            raise ValueError(f"stride must be in [1, window={window}], got {stride}")
        from .progress import progress_bar
        bar = progress_bar(total=len(ids) - 1, enabled=progress and len(ids) > window, delay=1.0,
                           desc="perplexity", unit="token")
        nll, count, scored_to = 0.0, 0, 1        # ids[:scored_to] need no more scoring
        for begin in range(0, len(ids), stride):
            end = min(begin + window, len(ids))
            if end <= scored_to:
                continue
            lg = self.logits(ids[begin:end]).astype(np.float64)
            first = max(scored_to, begin + 1)    # positions first..end-1 get scored
            rows = lg[first - begin - 1:end - begin - 1]
            m = rows.max(axis=1, keepdims=True)
            logz = (m + np.log(np.exp(rows - m).sum(axis=1, keepdims=True)))[:, 0]
            target = np.asarray(ids[first:end])
            nll += float(np.sum(logz - rows[np.arange(len(target)), target]))
            count += len(target)
            scored_to = end
            bar.update(len(target))
            if end == len(ids):
                break
        bar.close()
        return float(math.exp(nll / count))

    # ---- saving -----------------------------------------------------------------------------
    def save(self, folder, force=False):
        """Write this model (converted weights + tokenizer) as a ternlm folder that
        ternlm.load maps back without conversion. `folder` must be new or empty, or a ternlm
        folder with force=True (then replaced); any other non-empty folder is refused. The
        model is written beside `folder` and renamed into place, so a failed or interrupted
        save leaves what was there (io/own_format.py, save_model)."""
        from .io.own_format import save_model
        save_model(self, folder, force=force)


# The loading pipeline lives in loading.py; ternlm.model.load (and its steps) stay importable here.
from .loading import (  # noqa: E402,F401
    HEAD_CHOICES, WEIGHT_CHOICES, build_engine, convert_checkpoint, load, read_checkpoint, target_formats,
)


def _check_timeout(timeout):
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer,
                                                                                      np.floating))
                                or not timeout >= 0):
        raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")


def _is_batch(prompt) -> bool:
    """A list of prompts (each a str or a sequence of ids), not one prompt of ids. A list
    of strings that are all integers ("1", "2") reads as token ids given as text, which
    generate() refuses (TypeError) rather than continuing each number as a prompt."""
    if not isinstance(prompt, (list, tuple)) or not prompt:
        return False
    if all(isinstance(p, str) for p in prompt) and all(p.strip().lstrip("+-").isdigit() for p in prompt):
        return False
    return all(isinstance(p, (str, list, tuple, np.ndarray)) for p in prompt)


def _max_new_tokens(max_new_tokens, max_tokens):
    """max_tokens is max_new_tokens by OpenAI's and llama-cpp-python's name: either may be
    given; both with different values is a TypeError."""
    if max_tokens is None:
        return max_new_tokens
    if max_new_tokens not in (128, max_tokens):          # 128: the default, i.e. not given
        raise TypeError(f"max_tokens={max_tokens!r} and max_new_tokens={max_new_tokens!r}: they are the same "
                        f"option (max_tokens is the alias); give one")
    return max_tokens
