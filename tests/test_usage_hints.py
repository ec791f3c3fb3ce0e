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
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ternlm.load(folder, progress=False).context == 256      # default: 4096 capped
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
