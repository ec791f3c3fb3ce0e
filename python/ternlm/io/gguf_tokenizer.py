"""A ternlm Tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata.

A GGUF carries no tokenizer.json: it stores the vocabulary (`tokens`, `token_type`,
`scores`), the BPE `merges`, special ids and flags under llama.cpp's names. We rebuild
the Hugging Face `tokenizers` pipeline they describe:

  model "gpt2"   byte-level BPE (GPT-2 / Llama 3 / SmolLM): tokens are already spelled in
                 the byte alphabet; merges from the file; pre-tokenizer by `tokenizer.ggml.pre`
                 (llama.cpp's pre-tokenizer names: the Llama 3 / Qwen 2 / GPT-4o split regexes,
                 SmolLM / StarCoder digit splitting, GPT-2's own regex otherwise; Qwen 2's
                 NFC normalizer).
  model "llama"  SentencePiece BPE (Llama 2, TinyLlama, Mistral): "▁" for spaces, byte
                 fallback tokens <0xNN>, no normalizer, Metaspace pre-tokenizer (prefix
                 space per `add_space_prefix`, default on; as transformers' GGUF tokenizer
                 and tokenizer.json files with legacy=false do, a text that starts with a
                 space gets no second "▁", where llama.cpp and Llama 2's legacy
                 tokenizer.json add one). Merges from the file, or when
                 absent derived from the scores: a merge's rank is the score of the token it
                 makes (llama.cpp merges the pair whose result scores highest).

Token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
Control tokens become special added tokens (never split, skipped when decoding with
skip_special_tokens), user-defined ones plain added tokens -- as transformers' GGUF loader
does. BOS is added per `add_bos_token` (default: on for "llama", off for "gpt2").
"""
from __future__ import annotations

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from ..tokenizer import Tokenizer

CONTROL, USER_DEFINED = 3, 4

# Split regexes of llama.cpp pre-tokenizer types (applied before the byte-level mapping).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_BY_PRE = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
    "gpt-4o": _GPT4O_SPLIT, "llama4": _GPT4O_SPLIT,
}
# Families whose tokenizer.json NFC-normalizes the text before splitting (Qwen2 / Qwen2.5 /
# Qwen3): done here too, so that a GGUF file tokenizes like the Hugging Face tokenizer
# (llama.cpp itself skips it, which only matters for text not already in NFC).
_NFC_PRE = {"qwen2", "deepseek-r1-qwen"}
# Pre-tokenizers that split every digit on its own before GPT-2's regex.
_DIGIT_PRE = {"smollm", "starcoder", "refact", "codeshell"}


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character table (the byte-level alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _meta(reader, key, default=None):
    return reader.fields.get(f"tokenizer.ggml.{key}", default)


_GPT2_PRE = {None, "default", "gpt-2", "gpt2"}


def _byte_level_pre_tokenizer(pre: str | None, path: str):
    if pre not in _GPT2_PRE and pre not in _DIGIT_PRE and pre not in _SPLIT_BY_PRE:
        import warnings
        warnings.warn(f"{path}: tokenizer.ggml.pre {pre!r} is not one ternlm knows; splitting text with "
                      f"GPT-2's regex, which may tokenize some strings differently from llama.cpp", stacklevel=3)
    if pre in _SPLIT_BY_PRE:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLIT_BY_PRE[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)    # GPT-2's regex
    if pre in _DIGIT_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), level])
    return level


def _byte_level_model(tokens, merges, path):
    alphabet = set(bytes_to_unicode().values())
    table = bytes_to_unicode()
    vocab = {}
    for i, tok in enumerate(tokens):
        # a few files spell a (control) token in plain UTF-8; map it into the alphabet
        spelled = tok if set(tok) <= alphabet else "".join(table[b] for b in tok.encode("utf-8"))
        vocab.setdefault(spelled, i)
    # no merges in the file: the ones the vocabulary implies, earlier tokens first
    pairs = [tuple(m.split(" ", 1)) for m in merges] if merges is not None else \
        merges_from_scores(list(vocab), None)
    return models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False), alphabet


def _sentencepiece_model(tokens, scores, merges, unk_id):
    vocab = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    if merges is not None:
        pairs = [tuple(m.split(" ", 1)) for m in merges]
    else:
        pairs = merges_from_scores(tokens, scores)
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    return models.BPE(vocab=vocab, merges=pairs, unk_token=unk, fuse_unk=True, byte_fallback=True)


def merges_from_scores(tokens, scores):
    """SentencePiece BPE merges implied by the vocabulary: every split of a token into two
    tokens is a merge, ranked by the score of the token it makes (highest first), ties by
    longer left then longer right piece, then by the pieces' ids (transformers' order)."""
    ids = {}
    for i, t in enumerate(tokens):
        ids.setdefault(t, i)
    score = {t: float(scores[ids[t]]) if scores is not None else -ids[t] for t in ids}
    merges = []
    for tok in ids:
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            if left in ids and right in ids:
                merges.append((-score[tok], -len(left), -len(right), ids[left], ids[right], left, right))
    merges.sort()
    return [(m[5], m[6]) for m in merges]


