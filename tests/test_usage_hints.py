"""What ternlm tells a first-time user who calls it the wrong way: warnings for settings that
run badly (threads above the core count, a context beyond the trained positions), errors
that name the mistake (a Hub id, chat messages given to generate), the hint when an instruct
model ends a raw prompt at once, the max_tokens alias, chat-template keywords, and
progress bars only where a person watches."""
import io
import sys
import warnings

import pytest

import ternlm
from ternlm import progress
from ternlm.hints import TernlmWarning, available_cores, looks_like_hub_id


@pytest.fixture(scope="module")
def folder(llama_folders):
    return llama_folders["gqa_f32"]          # max_position_embeddings 256


@pytest.fixture(scope="module")
def m(folder):
    return ternlm.load(folder, context=64, threads=1, progress=False)


# ---- load ----------------------------------------------------------------------------------------------
def test_threads_above_the_core_count_warn(folder):
    cores = available_cores()
    with pytest.warns(TernlmWarning, match=rf"threads={cores + 1} is more than the {cores} cores"):
        ternlm.load(folder, context=32, threads=cores + 1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ternlm.load(folder, context=32, threads=cores, progress=False)
        ternlm.load(folder, context=32, threads=None, progress=False)


def test_context_beyond_the_trained_positions_warns_and_the_default_stays_within(folder):
    trained = ternlm.load(folder, context=32, progress=False).config.max_position_embeddings
    assert trained == 256
    with pytest.warns(TernlmWarning, match=rf"context=512 is more than this model's max_position_embeddings=256"):
        m = ternlm.load(folder, context=512, progress=False)
    assert m.context == 512                               # allowed: the caller asked for it
    with pytest.warns(TernlmWarning, match=r"context=4096 is more than"):
        assert ternlm.load(folder, progress=False).context == 4096     # the API's default, 4096
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ternlm.load(folder, context=None, progress=False).context == 256   # None: 4096 capped
        assert ternlm.load(folder, context=256, progress=False).context == 256


def test_a_hub_id_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or folder. It looks like a Hugging Face Hub id"):
        ternlm.load("microsoft/bitnet-b1.58-2B-4T")
    with pytest.raises(FileNotFoundError) as e:
        ternlm.load("missing-folder")
    assert "Hub" not in str(e.value)
    assert looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    for path in ("./org/name", "/abs/name", "~/x/y", "a/b/c", "model.gguf", "org/model.gguf", str(tmp_path)):
        assert not looks_like_hub_id(path), path


# ---- progress bars -------------------------------------------------------------------------------------
class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_only_where_a_person_watches(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.watched()
    assert progress.progress_bar(range(3)).disable            # a pipe or a log: silent
    monkeypatch.setattr(sys, "stderr", Tty())
    assert progress.watched()
    assert not progress.progress_bar(range(3)).disable
    assert progress.progress_bar(range(3), enabled=False).disable


def test_notebook_bars_need_ipywidgets(monkeypatch):
    """In Jupyter the widget bar only when ipywidgets imports; else plain text, never
    tqdm.auto's 'IProgress not found' fallback."""
    import importlib.util

    from tqdm import tqdm as text_bar
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = progress.progress_bar(range(3))
    assert type(bar) is text_bar and not bar.disable


# ---- generate / stream / chat ----------------------------------------------------------------------------
PROMPT = "Why is the sky blue?"


def test_messages_given_to_generate_name_chat(m):
    msgs = [{"role": "user", "content": "hi"}]
    for call in (m.generate, m.stream):
        with pytest.raises(TypeError, match=r"list of messages .* use m.chat\(messages\)"):
            call(msgs)
    assert m.generate([1, 2, 3], max_new_tokens=2) == m.generate((1, 2, 3), max_new_tokens=2)   # ids still work


def test_max_tokens_is_an_alias_of_max_new_tokens(m):
    want = m.generate(PROMPT, max_new_tokens=5)
    assert m.generate(PROMPT, max_tokens=5) == want and m.stats["decode_tokens"] == 5
    assert "".join(m.stream(PROMPT, max_tokens=5)) == want
    assert m.generate(PROMPT, max_new_tokens=5, max_tokens=5) == want
    msgs = [{"role": "user", "content": "hi"}]
    assert m.chat(msgs, max_tokens=4) == m.chat(msgs, max_new_tokens=4) and m.stats["decode_tokens"] <= 4
    with pytest.raises(TypeError, match="same option"):
        m.generate(PROMPT, max_new_tokens=5, max_tokens=6)


def test_an_instruct_model_ending_a_raw_prompt_at_once_points_to_chat(folder):
    m = ternlm.load(folder, context=64, threads=1, progress=False)
    first = int(m.logits(m.tokenizer.encode(PROMPT))[-1].argmax())       # the greedy first token
    m.eos_token_ids = [first]                                            # ... ends the raw prompt at once
    assert m.tokenizer.chat_template
    with pytest.warns(TernlmWarning, match=r"ended this raw prompt at once.*m\.chat\("):
        assert m.generate(PROMPT) == ""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.generate(PROMPT) == ""                                  # once per model
        m2 = ternlm.load(folder, context=64, threads=1, progress=False)
        m2.eos_token_ids = [first]
        m2.chat([{"role": "user", "content": PROMPT}])                  # chat never warns
        m2.generate(m2.tokenizer.encode(PROMPT))                         # nor do token ids
    m3 = ternlm.load(folder, context=64, threads=1, progress=False)
    m3.eos_token_ids = [first]
    with pytest.warns(TernlmWarning, match="ended this raw prompt"):
        assert list(m3.stream(PROMPT)) == []                             # stream warns too
    m4 = ternlm.load(folder, context=64, threads=1, progress=False)
    m4.eos_token_ids, m4.tokenizer.chat_template = [first], None        # a base model: nothing to point to
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m4.generate(PROMPT) == ""


def test_chat_passes_tools_and_template_keywords(folder, tmp_path):
    import shutil
    d = tmp_path / "tools_model"
    shutil.copytree(folder, d)
    (d / "chat_template.jinja").write_text(
        "{% if tools %}TOOLS {{ tools | tojson }}\n{% endif %}"
        "{% for x in messages %}{{ x['role'] }}: {{ x['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}{% if enable_thinking is defined %}/think{% endif %}")
    m = ternlm.load(d, context=128, threads=1, progress=False)
    msgs = [{"role": "user", "content": "weather?"}]
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    prompt = m.tokenizer.apply_chat_template(msgs, tools=[tool], enable_thinking=False)
    assert prompt.startswith("TOOLS [{") and prompt.endswith("assistant:/think")
    ids = m.tokenizer.encode(prompt, add_special_tokens=False)
    assert m.chat(msgs, max_new_tokens=6, tools=[tool], enable_thinking=False) == m.generate(ids, max_new_tokens=6)
    with pytest.warns(TernlmWarning, match="temprature is neither a sampling option nor read by"):
        m.chat(msgs, max_new_tokens=2, temprature=0.7)


# ---- perplexity progress ---------------------------------------------------------------------------------
def test_perplexity_reports_progress_where_watched(m, monkeypatch):
    text = "the quick brown fox jumps over the lazy dog " * 12
    n = len(m.tokenizer.encode(text))
    seen = []
    real = progress.progress_bar

    def spy(*a, **k):
        bar = real(*a, **k)
        seen.append((k, bar, bar.disable))      # close() disables a bar: note it at the start
        return bar
    monkeypatch.setattr(progress, "progress_bar", spy)
    want = m.perplexity(text, window=32, stride=16, progress=False)
    monkeypatch.setattr(sys, "stderr", Tty())
    assert m.perplexity(text, window=32, stride=16) == want
    kwargs, bar, disabled = seen[-1]
    assert kwargs["total"] == n - 1 and not disabled and bar.n == n - 1      # every scored token
    assert seen[0][2]                                                        # progress=False
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    m.perplexity(text, window=32, stride=16)
    assert seen[-1][2]                                                       # not a terminal: silent
