"""Tokenizers built from GGUF metadata tokenize like transformers' GGUF tokenizer (AutoTokenizer
with gguf_file=...) on a few hundred varied strings, for byte-level (gpt2) and
SentencePiece (llama) vocabularies, with merges given or derived from scores."""
import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from conftest import _bytelevel_tokenizer, _metaspace_tokenizer, CHAT_TEMPLATE  # noqa: E402
from gguf_files import tokenizer_meta_from_fast, write_gguf  # noqa: E402
from tokenizer_strings import varied_strings  # noqa: E402
from ternlm.io.gguf import load_gguf  # noqa: E402
from ternlm.io.gguf_tokenizer import merges_from_scores  # noqa: E402

CFG = {"hidden": 64, "ffn": 128, "layers": 1, "heads": 4, "kv_heads": 4, "ctx": 64, "eps": 1e-5, "theta": 10000.0}
STRINGS = varied_strings(300)


def _tensors(vocab):
    rng = np.random.default_rng(0)
    h, f = CFG["hidden"], CFG["ffn"]
    t = {"token_embd.weight": (rng.standard_normal((vocab, h)).astype(np.float32), "F32"),
         "output_norm.weight": (np.ones(h, np.float32), "F32"),
         "blk.0.attn_norm.weight": (np.ones(h, np.float32), "F32"),
         "blk.0.ffn_norm.weight": (np.ones(h, np.float32), "F32")}
    for name, shape in {"attn_q": (h, h), "attn_k": (h, h), "attn_v": (h, h), "attn_output": (h, h),
                        "ffn_gate": (f, h), "ffn_up": (f, h), "ffn_down": (h, f)}.items():
        t[f"blk.0.{name}.weight"] = (0.1 * rng.standard_normal(shape).astype(np.float32), "F32")
    return t


def _write(folder, kind, with_merges=True, add_bos=None, pre="gpt-2"):
    tok, special = (_bytelevel_tokenizer if kind == "gpt2" else _metaspace_tokenizer)()
    tj = json.loads(tok.to_str())
    names = set(special.values())
    tokens, types, merges, scores = tokenizer_meta_from_fast(tj, kind, names)
    meta = {"model": kind, "pre": pre if kind == "gpt2" else None, "tokens": tokens, "types": types,
            "merges": merges if with_merges else None, "scores": scores if kind == "llama" else None,
            "bos": tokens.index(special["bos_token"]), "eos": tokens.index(special["eos_token"]),
            # real files name an unk id (SmolLM2: <|endoftext|>); the byte-level one here uses <|pad|>
            "unk": tokens.index(special.get("unk_token", special.get("pad_token"))),
            "add_bos": add_bos, "chat_template": CHAT_TEMPLATE}
    os.makedirs(folder, exist_ok=True)
    return write_gguf(os.path.join(folder, "m.gguf"), CFG, _tensors(len(tokens)), meta)


def _hf(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


CASES = {"gpt2": ("gpt2", True, None), "llama_merges": ("llama", True, None),
         "llama_scores_only": ("llama", False, None), "llama_no_bos": ("llama", True, False)}


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    return {name: _write(str(tmp_path_factory.mktemp(f"gtok_{name}")), *args) for name, args in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_encoding_matches_transformers_gguf_tokenizer(ggufs, case):
    path = ggufs[case]
    ckpt = load_gguf(path)
    ours, ref = ckpt.tokenizer, _hf(path)
    # transformers' GPT2Tokenizer adds its default "<|endoftext|>" as a new token past the
    # model's vocabulary when the file's vocabulary lacks it (ids a model cannot embed);
    # those strings are left out of the comparison -- only those.
    strings = [s for s in STRINGS if max(ref(s).input_ids, default=0) < ckpt.config.vocab_size]
    assert all("<|endoftext|>" in s for s in STRINGS if s not in strings)
    assert len(strings) > 250
    mismatches = [s for s in strings if ours.encode(s) != ref(s).input_ids]
    assert not mismatches, f"{len(mismatches)} strings differ, e.g. {mismatches[:3]!r}"
    for s in STRINGS[:100]:
        ids = ours.encode(s, add_special_tokens=False)
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)


def test_bos_flags_and_special_tokens(ggufs):
    llama = load_gguf(ggufs["llama_merges"]).tokenizer
    assert llama.add_bos_token and llama.encode("hi")[0] == llama.bos_token_id      # llama default: BOS
    assert not load_gguf(ggufs["llama_no_bos"]).tokenizer.add_bos_token             # add_bos_token = false
    gpt2 = load_gguf(ggufs["gpt2"]).tokenizer
    ids = gpt2.encode("a<|end|>b", add_special_tokens=False)
    assert gpt2.eos_token_ids[0] in ids                                             # control token kept whole
    assert gpt2.decode(ids) == "ab" and gpt2.decode(ids, skip_special_tokens=False) == "a<|end|>b"


def test_chat_template_comes_from_metadata(ggufs):
    tok = load_gguf(ggufs["gpt2"]).tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|begin|><|user|>hi\n<|assistant|>"


def test_merges_from_scores_rank_by_score_of_the_merged_token():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = [0, 0, 0, -1.0, -0.5, -2.0]     # "bc" scores higher than "ab": merged first
    assert merges_from_scores(tokens, scores) == [("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]


def test_unknown_tokenizer_model_is_refused(tmp_path):
    tok, special = _bytelevel_tokenizer()
    tokens, types, merges, _ = tokenizer_meta_from_fast(json.loads(tok.to_str()), "gpt2", set(special.values()))
    meta = {"model": "bert", "tokens": tokens, "types": types, "merges": merges, "bos": 0, "eos": 1}
    path = write_gguf(tmp_path / "m.gguf", CFG, _tensors(len(tokens)), meta)
    with pytest.raises(ValueError, match=r"m\.gguf: tokenizer\.ggml\.model is 'bert'"):
        load_gguf(path)


def test_unknown_pre_tokenizer_type_warns(tmp_path):
    path = _write(str(tmp_path), "gpt2", pre="mystery-bpe")
    with pytest.warns(UserWarning, match="tokenizer.ggml.pre 'mystery-bpe'"):
        load_gguf(path)


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "smollm"])
def test_pre_tokenizer_types_split_like_their_regex(tmp_path, pre):
    tok = load_gguf(_write(str(tmp_path), "gpt2", pre=pre)).tokenizer
    pieces = [p for p, _ in tok.backend.pre_tokenizer.pre_tokenize_str("abc 12345 x")]
    want = {"llama-bpe": ["abc", "Ġ", "123", "45", "Ġx"], "qwen2": ["abc", "Ġ", "1", "2", "3", "4", "5", "Ġx"],
            "smollm": ["abc", "Ġ", "1", "2", "3", "4", "5", "Ġx"]}[pre]
    assert pieces == want
