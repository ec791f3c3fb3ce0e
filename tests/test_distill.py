"""ternlm.distill on tiny random Llamas (CPU): the loss falls, the exported Hugging Face folder
opens in transformers (its BitNet quantizer) and in ternlm.load with logits equal to the
student's quantized torch forward, checkpoints resume, and bad input is refused before
anything is written.

Logit tolerance as tests/test_model_bitnet.py: every linear rounds x * 127 / max|x| to int8,
and an element within an ulp of a rounding tie may round the other way in one implementation
(different float summation orders before it), moving later logits by up to ~1e-2 of
max|logit|. So per sequence: every logit within 2e-2 of max|logit|, the same argmax at >= 95%
of positions, and most sequences (no flip) equal to 1e-5.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import CORPUS, hf_logits
from distill_helpers import FAST, _compare, _sequences, _student_logits, one_thread, teacher  # noqa: F401 (fixtures)
from gguf_files import gguf_from_hf_folder

import ternlm

torch = pytest.importorskip("torch")

EVAL_TEXT = FAST["eval_text"]


@pytest.fixture(scope="module")
def run(teacher, tmp_path_factory):
    """One data-free distillation, quantized from step 0, exported in float32 + a ternlm folder."""
    d = tmp_path_factory.mktemp("distilled")
    torch.set_num_threads(1)
    res = ternlm.distill(teacher, d / "hf", steps=40, lr=1e-2, lambda_warmup=0, float_dtype="float32",
                         ternlm_out=d / "ternlm", **FAST)
    return res


def test_loss_falls_and_result_reports(run):
    kl = [h["kl"] for h in run.history]
    assert len(kl) == 40 and all(np.isfinite(kl))
    first, last = np.mean(kl[:4]), np.mean(kl[-4:])
    print(f"KL first steps {first:.4f}, last steps {last:.4f}; perplexity {run.perplexity}")
    assert last < 0.7 * first
    assert set(run.perplexity) == {"teacher", "ptq", "student"}
    assert run.perplexity["student"] < run.perplexity["ptq"]
    assert run.steps == 40 and run.tokens == 40 * 4 * 32
    assert not os.path.exists(run.out + ".checkpoint")          # removed after the export


def test_export_layout(run):
    cfg = json.load(open(os.path.join(run.out, "config.json")))
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["quantization_config"]["quant_method"] == "bitnet"
    assert cfg["quantization_config"]["linear_class"] == "bitlinear"
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= set(os.listdir(run.out))
    from safetensors.numpy import load_file
    st = load_file(os.path.join(run.out, "model.safetensors"))
    q = st["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == np.uint8 and q.shape == (64 // 4, 64)
    assert st["model.layers.0.self_attn.q_proj.weight_scale"].shape == (1,)
    assert st["model.embed_tokens.weight"].dtype == np.float32


def test_exported_logits_equal_student_in_ternlm_and_transformers(run):
    m = ternlm.load(run.out, context=64, threads=2, progress=False)
    assert all(m.formats[f"layers.{i}.{p}"] == "ternary" for i in range(2) for p in ("q", "v", "gate", "down"))
    assert m.formats["embed"] == "f32" and m.formats["lm_head"] == "f32"
    own = ternlm.load(run.ternlm_out, context=64, threads=2, progress=False)
    exact_t, exact_hf = [], []
    for ids in _sequences(m.config.vocab_size, 0):
        ref = _student_logits(run.student, ids)
        ours = m.logits(ids)
        exact_t.append(_compare(ours, ref))
        exact_hf.append(_compare(hf_logits(run.out, ids), ref))
        np.testing.assert_array_equal(own.logits(ids), ours)
    assert sum(exact_t) >= 3 and sum(exact_hf) >= 3, "more than one sequence off by more than float rounding"


def test_bf16_export_matches_rounded_student(run, tmp_path):
    import copy

    from ternlm.distill.export import write_hf_folder
    student = copy.deepcopy(run.student)
    rounded = {k: torch.from_numpy(v).bfloat16().float().numpy() for k, v in student.float_weights().items()}
    m0 = ternlm.load(run.out, progress=False)
    write_hf_folder(tmp_path / "bf16", m0.config, student.ternary_weights(), rounded, m0.tokenizer, source=run.out)
    m = ternlm.load(tmp_path / "bf16", context=64, threads=2, progress=False)
    assert m.formats["embed"] == "bf16"
    for name, value in rounded.items():
        student.module_for(name).weight.data = torch.from_numpy(value)
    exact = [_compare(m.logits(ids), _student_logits(student, ids)) for ids in _sequences(m.config.vocab_size, 1)]
    assert sum(exact) >= 3


def test_gguf_teacher_and_numpy_reader(teacher, tmp_path):
    from ternlm.distill.teacher import float_tensors, gguf_float_tensors
    from ternlm.loading import read_checkpoint
    path = gguf_from_hf_folder(teacher, tmp_path / "t.gguf", {"embed": "Q8_0", "lm_head": "F16", "matrix": "Q4_1"})
    ckpt = read_checkpoint(path)
    a, b = float_tensors(ckpt), gguf_float_tensors(path, ckpt.config)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    res = ternlm.distill(path, tmp_path / "out", steps=3, float_dtype="float32", **FAST)
    cfg = json.load(open(tmp_path / "out" / "config.json"))
    assert cfg["model_type"] == "llama" and cfg["num_key_value_heads"] == 2
    m = ternlm.load(res.out, context=64, threads=2, progress=False)
    ids = _sequences(m.config.vocab_size, 2, count=1)[0]
    _compare(m.logits(ids), _student_logits(res.student, ids))
    _compare(hf_logits(res.out, ids), _student_logits(res.student, ids))


def test_text_data_with_cross_entropy(teacher, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS), encoding="utf-8")
    res = ternlm.distill(teacher, tmp_path / "out", steps=4, data=[str(text)], ce_weight=0.5, eval_text=None,
                         **{k: v for k, v in FAST.items() if k != "eval_text"})
    assert res.perplexity == {} and all(np.isfinite(h["ce"]) for h in res.history)
    res = ternlm.distill(teacher, tmp_path / "out2", steps=2, data=({"text": t} for t in CORPUS), eval_text=None,
                         **{k: v for k, v in FAST.items() if k != "eval_text"})
    assert res.steps == 2


def test_checkpoint_resumes_and_is_not_overwritten(teacher, tmp_path):
    kw = dict(steps=6, lambda_warmup=0, **FAST)
    first = ternlm.distill(teacher, tmp_path / "a", keep_checkpoint=True, checkpoint_dir=tmp_path / "ck", **kw)
    with pytest.raises(FileExistsError, match="resume=True"):
        ternlm.distill(teacher, tmp_path / "b", checkpoint_dir=tmp_path / "ck", **kw)
    assert not os.path.exists(tmp_path / "b")
    with pytest.raises(ValueError, match="different settings"):
        ternlm.distill(teacher, tmp_path / "b", checkpoint_dir=tmp_path / "ck", resume=True,
                       **{**kw, "steps": 7})
    again = ternlm.distill(teacher, tmp_path / "b", checkpoint_dir=tmp_path / "ck", resume=True, **kw)
    assert again.history == first.history and again.tokens == first.tokens
    for name in ("model.safetensors", "config.json"):
        assert open(tmp_path / "a" / name, "rb").read() == open(tmp_path / "b" / name, "rb").read()
    assert not os.path.exists(tmp_path / "ck")


# ---- bad input: a clear error, the user's files untouched ---------------------------------------
def _tree(path):
    return {os.path.join(r, f): open(os.path.join(r, f), "rb").read() for r, _, fs in os.walk(path) for f in fs}


def test_teacher_ternlm_cannot_load(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="ternlm cannot load it.*GPT2LMHeadModel"):
        ternlm.distill(bad, tmp_path / "out", steps=1, **FAST)
    with pytest.raises(ValueError, match="ternlm cannot load it.*no such file"):
        ternlm.distill(tmp_path / "missing.gguf", tmp_path / "out", steps=1, **FAST)
    assert _tree(tmp_path) == before and not os.path.exists(tmp_path / "out")


def test_non_empty_or_unwritable_out(teacher, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        ternlm.distill(teacher, out, steps=1, **FAST)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        ternlm.distill(teacher, afile, steps=1, **FAST)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ternlm.distill(teacher, afile / "sub", steps=1, **FAST)
    assert (out / "notes.txt").read_text() == "mine" and afile.read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["file", "out"]
    if os.geteuid() != 0:                     # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="cannot write"):
            ternlm.distill(teacher, locked / "out", steps=1, **FAST)


def test_zero_steps_and_bad_settings(teacher, tmp_path):
    for kwargs, msg in [({"steps": 0}, "steps must be an int >= 1"), ({"steps": 2, "lr": -1.0}, "lr must be"),
                        ({"steps": 2, "micro_batch_size": 3}, "micro_batch_size must divide")]:
        with pytest.raises(ValueError, match=msg):
            ternlm.distill(teacher, tmp_path / "out", **{**FAST, **kwargs})
    assert os.listdir(tmp_path) == []


def test_cli_errors_and_help(teacher, tmp_path):
    from ternlm.cli import main
    assert main(["distill", "--teacher", teacher, "--out", str(tmp_path / "o"), "--steps", "0"]) == 2
    assert main(["distill", "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert os.listdir(tmp_path) == []


def test_cli_runs(teacher, tmp_path, capsys):
    from ternlm.cli import main
    rc = main(["distill", "--teacher", teacher, "--out", str(tmp_path / "o"), "--steps", "2", "--batch-size", "2",
               "--seq-len", "16", "--device", "cpu", "--no-eval"])
    assert rc == 0 and os.path.exists(tmp_path / "o" / "model.safetensors")
    assert "wrote" in capsys.readouterr().err


def test_import_ternlm_does_not_import_torch():
    code = "import sys, ternlm; ternlm.distill; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())


def test_llama_quantization_config_follows_transformers_module_rules(run, tmp_path):
    """modules_to_not_convert keeps a module float (so its packed weight is refused), as
    transformers' should_convert_module; lm_head is never ternary."""
    import shutil
    from ternlm.io.hf import config_from_hf, load_hf_folder
    cfg = json.load(open(os.path.join(run.out, "config.json")))
    c, quant = config_from_hf(cfg)
    assert c.arch == "llama" and quant["linear_class"] == "bitlinear"
    assert load_hf_folder(run.out).stored["lm_head"] == "f32"
    folder = tmp_path / "edited"
    shutil.copytree(run.out, folder)
    cfg["quantization_config"]["modules_to_not_convert"] = ["lm_head", "model.layers.1.mlp"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="layers.1.mlp.gate_proj.*uint8 \\(packed\\)"):
        load_hf_folder(folder)


