"""ternlm's Tokenizer against transformers' AutoTokenizer on the same folders: ids, decoding,
chat templates, and UTF-8-correct streaming."""
import random

import pytest
from conftest import CHAT_TEMPLATE, TOKENIZER_VARIANTS

from ternlm.tokenizer import Tokenizer

FRAGMENTS = ["Hello", " world", "!", "  ", "\n", "\t", "The quick brown fox", " caf\u00e9", "na\u00efve",
             "\u65e5\u672c\u8a9e", "\u4e2d\u6587", "\U0001F600", "\U0001F680\U0001F680", "12345", "3.14",
             "def f(x):", "    return x", "<s>", "</s>", "<|begin|>", "<|end|>", "\u00fcber", "stra\u00dfe",
             "\u0645\u0631\u062d\u0628\u0627", "\u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439",
             "'s", "n't", " ,", ".", "...", "\u2581", "\u00a0", "zzzqqq", "A" * 30, "\r\n", "\u200d"]


def varied_strings(n=300, seed=0):
    rng = random.Random(seed)
    out = ["", " ", "a", "  leading spaces", "trailing spaces  ", "\n\nnewlines\n"]
    while len(out) < n:
        out.append("".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 8))))
    return out


@pytest.fixture(scope="module", params=list(TOKENIZER_VARIANTS))
def pair(request, tokenizer_folders):
    from transformers import AutoTokenizer
    folder = tokenizer_folders[request.param]
    return Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)


def test_encode_matches_autotokenizer(pair):
    ours, ref = pair
    strings = varied_strings()
    for s in strings:
        assert ours.encode(s) == ref.encode(s), repr(s)
        assert ours.encode(s, add_special_tokens=False) == ref.encode(s, add_special_tokens=False), repr(s)


def test_decode_matches_autotokenizer(pair):
    ours, ref = pair
    for s in varied_strings(150, seed=1):
        ids = ref.encode(s)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)


def test_special_ids_and_vocab(pair):
    ours, ref = pair
    assert ours.vocab_size == len(ref)
    assert ours.bos_token_id == ref.bos_token_id
    assert ref.eos_token_id in ours.eos_token_ids
    assert ours.add_bos_token == (ref.encode("x")[:1] == [ref.bos_token_id])


def test_chat_template_matches_transformers(pair):
    ours, ref = pair
    convs = [[{"role": "user", "content": "Hi there"}],
             [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "2+2?"},
              {"role": "assistant", "content": "4"}, {"role": "user", "content": "\u65e5\u672c?"}]]
    for msgs in convs:
        for gen in (True, False):
            expected = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(msgs, add_generation_prompt=gen) == expected


def test_chat_template_raise_exception_and_missing_template(pair):
    import jinja2
    ours, _ = pair
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role tool"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])
    bare = Tokenizer(ours.backend, chat_template=None)
    with pytest.raises(ValueError, match="no chat_template"):
        bare.apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_is_sandboxed(pair):
    import jinja2
    ours, _ = pair
    evil = Tokenizer(ours.backend, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        evil.apply_chat_template([{"role": "user", "content": "x"}])
    assert CHAT_TEMPLATE  # the fixture template is the one rendered above


def test_stream_decoder_emits_only_complete_utf8(pair):
    ours, _ = pair
    # characters absent from the training corpus fall back to bytes in both tokenizer kinds
    text = "Emoji \U0001F984 and \u4e16\u754c \u65e5\u672c\u8a9e, caf\u00e9 \u0416\U0001F680! done"
    ids = ours.encode(text, add_special_tokens=False)
    # the test means something only if some character is split over several tokens
    assert any("\ufffd" in ours.decode([i]) for i in ids), "no multi-byte character was split"
    dec = ours.stream_decoder()
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == ours.decode(ids)
    assert sum(1 for p in pieces if p) > 5          # it really streams


def test_from_folder_without_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_folder(tmp_path)


def test_gguf_style_construction_adds_bos_and_fills_template_tokens(tokenizer_folders):
    import tokenizers
    backend = tokenizers.Tokenizer.from_file(f"{tokenizer_folders['metaspace']}/tokenizer.json")
    bos, eos = backend.token_to_id("<s>"), backend.token_to_id("</s>")
    tok = Tokenizer(backend, bos, [eos], CHAT_TEMPLATE, True, {})
    assert tok.encode("Hello")[0] == bos and tok.add_bos_token
    assert tok.encode("Hello", add_special_tokens=False)[0] != bos
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<s><|user|>hi\n<|assistant|>"
    tok = Tokenizer(backend, bos, [eos], None, False, {})
    assert tok.encode("Hello")[0] != bos and not tok.add_bos_token


def test_chat_template_from_tokenizer_config_list_form(tokenizer_folders, tmp_path):
    import json
    import shutil
    d = tmp_path / "t"
    shutil.copytree(tokenizer_folders["bytelevel"], d)
    (d / "chat_template.jinja").unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "{{ messages[0]['content'] }}!"}]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert Tokenizer.from_folder(d).apply_chat_template([{"role": "user", "content": "x"}]) == "x!"


TOOLS_TEMPLATE = ("{% if tools %}TOOLS {{ tools | tojson }}\n{% endif %}"
                  "{% if documents %}DOCS {{ documents | length }}\n{% endif %}"
                  "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if enable_thinking is defined and not enable_thinking %}/no_think{% endif %}")


def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: the city's name
    """
    return "sunny"


def test_tools_documents_and_template_kwargs_pass_through_as_in_transformers(tokenizer_folders, tmp_path):
    import shutil

    from transformers import AutoTokenizer
    d = tmp_path / "tools"
    shutil.copytree(tokenizer_folders["bytelevel"], d)
    (d / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    ours, ref = Tokenizer.from_folder(d), AutoTokenizer.from_pretrained(d)
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    schema = {"type": "function", "function": {"name": "get_time", "description": "now",
                                               "parameters": {"type": "object", "properties": {}}}}
    docs = [{"title": "a", "text": "b"}]
    for kwargs in (dict(tools=[schema]), dict(tools=[schema, get_weather], documents=docs),
                   dict(enable_thinking=False), {}):
        want = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kwargs)
        assert ours.apply_chat_template(msgs, **kwargs) == want, kwargs
    assert "get_weather" in ours.apply_chat_template(msgs, tools=[get_weather])
    assert ours.chat_template_variables() >= {"tools", "documents", "messages", "enable_thinking"}
    with pytest.raises(TypeError, match="tools must be a list"):
        ours.apply_chat_template(msgs, tools=schema)
    with pytest.raises(TypeError, match="each tool must be"):
        ours.apply_chat_template(msgs, tools=["get_time"])
