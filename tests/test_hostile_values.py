"""Hostile values inside well-formed files and bad arguments (issue 18, items 7, 9 and the
API / CLI half of 10): chat templates bounded in time and size, one value validation for
every way a matrix comes in, and the caller's mistakes as ValueError / TypeError -- and from
the CLI as one line and exit status 2. The catalogue is tests/BAD_INPUTS.md."""
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import ternlm
from conftest import copy_folder as _copy, edit_json as _edit_json
from ternlm import chat_template
from ternlm.io.safetensors import SafetensorsFile, save_safetensors
from ternlm.loading import read_checkpoint
from ternlm.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGES = [{"role": "user", "content": "hi"}]
LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def _set_template(folder, template):
    """The chat template in tokenizer_config.json (save_pretrained writes chat_template.jinja,
    which would take precedence)."""
    if os.path.exists(folder / "chat_template.jinja"):
        os.remove(folder / "chat_template.jinja")
    _edit_json(folder / "tokenizer_config.json", lambda c: c.update(chat_template=template))


@pytest.fixture(scope="module")
def tiny(llama_folders):
    return ternlm.load(llama_folders["gqa_f32"], context=32, progress=False)


# ---- 7: chat templates ---------------------------------------------------------------------------------------
def _with_template(tokenizer_folders, tmp_path, template, jinja_file=False):
    d = _copy(tokenizer_folders["bytelevel"], tmp_path / "tok")
    if jinja_file:
        (d / "chat_template.jinja").write_text(template)
    else:
        _set_template(d, template)
    return Tokenizer.from_folder(d)


def test_looping_template_is_stopped_at_its_time_budget(tokenizer_folders, tmp_path, monkeypatch):
    assert chat_template.RENDER_SECONDS <= 10
    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 0.5)
    tok = _with_template(tokenizer_folders, tmp_path, LOOP)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: chat_template: chat template stopped: "
                                         r"rendering took longer than 0\.5 s"):
        tok.apply_chat_template(MESSAGES)
    assert time.perf_counter() - t0 < 2.5
    # the tokenizer stays usable
    ok = _with_template(tokenizer_folders, tmp_path / "ok", "{{ messages[0].content }}")
    assert ok.apply_chat_template(MESSAGES) == "hi"


@pytest.mark.parametrize("template, message", [
    ("{{ 'a' * 10**10 }}", r"\* would make 10000000000 characters"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     r"~ would make 16777216 characters"),
    ("{{ 'x'|center(10**10) }}", "center would make"),
    ("{{ 'x'.ljust(10**10) }}", "a call with the argument 10000000000"),
    ("{{ '{:>9999999999}'.format(1) }}", "str.format with width 9999999999"),
    ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "the output exceeds"),
    ("{{ (['x' * 1000000] * 100000) | join }}", "join would make"),
    ("{{ messages | tojson(indent=10**9) }}", "tojson with indent"),
])
def test_templates_that_would_grow_without_bound_are_stopped(tokenizer_folders, tmp_path, template, message):
    tok = _with_template(tokenizer_folders, tmp_path, template)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: chat_template: chat template stopped: .*" + message):
        tok.apply_chat_template(MESSAGES)
    assert time.perf_counter() - t0 < 2


def test_template_errors_are_value_errors_naming_the_file(tokenizer_folders, tmp_path):
    import jinja2
    tok = _with_template(tokenizer_folders, tmp_path / "a", "{% for %}")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: chat_template: chat template has a syntax error "
                                         r"\(line 1: Expected an expression"):
        tok.apply_chat_template(MESSAGES)
    tok = _with_template(tokenizer_folders, tmp_path / "b", "{{ foo.bar }}", jinja_file=True)
    with pytest.raises(ValueError, match=r"chat_template\.jinja: chat template failed: 'foo' is undefined") as info:
        tok.apply_chat_template(MESSAGES)
    assert isinstance(info.value, jinja2.exceptions.UndefinedError)     # still catchable as before
    tok = _with_template(tokenizer_folders, tmp_path / "c", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}")
    with pytest.raises(ValueError, match="chat template failed: RecursionError"):
        tok.apply_chat_template(MESSAGES)
    tok = _with_template(tokenizer_folders, tmp_path / "d", "{{" + "(" * 5000 + "1" + ")" * 5000 + "}}")
    with pytest.raises(ValueError, match="too deeply nested to compile"):
        tok.apply_chat_template(MESSAGES)


def test_chat_with_a_looping_template_returns_an_error(llama_folders, tmp_path, monkeypatch):
    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 0.5)
    d = _copy(llama_folders["gqa_f32"], tmp_path / "m")
    _set_template(d, LOOP)
    m = ternlm.load(d, context=32, progress=False)
    with pytest.raises(ValueError, match="tokenizer_config.json: chat_template: chat template stopped"):
        m.chat(MESSAGES, max_new_tokens=2)
    assert m.generate("hi", max_new_tokens=2) is not None


