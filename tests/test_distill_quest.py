"""ternlm distill's 4-bit modes on tiny random Llamas (CPU): QuEST (--mode quest4: int4
weights and activations, Hadamard-rotated inputs, Gaussian clipping, trust estimator) and
a BitNet v2-like ternary student with 4-bit activations rotated before o and down. The
loss falls, the exported ternlm folder carries the config fields and int4 rows that
reproduce the student's grid exactly, and ternlm runs it with logits equal to the
student's quantized torch forward.

Logit tolerance as tests/test_distill.py (tests/test_model_bitnet.py): the integer parts
agree, but an activation within an ulp of a rounding boundary may round the other way in
one implementation (different float summation orders before it); per sequence every logit
within 2e-2 of max|logit| and the same argmax at >= 95% of positions, and most sequences
(no flip) equal to 1e-5.
"""
import json
import os

import numpy as np
import pytest
from distill_helpers import FAST, _compare, _sequences, _student_logits, one_thread, teacher  # noqa: F401 (fixtures)

import ternlm
from ternlm.loading import read_checkpoint

torch = pytest.importorskip("torch")



@pytest.fixture(scope="module")
def quest(teacher, tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("quest")
    return ternlm.distill(teacher, d / "out", steps=40, lr=1e-2, lambda_warmup=0, float_dtype="float32",
                          mode="quest4", **FAST)


def test_quest4_loss_falls(quest):
    kl = [h["kl"] for h in quest.history]
    assert len(kl) == 40 and all(np.isfinite(kl))
    first, last = np.mean(kl[:4]), np.mean(kl[-4:])
    print(f"KL first steps {first:.4f}, last steps {last:.4f}; perplexity {quest.perplexity}")
    assert last < 0.8 * first
    assert quest.perplexity["student"] < quest.perplexity["ptq"]


def test_quest4_export_layout(quest):
    header = json.load(open(os.path.join(quest.out, "ternlm.json")))
    cfg = header["config"]
    assert cfg["rotate_inputs"] == "qkv,o,gate_up,down"
    assert cfg["activation_bits"] == 4 and cfg["activation_clip"] == "gaussian"
    m = ternlm.load(quest.out, context=64, threads=2, progress=False)
    assert all(m.formats[f"layers.{i}.{p}"] == "int4" for i in range(2) for p in ("q", "k", "o", "gate", "down"))
    # every stored row is the student's rotated 4-bit grid, exactly: (2k - 15) * step / 2
    student = quest.student
    for name in ("layers.0.q", "layers.1.down"):
        codes, unit = student.module_for(name).quantized()
        want = ((2 * codes - 15) * unit).detach().numpy()
        got = read_checkpoint(quest.out).tensors[name].dequantize()
        np.testing.assert_array_equal(got, want.astype(np.float32))


def test_quest4_logits_in_ternlm_equal_the_student(quest):
    m = ternlm.load(quest.out, context=64, threads=2, progress=False)
    exact = [_compare(m.logits(ids), _student_logits(quest.student, ids)) for ids in _sequences(m.config.vocab_size, 0)]
    assert sum(exact) >= 3
    # the rotation and the 4-bit activations matter: without them the engine computes something else
    import dataclasses
    ckpt = read_checkpoint(quest.out)
    plain = dataclasses.replace(ckpt.config, rotate_inputs="", activation_bits=8, activation_clip="absmax")
    from ternlm.loading import build_engine, convert_checkpoint
    eng = build_engine(plain, convert_checkpoint(ckpt, ckpt.stored, progress=False), 64, 2)
    ids = _sequences(m.config.vocab_size, 0, count=1)[0]
    other = np.asarray(eng.forward(ids, "all"))
    assert np.abs(other - m.logits(ids)).max() > 0.1 * np.abs(m.logits(ids)).max()


def test_ternary_student_with_rotated_int4_activations(teacher, tmp_path):
    """BitNet v2's layout: ternary weights, 4-bit absmax activations, rotation before o and down."""
    res = ternlm.distill(teacher, tmp_path / "out", steps=6, lambda_warmup=0, float_dtype="float32", mode="bitnet",
                         activations="int4", rotate="o,down", **FAST)
    m = ternlm.load(res.out, context=64, threads=2, progress=False)
    assert m.config.rotate_inputs == "o,down" and m.config.activation_bits == 4
    assert m.config.activation_clip == "absmax" and m.formats["layers.0.o"] == "ternary"
    exact = [_compare(m.logits(ids), _student_logits(res.student, ids)) for ids in _sequences(m.config.vocab_size, 1)]
    assert sum(exact) >= 3


def test_bad_quantization_options(teacher, tmp_path):
    for kwargs, msg in [({"mode": "quest8"}, "mode must be one of bitnet, quest4"),
                        ({"weights": "int4"}, "int4 weights need int4 activations"),
                        ({"mode": "quest4", "rotate": "qkv,mlp"}, "'mlp' is not one of qkv, o, gate_up, down"),
                        ({"mode": "quest4", "clip": "rms"}, "clip must be 'absmax' or 'gaussian'"),
                        ({"mode": "quest4", "trust": -1.0}, "trust must be None or a number > 0"),
                        ({"mode": "quest4", "ternlm_out": tmp_path / "t"}, "writes a ternlm folder to out")]:
        with pytest.raises(ValueError, match=msg):
            ternlm.distill(teacher, tmp_path / "out", steps=1, **{**FAST, **kwargs})
    assert os.listdir(tmp_path) == []


def test_config_refuses_unsupported_rotations():
    from ternlm.config import ModelConfig
    base = dict(arch="llama", vocab_size=100, hidden_size=64, intermediate_size=40, num_layers=1, num_heads=4,
                num_kv_heads=4, head_dim=16)
    with pytest.raises(ValueError, match="the input of down has 40 values, not a multiple of 16"):
        ModelConfig(**base, rotate_inputs="down").validate("cfg")
    with pytest.raises(ValueError, match="activation_bits must be 8 or 4"):
        ModelConfig(**base, activation_bits=3).validate("cfg")
    with pytest.raises(ValueError, match="activation_clip"):
        ModelConfig(**base, activation_clip="gaussian").validate("cfg")
    c = ModelConfig(**base, rotate_inputs=["o", "qkv"]).validate("cfg")
    assert c.rotate_inputs == "qkv,o"                      # canonical order
    from ternlm import _core
    d = c.to_dict()
    d["rotate_inputs"] = "down"                            # the engine checks too
    with pytest.raises(ValueError, match="rotate_inputs: the input of down has 40 values"):
        _core.tensor_schema(d)


def test_cli_quest4(teacher, tmp_path, capsys):
    from ternlm.cli import main
    rc = main(["distill", "--teacher", teacher, "--out", str(tmp_path / "o"), "--steps", "2", "--batch-size", "2",
               "--seq-len", "16", "--device", "cpu", "--no-eval", "--mode", "quest4", "--trust", "0"])
    assert rc == 0 and os.path.exists(tmp_path / "o" / "ternlm.json")
    m = ternlm.load(tmp_path / "o", context=64, progress=False)
    assert m.config.activation_bits == 4 and m.formats["layers.0.up"] == "int4"