def test_bitnet_teacher_keeps_its_architecture(bitnet_folders, tmp_path):
    """A BitNet teacher (sub-norms, squared ReLU) gives a BitNet student and a BitNetForCausalLM export."""
    res = ternlm.distill(bitnet_folders["bitlinear"], tmp_path / "out", steps=3, float_dtype="float32", **FAST)
    cfg = json.load(open(tmp_path / "out" / "config.json"))
    assert cfg["architectures"] == ["BitNetForCausalLM"] and cfg["quantization_config"]["linear_class"] == "bitlinear"
    m = ternlm.load(res.out, context=64, threads=2, progress=False)
    assert m.config.arch == "bitnet" and m.formats["layers.1.down"] == "ternary"
    ids = _sequences(m.config.vocab_size, 3, count=1)[0]
    _compare(m.logits(ids), _student_logits(res.student, ids))
    _compare(hf_logits(res.out, ids), _student_logits(res.student, ids))


def test_teacher_samples_reuse_each_pool(teacher):
    """reuse=K yields every sequence of a generated pool K times (fresh order each pass)
    before the next pool is sampled; reuse < 1 is refused."""
    from ternlm.distill.data import TeacherSamples
    from ternlm.distill.student import build
    from ternlm.distill.teacher import float_tensors
    from ternlm.loading import read_checkpoint
    ckpt = read_checkpoint(teacher)
    model = build(ckpt.config, float_tensors(ckpt), quantize=False, device="cpu")
    pools = []
    samples = TeacherSamples(model, 12, 2, [[1]], [5, 6, 7, 8], gen_batch=4, seed=1, reuse=3)
    real_sample = samples.sample
    samples.sample = lambda n, prefix: pools.append(real_sample(n, prefix)) or pools[-1]
    it = iter(samples)
    batches = [next(it) for _ in range(7)]          # 2 batches per pass x 3 passes, then a new pool
    assert len(pools) == 2
    rows = lambda bs: sorted(tuple(r.tolist()) for b in bs for r in b)  # noqa: E731
    pool_rows = sorted(tuple(r.tolist()) for r in pools[0])
    for k in range(3):
        assert rows(batches[2 * k:2 * k + 2]) == pool_rows
    assert tuple(batches[6][0].tolist()) in {tuple(r.tolist()) for r in pools[1]}
    with pytest.raises(ValueError, match="reuse"):
        TeacherSamples(model, 12, 2, [[1]], [5], gen_batch=4, reuse=0)
