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
        self.length = options.draft     # the current draft length (verified() adapts it)
        self._index = {n: {} for n in range(options.min_ngram, options.ngram + 1)}
        for t in tokens:
            self.push(int(t))

    def verified(self, drafted: int, accepted: int):
        """Adapts the draft length: +2 after a draft kept whole, else what was kept + 1, so
        text that stops repeating its input soon verifies short drafts (a verify row costs
        a little, a rejected one is wasted)."""
        if accepted == drafted:
            self.length = min(self.options.draft, self.length + 2)
        else:
            self.length = max(1, accepted + 1)

    def push(self, token: int):
        seq = self.tokens
        seq.append(token)
        end = len(seq) - 1          # n-grams ending just before the new token now have a follower
        for n, index in self._index.items():
            if end >= n:
                index[tuple(seq[end - n:end])] = end

    def draft(self, limit: int) -> list:
        """Up to min(limit, the current length) tokens, longest matching suffix first; [] if none."""
        limit = min(limit, self.length)
        if limit <= 0:
            return []
        seq = self.tokens
        for n in range(self.options.ngram, self.options.min_ngram - 1, -1):
            if len(seq) <= n:
                continue
            at = self._index[n].get(tuple(seq[-n:]))
            if at is not None:
                return seq[at:at + limit]
        return []