def _checked(reader, key, path, ok, what):
    """tokenizer.ggml.<key> (None when absent), or a ValueError naming the key when present
    with the wrong type."""
    v = _meta(reader, key)
    if v is not None and not ok(v):
        raise ValueError(f"{path}: metadata key tokenizer.ggml.{key} must be {what}, got {v!r:.100}")
    return v


def _list_of(*types):
    return lambda v: isinstance(v, list) and all(isinstance(x, types) and not isinstance(x, bool) for x in v)


def _token_id(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def tokenizer_from_gguf(reader, path: str) -> Tokenizer:
    """Build the Tokenizer of an open ternlm.io.gguf_reader.GGUFFile (path for messages)."""
    kind = _checked(reader, "model", path, lambda v: isinstance(v, str), "a string")
    tokens = _checked(reader, "tokens", path, _list_of(str), "a list of strings")
    if kind is None or not tokens:
        raise ValueError(f"{path}: no tokenizer in the GGUF metadata (tokenizer.ggml.model / tokens missing)")
    types = _checked(reader, "token_type", path, _list_of(int), "a list of ints") or [1] * len(tokens)
    merges = _checked(reader, "merges", path, _list_of(str), "a list of strings")
    if merges is not None and not all(" " in m for m in merges):
        raise ValueError(f"{path}: metadata key tokenizer.ggml.merges holds an entry without a space "
                         "(each merge is 'left right')")
    _checked(reader, "scores", path, _list_of(int, float), "a list of numbers")
    ids = [_checked(reader, key, path, _token_id, "a token id (an int >= 0)")
           for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")]
    bos_id, eos_id, unk_id, pad_id = ids
    try:
        return _build(reader, path, kind, tokens, types, merges, bos_id, eos_id, unk_id, pad_id)
    except Exception as e:  # the tokenizers library raises a bare Exception on inconsistent input
        if isinstance(e, ValueError) and str(e).startswith(path):
            raise
        raise ValueError(f"{path}: the tokenizer.ggml.* metadata does not make a tokenizer ({e})") from e


def _build(reader, path, kind, tokens, types, merges, bos_id, eos_id, unk_id, pad_id):

    if kind == "gpt2":
        model, alphabet = _byte_level_model(tokens, merges, path)
        backend = tokenizers.Tokenizer(model)
        backend.pre_tokenizer = _byte_level_pre_tokenizer(_meta(reader, "pre"), path)
        if _meta(reader, "pre") in _NFC_PRE:
            backend.normalizer = normalizers.NFC()
        backend.decoder = decoders.ByteLevel()
        add_bos_default = False
        usable = lambda t: set(t) <= alphabet          # noqa: E731  (others are mislabels)
    elif kind == "llama":
        model = _sentencepiece_model(tokens, _meta(reader, "scores"), merges, unk_id)
        backend = tokenizers.Tokenizer(model)
        prefix = bool(_meta(reader, "add_space_prefix", True))
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="first" if prefix else "never", split=False)
        steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        if prefix:
            steps.append(decoders.Strip(content=" ", left=1))
        backend.decoder = decoders.Sequence(steps)
        add_bos_default = True
        usable = lambda t: True                        # noqa: E731
    else:
        raise ValueError(f"{path}: tokenizer.ggml.model is {kind!r}; ternlm builds 'gpt2' (byte-level BPE) "
                         f"and 'llama' (SentencePiece) tokenizers")

    named = {}
    for key, tid in (("bos_token", bos_id), ("eos_token", eos_id), ("unk_token", unk_id), ("pad_token", pad_id)):
        if tid is not None and 0 <= int(tid) < len(tokens):
            named[key] = tokens[int(tid)]
    special = [t for t, ty in zip(tokens, types) if ty == CONTROL and usable(t)]
    special += [t for t in named.values() if t not in special and usable(t)]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    user = [t for t, ty in zip(tokens, types) if ty == USER_DEFINED]
    if user:
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])

    eos_ids = [int(eos_id)] if eos_id is not None else []
    add_bos = _meta(reader, "add_bos_token")
    add_eos = _meta(reader, "add_eos_token")
    tpl = reader.fields.get("tokenizer.chat_template")
    if tpl is not None and not isinstance(tpl, str):
        raise ValueError(f"{path}: metadata key tokenizer.chat_template must be a string, got {type(tpl).__name__}")
    return Tokenizer(backend,
                     bos_token_id=None if bos_id is None else int(bos_id),
                     eos_token_ids=eos_ids,
                     chat_template=tpl,
                     add_bos_token=bool(add_bos_default if add_bos is None else add_bos),
                     add_eos_token=bool(add_eos) if add_eos is not None else False,
                     special_tokens=named,
                     chat_template_source=f"{path}: metadata key tokenizer.chat_template")