def test_gguf_chat_template_errors_name_the_metadata_key(tmp_path):
    pytest.importorskip("gguf")
    from gguf_files import write_gguf
    from test_hostile_files import GGUF_CFG, GGUF_TOK, _gguf_weights
    path = write_gguf(tmp_path / "m.gguf", GGUF_CFG, _gguf_weights(), dict(GGUF_TOK, chat_template="{% if %}"))
    tok = read_checkpoint(path).tokenizer
    with pytest.raises(ValueError, match=r"m\.gguf: metadata key tokenizer\.chat_template: chat template has a syntax"):
        tok.apply_chat_template(MESSAGES)


# ---- 9: one value validation for every way in ------------------------------------------------------------------
def _rewrite_weights(folder, edit):
    """Rewrite model.safetensors of a saved folder with edit(tensors) applied."""
    p = os.path.join(folder, "model.safetensors")
    st = SafetensorsFile(p)
    tensors = {k: np.array(st.raw(k)) for k in st.keys()}
    meta = st.metadata
    del st
    edit(tensors)
    save_safetensors(p, tensors, metadata=meta)


def test_saved_int4_nan_scale_and_bf16_nan_weight_are_refused_like_the_constructors(saved_int4, tmp_path):
    d = _copy(saved_int4, tmp_path / "a")
    _rewrite_weights(d, lambda t: t["layers.0.q.scale"].__setitem__(3, 0x7E00))        # fp16 NaN
    with pytest.raises(ValueError, match=r"ternlm\.json: matrix 'layers.0.q': from_buffers: buffer 'scale'\[3\] "
                                         r"is not finite"):
        read_checkpoint(d)
    d = _copy(saved_int4, tmp_path / "b")
    _rewrite_weights(d, lambda t: t["layers.1.down.min"].__setitem__(0, 0x7C00))        # fp16 +Inf
    with pytest.raises(ValueError, match=r"matrix 'layers.1.down': from_buffers: buffer 'min'\[0\] is not finite"):
        read_checkpoint(d)
    d = _copy(saved_int4, tmp_path / "c")
    _rewrite_weights(d, lambda t: t["embed.weight"].__setitem__(7, 0x7FC0))             # bf16 NaN
    with pytest.raises(ValueError, match=r"matrix 'embed': from_buffers: buffer 'weight' holds Inf or NaN at flat "
                                         r"index 7"):
        read_checkpoint(d)
    # the constructors say the same about the same values
    with pytest.raises(ValueError, match=r"from_int4: scale\[1\] is not finite"):
        ternlm.from_int4(np.zeros((2, 32), np.uint8), np.array([[1], [np.nan]], np.float16),
                         np.zeros((2, 1), np.float16))
    with pytest.raises(ValueError, match="from_bf16: bits hold Inf or NaN at flat index 1"):
        ternlm.from_bf16(np.array([[0, 0x7FC0]], np.uint16))


def test_edited_shape_is_checked_against_the_buffers_before_allocating(saved_int4, tmp_path):
    d = _copy(saved_int4, tmp_path / "a")
    _edit_json(d / "ternlm.json", lambda h: h["matrices"]["embed"].update(shape=[2**20, 2**20]))
    with pytest.raises(ValueError, match=r"matrix 'embed': shape \[1048576, 1048576\] does not match the config"):
        read_checkpoint(d)

    def consistent(h):        # config and shape edited together: only the buffers disagree
        h["config"].update(vocab_size=2**20, hidden_size=2**20)
        h["matrices"]["embed"].update(shape=[2**20, 2**20])
    d = _copy(saved_int4, tmp_path / "b")
    _edit_json(d / "ternlm.json", consistent)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"matrix 'embed': from_buffers: buffer 'weight' has \d+ elements, "
                                         r"expected 1099511627776"):
        read_checkpoint(d)
    assert time.perf_counter() - t0 < 5
    for fmt in ("f32", "bf16", "bf16c", "int4", "ternary"):
        q = ternlm.quantize(np.ones((20, 64), np.float32), fmt)
        with pytest.raises(ValueError, match="from_buffers: buffer '.*' has .* elements, expected"):
            ternlm.QuantizedMatrix.from_buffers(fmt, (2**20, 2**20), q.group_size, q.buffers())


