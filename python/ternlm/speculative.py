"""Speculative decoding by prompt lookup: draft the tokens that followed the latest earlier
occurrence of the sequence's last n tokens (in the prompt or the output so far), and let the
model verify them in one forward (sequences.py's Scheduler, Transformer.batch's verify
entries).

    m.generate(prompt, speculative="lookup")                   defaults below
    m.generate(prompt, speculative=ternlm.Lookup(draft=8, ngram=3, min_ngram=2))

Why it pays: a decode step reads every weight for one token; a verify entry of 1 + k rows
reads them once for all k + 1 (the prefill path's GEMM), so each accepted draft comes
nearly free. Text that repeats its input (a summary quoting it, a rewrite, a code edit)
accepts long drafts; text that does not finds few n-gram matches, and a step without a
draft is an ordinary decode row.

Exactness: greedy, a draft is kept only where it equals the argmax, so the text is plain
decoding's. Sampling uses the speculative-sampling rule for a one-hot draft (accept token t
with probability p(t), else draw from p without t: Sampler::SampleDraft,
cpp/model/sampler.h), so every token has plain sampling's distribution; a seed gives other
draws than without speculation.

The index (LookupDrafter): for each n in [min_ngram, ngram], a dict from an n-gram to the
position right after its latest occurrence that has a token after it; each new token adds
one n-gram per n, so a draft costs a few dict look-ups however long the sequence.

    tokens:  ... a b c X Y Z ... a b c |        suffix "a b c" (n = 3) was followed by X
    draft:   X Y Z ...  (up to `draft` tokens, fewer when the sequence ends first)
"""
from __future__ import annotations

MAX_DRAFT = 16   # Transformer::kMaxDraft (cpp/model/transformer.h)
RATE_START = 0.7     # acceptance estimate of a new sequence: drafts 2 tokens at first
RATE_WEIGHT = 0.2    # moving-average weight of each drafted token's outcome
WORTH = 0.35         # draft the k-th token while its chance of being kept is at least this
PROBE_EVERY = 16     # steps between one-token drafts while none is worth it ...
PROBE_MAX = 256      # ... doubled after each probe that is rejected, up to this


class Lookup:
    """Prompt-lookup drafting options: up to `draft` tokens per step (1..16), matching the
    last `ngram` tokens, then shorter suffixes down to `min_ngram` (1 <= min_ngram <= ngram)."""

    def __init__(self, draft: int = 8, ngram: int = 3, min_ngram: int = 2):
        for name, v in (("draft", draft), ("ngram", ngram), ("min_ngram", min_ngram)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"Lookup: {name} must be an int, got {v!r}")
        if not 1 <= draft <= MAX_DRAFT:
            raise ValueError(f"Lookup: draft must be in [1, {MAX_DRAFT}], got {draft}")
        if not 1 <= min_ngram <= ngram <= 16:
            raise ValueError(f"Lookup: need 1 <= min_ngram <= ngram <= 16, got min_ngram={min_ngram}, ngram={ngram}")
        self.draft, self.ngram, self.min_ngram = draft, ngram, min_ngram

    def __repr__(self):
        return f"Lookup(draft={self.draft}, ngram={self.ngram}, min_ngram={self.min_ngram})"


def parse(speculative):
    """None | "lookup" | Lookup -> Lookup or None; anything else is a ValueError."""
    if speculative is None or speculative is False:
        return None
    if isinstance(speculative, Lookup):
        return speculative
    if speculative == "lookup":
        return Lookup()
    raise ValueError(f"speculative must be None, 'lookup' or ternlm.Lookup(...), got {speculative!r}")


class LookupDrafter:
    """One sequence's n-gram index (see the module docstring)."""

    def __init__(self, options: Lookup, tokens):
        self.options = options
        self.tokens: list = []
        self.rate = RATE_START          # estimated probability that a drafted token is kept
        self._idle = 0                  # steps since the last draft
        self._probe_every = PROBE_EVERY  # steps between probes (_length)
        self._probing = False           # the last draft was a probe
        self._index = {n: {} for n in range(options.min_ngram, options.ngram + 1)}
        for t in tokens:
            self.push(int(t))

    def verified(self, drafted: int, accepted: int):
        """Updates the acceptance estimate with one verify's outcome: `accepted` drafts kept,
        then one rejected unless all were (a moving average over drafted tokens)."""
        for _ in range(accepted):
            self.rate += RATE_WEIGHT * (1.0 - self.rate)
        if accepted < drafted:
            self.rate -= RATE_WEIGHT * self.rate
        if accepted:
            self._probe_every = PROBE_EVERY
        elif self._probing:
            self._probe_every = min(2 * self._probe_every, PROBE_MAX)

    def _length(self, limit: int) -> int:
        """How many tokens to draft: the k-th draft token is kept with probability about
        rate^k, and verifying it costs a fraction of a step (a verify of 1 + k rows is a
        small GEMM, dearer than the decode row's GEMV), so draft while rate^k >= WORTH; when
        that is no token, still one every PROBE_EVERY steps, so the estimate can recover
        when the text starts repeating. Each rejected probe doubles that interval (up to
        PROBE_MAX) and a kept draft resets it: text that never repeats its input (an open
        question) soon pays almost nothing for the lookup."""
        k, p = 0, self.rate
        while k < limit and p >= WORTH:
            k += 1
            p *= self.rate
        self._probing = False
        if k == 0:
            self._idle += 1
            if self._idle >= self._probe_every:
                k = min(1, limit)
                self._probing = k > 0
        if k > 0:
            self._idle = 0
        return k

    def push(self, token: int):
        seq = self.tokens
        seq.append(token)
        end = len(seq) - 1          # n-grams ending just before the new token now have a follower
        for n, index in self._index.items():
            if end >= n:
                index[tuple(seq[end - n:end])] = end

    def draft(self, limit: int) -> list:
        """Up to min(limit, options.draft) tokens (fewer while drafts do badly: _length),
        from the longest matching suffix; [] if none."""
        limit = min(limit, self.options.draft)
        if limit <= 0:
            return []
        seq = self.tokens
        for n in range(self.options.ngram, self.options.min_ngram - 1, -1):
            if len(seq) <= n:
                continue
            at = self._index[n].get(tuple(seq[-n:]))
            if at is not None:
                k = self._length(limit)
                return seq[at:at + k] if k else []
        return []


def add_cli_args(p):
    """`ternlm generate` / `chat` options (cli.py)."""
    g = p.add_argument_group("speculative decoding")
    g.add_argument("--speculative", choices=("lookup",), default=None,
                   help="prompt-lookup speculative decoding: drafts from n-grams of the prompt and the output, "
                        "verified in one forward; same greedy text, faster when the output repeats the input")
    g.add_argument("--draft", type=int, default=8, metavar="N", help=f"most drafted tokens per step, 1..{MAX_DRAFT} "
                   "(default: 8)")
    g.add_argument("--ngram", type=int, default=3, metavar="N", help="longest n-gram matched (default: 3; down to 2)")


def from_cli(args):
    """The Lookup that add_cli_args' options ask for, or None (Lookup's errors name the option)."""
    if args.speculative is None:
        return None
    return Lookup(draft=args.draft, ngram=args.ngram, min_ngram=min(2, args.ngram))