def _patch_tq_scales(path, tensor_name, block_bytes, value=0x7E00):
    """Set every fp16 block scale (the last 2 bytes of each block) of one tensor to `value`."""
    import gguf
    t = next(x for x in gguf.GGUFReader(path).tensors if x.name == tensor_name)
    with open(path, "r+b") as f:
        for b in range(t.n_bytes // block_bytes):
            f.seek(t.data_offset + b * block_bytes + block_bytes - 2)
            f.write(struct.pack("<H", value))


@pytest.mark.parametrize("kind, block_bytes", [("TQ1_0", 54), ("TQ2_0", 66)])
def test_ternary_gguf_blocks_with_nan_scales_are_refused(tmp_path, kind, block_bytes):
    pytest.importorskip("gguf")
    from gguf_files import write_gguf
    from test_hostile_files import GGUF_CFG, GGUF_TOK, _gguf_weights
    cfg = dict(GGUF_CFG, hidden=256, ffn=256, heads=2, kv_heads=2)
    w = {}
    rng = np.random.default_rng(0)
    for name, (arr, _) in _gguf_weights().items():
        shape = (256,) if arr.ndim == 1 else (64 if name == "token_embd.weight" else 256, 256)
        w[name] = (rng.integers(-1, 2, shape).astype(np.float32) if arr.ndim == 2 else np.ones(shape, np.float32),
                   kind if name.startswith("blk.") and arr.ndim == 2 else "F32")
    path = write_gguf(tmp_path / "t.gguf", cfg, w, GGUF_TOK)
    assert read_checkpoint(path).stored["layers.0.up"] == "ternary"        # valid as written
    _patch_tq_scales(path, "blk.0.ffn_up.weight", block_bytes)
    with pytest.raises(ValueError, match=r"t\.gguf: tensor blk\.0\.ffn_up\.weight: 256 block scale\(s\) are "
                                         r"Inf or NaN"):
        read_checkpoint(path)


def test_nan_in_a_float_checkpoint_names_file_and_tensor(llama_folders, tmp_path):
    d = _copy(llama_folders["gqa_f32"], tmp_path / "m")
    p = d / "model.safetensors"
    st = SafetensorsFile(p)
    tensors = {k: np.array(st.raw(k)) for k in st.keys()}
    del st
    tensors["model.layers.0.mlp.up_proj.weight"][1, 2] = np.nan
    save_safetensors(p, tensors, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"m: tensor 'layers.0.up': quantize: w has a non-finite value"):
        ternlm.load(d, weights="int4", context=32, progress=False)


# ---- 10: arguments -----------------------------------------------------------------------------------------------
def test_seeds_beyond_the_samplers_range(tiny):
    # the sampler's seed is 63 bits: larger seeds are reduced modulo 2**63, not a cast error
    kw = dict(max_new_tokens=4, temperature=1.5)
    assert tiny.generate("hi", seed=2**63 + 5, **kw) == tiny.generate("hi", seed=5, **kw)
    assert tiny.generate("hi", seed=2**64, **kw) == tiny.generate("hi", seed=0, **kw)
    for seed in (-1, 1.0, "7"):
        with pytest.raises(ValueError, match="seed must be None or an int >= 0"):
            tiny.generate("hi", seed=seed, **kw)


def test_float_token_ids_are_a_type_error(tiny):
    for ids in ([1.5, 2], [1, 2.0], np.array([1.0, 2.0]), ["1", "2"], [True, 2]):
        with pytest.raises(TypeError, match="token ids must be integers"):
            tiny.generate(ids, max_new_tokens=2)
        with pytest.raises(TypeError, match="token ids must be integers"):
            tiny.logits(ids)
    assert tiny.logits(np.array([1, 2], np.int64)).shape == (2, tiny.config.vocab_size)


def _cli(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "python") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "ternlm", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_reports_bad_files_in_one_line_with_status_2(llama_folders, saved_int4, tmp_path):
    bad = {}
    bad["heads"] = _copy(llama_folders["gqa_f32"], tmp_path / "heads")
    _edit_json(bad["heads"] / "config.json", lambda c: c.update(num_attention_heads=0))
    bad["nested"] = _copy(llama_folders["gqa_f32"], tmp_path / "nested")
    (bad["nested"] / "config.json").write_text("[" * 100000 + "]" * 100000)
    bad["matrices"] = _copy(saved_int4, tmp_path / "matrices")
    _edit_json(bad["matrices"] / "ternlm.json", lambda h: h.update(matrices=list(h["matrices"])))
    bad["template"] = _copy(llama_folders["gqa_f32"], tmp_path / "template")
    _set_template(bad["template"], "{% for %}")
    for name, folder in bad.items():
        r = _cli("generate", "--model", folder, "--prompt", "hi", "--max-new-tokens", "2", "-q")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("ternlm generate: error: "), (name, r.stderr)
        assert str(folder) in lines[0], (name, r.stderr)


@pytest.fixture(scope="module")
def saved_int4(llama_folders, tmp_path_factory):
    d = tmp_path_factory.mktemp("saved") / "s"
    ternlm.load(llama_folders["gqa_f32"], weights="int4", context=32, progress=False).save(d)
    return d
