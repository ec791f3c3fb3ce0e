"""nano weights (cpp/formats/nano.h, python/ternlm/nano.py): the format's round trip and
errors, the two-stage kernel exact against numpy on every Highway target, the
factorization's quality, and a tiny model running on nano weights."""
import threading

import numpy as np
import pytest

import ternlm
from ternlm import _core, nano

TARGETS = _core.supported_targets()


def random_factors(out, inn, rank, seed=0):
    rng = np.random.default_rng(seed)
    u = np.where(rng.standard_normal((out, rank)) > 0, 1, -1).astype(np.int8)
    v = np.where(rng.standard_normal((inn, rank)) > 0, 1, -1).astype(np.int8)
    s_out = rng.uniform(0.5, 2, out).astype(np.float32) * 0.01
    s_in = rng.uniform(0.5, 2, inn).astype(np.float32)
    return u, v, s_out, s_in


def f16(a):
    return a.astype(np.float16).astype(np.float32)


def reference_matmul(x, u, v, s_out, s_in):
    """The numerics of cpp/formats/nano.h in numpy: exact int sums, the kernel's f32 steps."""
    ys = []
    for row in np.atleast_2d(x):
        xs = row.astype(np.float32) * f16(s_in)
        q1, inv1 = _core.quantize_activations_int8(np.ascontiguousarray(xs))
        z = (q1.astype(np.int64) @ v.astype(np.int64)).astype(np.float32) * np.float32(inv1)
        q2, inv2 = _core.quantize_activations_int8(np.ascontiguousarray(z))
        yi = (q2.astype(np.int64) @ u.astype(np.int64).T).astype(np.float32)
        ys.append(yi * np.float32(inv2) * f16(s_out))
    return np.stack(ys)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", [(130, 200, 70), (64, 64, 64), (300, 129, 1), (17, 1000, 150)])
def test_matmul_is_exact_against_numpy_on_every_target(target, shape):
    out, inn, rank = shape
    u, v, s_out, s_in = random_factors(out, inn, rank)
    q = ternlm.from_nano(u, v, s_out, s_in)
    x = np.random.default_rng(1).standard_normal((6, inn)).astype(np.float32)
    try:
        _core.set_target(target)
        y = ternlm.matmul(x, q)           # a GEMM (prefill rows: 4 at once, then 2 alone)
        y1 = ternlm.matmul(x[2], q)       # the GEMV
    finally:
        _core.reset_target()
    ref = reference_matmul(x, u, v, s_out, s_in)
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(y1, ref[2])


@pytest.mark.parametrize("target", TARGETS)
def test_bit_dots_are_exact_on_every_target(target):
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 256, (37, 40), dtype=np.uint8)        # 320 columns
    q = rng.integers(-127, 128, (7, 320)).astype(np.int8)
    signs = np.unpackbits(bits, axis=1, bitorder="little").astype(np.int64) * 2 - 1
    try:
        _core.set_target(target)
        got = _core.nano_bit_dots(bits, q)
    finally:
        _core.reset_target()
    np.testing.assert_array_equal(got, q.astype(np.int64) @ signs.T)


def test_bit_dots_reject_bad_arguments():
    with pytest.raises(ValueError, match="multiple of 64"):
        _core.nano_bit_dots(np.zeros((2, 4), np.uint8), np.zeros((1, 32), np.int8))
    with pytest.raises(ValueError, match=r"\[-127, 127\]"):
        _core.nano_bit_dots(np.zeros((2, 8), np.uint8), np.full((1, 64), -128, np.int8))
    with pytest.raises(ValueError, match="q.shape\\[1\\] / 8"):
        _core.nano_bit_dots(np.zeros((2, 4), np.uint8), np.zeros((1, 64), np.int8))


def test_dequantize_is_the_product_of_the_factors():
    u, v, s_out, s_in = random_factors(40, 90, 13)
    q = ternlm.from_nano(u, v, s_out, s_in)
    assert q.format == "nano" and q.shape == (40, 90) and q.group_size == 13
    m = (u.astype(np.int64) @ v.astype(np.int64).T).astype(np.float32)
    np.testing.assert_array_equal(q.dequantize(), f16(s_out)[:, None] * m * f16(s_in)[None, :])
    np.testing.assert_array_equal(q.dequantize_row(7), q.dequantize()[7])
    assert q.nbytes == nano.stored_bytes(40, 90, 13)


def test_threads_and_concurrent_callers_agree():
    u, v, s_out, s_in = random_factors(500, 300, 90)
    q = ternlm.from_nano(u, v, s_out, s_in)
    x = np.random.default_rng(3).standard_normal((5, 300)).astype(np.float32)
    ref = ternlm.matmul(x, q, threads=1)
    np.testing.assert_array_equal(ternlm.matmul(x, q, threads=3), ref)
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(ternlm.matmul(x, q, threads=2))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and len(results) == 80
    for y in results:
        np.testing.assert_array_equal(y, ref)


def test_buffers_round_trip_exactly():
    u, v, s_out, s_in = random_factors(70, 130, 33)
    q = ternlm.from_nano(u, v, s_out, s_in)
    b = q.buffers()
    assert sorted(b) == ["layout_version", "s_in", "s_out", "u_bits", "v_bits"]
    q2 = ternlm.QuantizedMatrix.from_buffers("nano", (70, 130), 33, b)
    assert q2.nbytes == q.nbytes
    for k, a in q2.buffers().items():
        np.testing.assert_array_equal(a, b[k])
    x = np.random.default_rng(4).standard_normal(130).astype(np.float32)
    np.testing.assert_array_equal(ternlm.matmul(x, q2), ternlm.matmul(x, q))


def _damaged(edit):
    u, v, s_out, s_in = random_factors(70, 130, 33)
    b = ternlm.from_nano(u, v, s_out, s_in).buffers()
    return edit(b)


def test_from_buffers_rejects_damaged_buffers():
    fb = ternlm.QuantizedMatrix.from_buffers

    def set_padding(b):
        b["v_bits"] = b["v_bits"].copy()
        b["v_bits"][130 // 8] |= 0x80          # row 0, column 135 >= cols
        return b
    with pytest.raises(ValueError, match="'v_bits' row 0 has padding bit 135 set"):
        fb("nano", (70, 130), 33, _damaged(set_padding))

    def set_rank_padding(b):
        b["u_bits"] = b["u_bits"].copy()
        b["u_bits"][5 * 8 + 7] |= 0x80         # row 5, rank 63 >= 33
        return b
    with pytest.raises(ValueError, match="'u_bits' row 5 has padding bit 63 set"):
        fb("nano", (70, 130), 33, _damaged(set_rank_padding))

    def inf_scale(b):
        b["s_out"] = b["s_out"].copy()
        b["s_out"][3] = 0x7C00
        return b
    with pytest.raises(ValueError, match=r"'s_out'\[3\] is not finite"):
        fb("nano", (70, 130), 33, _damaged(inf_scale))
    with pytest.raises(ValueError, match="'v_bits' has 66 elements, expected 792"):
        fb("nano", (70, 130), 33, _damaged(lambda b: dict(b, v_bits=b["v_bits"][:66])))
    # a shape or rank the buffers do not back never allocates: the counts are checked first
    with pytest.raises(ValueError, match="'v_bits' has 792 elements, expected"):
        fb("nano", (70, 130), 60000, _damaged(lambda b: b))
    with pytest.raises(ValueError, match=r"rank \(group_size\) must be in \[1, 65536\], got 0"):
        fb("nano", (70, 130), 0, _damaged(lambda b: b))
    with pytest.raises(ValueError, match="missing buffer 's_in'"):
        fb("nano", (70, 130), 33, _damaged(lambda b: {k: a for k, a in b.items() if k != "s_in"}))


def test_from_nano_rejects_bad_arguments():
    u, v, s_out, s_in = random_factors(8, 16, 3)
    with pytest.raises(ValueError, match="u must hold only -1 and 1; got 0 at flat index 4"):
        bad = u.copy()
        bad.flat[4] = 0
        ternlm.from_nano(bad, v, s_out, s_in)
    with pytest.raises(ValueError, match=r"v has shape \(16, 4\), expected \(in, 3\)"):
        ternlm.from_nano(u, np.ones((16, 4), np.int8), s_out, s_in)
    with pytest.raises(ValueError, match=r"s_in has shape \(15,\), expected \(16,\)"):
        ternlm.from_nano(u, v, s_out, s_in[:15])
    with pytest.raises(ValueError, match=r"s_out\[2\] = 1000000.0* overflows fp16"):
        big = s_out.copy()
        big[2] = 1e6
        ternlm.from_nano(u, v, big, s_in)
    with pytest.raises(TypeError, match="u must have dtype int8"):
        ternlm.from_nano(u.astype(np.float32), v, s_out, s_in)


def test_nano_matrices_cannot_be_stacked_or_plain_quantized():
    q = ternlm.from_nano(*random_factors(8, 16, 3))
    with pytest.raises(ValueError, match="cannot be stacked or cut by rows"):
        ternlm.concat_rows([q, q])
    with pytest.raises(ValueError, match="nano weights come from a factorization"):
        _core.quantize(np.ones((8, 16), np.float32), "nano")


@pytest.mark.parametrize("fmt,msg", [("nano", "needs a budget"), ("nano:2", "0 < bits < 2"),
                                     ("nano:0", "0 < bits < 2"), ("nano:abc", "0 < bits < 2"),
                                     ("nano:nan", "0 < bits < 2")])
def test_budget_errors(fmt, msg):
    with pytest.raises(ValueError, match=msg):
        ternlm.quantize(np.ones((64, 64), np.float32), fmt)


def test_rank_follows_the_budget_and_small_matrices_need_more_bits():
    for bits in (0.55, 0.8, 1.0, 1.9):
        r = nano.rank_for(576, 1536, bits)
        assert nano.stored_bytes(576, 1536, r) <= bits * 576 * 1536 / 8 < nano.stored_bytes(576, 1536, r + 1)
    assert nano.rank_for(576, 1536, 0.55) < nano.rank_for(576, 1536, 0.8) < nano.rank_for(576, 1536, 1.0)
    with pytest.raises(ValueError, match=r"a \[64, 64\] matrix needs at least 1.\d+ bits per weight"):
        nano.rank_for(64, 64, 0.8)


@pytest.mark.parametrize("rank", [2, 4])
def test_a_low_rank_binary_matrix_is_recovered(rank):
    u, v, s_out, s_in = random_factors(128, 256, rank, seed=rank)
    w = s_out[:, None] * (u.astype(np.float32) @ v.T.astype(np.float32)) * s_in[None, :]
    uu, vv, so, si = nano.factorize(w, rank)
    w_hat = so[:, None] * (uu.astype(np.float32) @ vv.T.astype(np.float32)) * si[None, :]
    assert np.linalg.norm(w - w_hat) <= 1e-3 * np.linalg.norm(w)


def test_error_falls_with_the_budget_and_calibration_lowers_the_output_error():
    rng = np.random.default_rng(5)
    # a weight matrix with a decaying spectrum, inputs with uneven channel scales
    w = (rng.standard_normal((192, 40)) @ rng.standard_normal((40, 384)) / 6
         + rng.standard_normal((192, 384)) * 0.3).astype(np.float32)
    x = (rng.standard_normal((256, 384)) * rng.uniform(0.1, 3, 384)).astype(np.float32)
    errs = []
    for bits in (0.55, 0.8, 1.0, 1.5):
        q = ternlm.quantize(w, f"nano:{bits}")
        assert q.bits_per_weight <= bits
        errs.append(np.linalg.norm(w - q.dequantize()) / np.linalg.norm(w))
    assert errs == sorted(errs, reverse=True) and errs[-1] < errs[0] - 0.05
    y = x @ w.T
    plain = ternlm.quantize(w, "nano:0.8").dequantize()
    calibrated = nano.quantize_nano(w, 0.8, x=x).dequantize()
    e_plain = np.linalg.norm(y - x @ plain.T)
    e_cal = np.linalg.norm(y - x @ calibrated.T)
    assert e_cal < 0.95 * e_plain


def test_factorize_rejects_bad_inputs():
    with pytest.raises(ValueError, match="non-finite"):
        nano.factorize(np.full((8, 8), np.nan, np.float32), 2)
    with pytest.raises(ValueError, match=r"calibration inputs x have shape \(5, 7\), expected \(tokens, 8\)"):
        nano.factorize(np.ones((8, 8), np.float32), 2, x=np.ones((5, 7), np.float32))


# ---- a tiny model on nano weights ---------------------------------------------------------------
# Tiny matrices need more bits than big ones (the sign rows are padded to 64 and the fp16
# scales are per row and column): 1.9 bits per weight gives ranks of about 20-90 here.
TINY_BUDGET = "nano:1.9"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    import torch
    from conftest import _randomize, save_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM
    folder = tmp_path_factory.mktemp("nano_llama")
    fast = save_tokenizer(folder, "bytelevel")
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    _randomize(model, 0)
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_nano(tiny_folder):
    return ternlm.load(tiny_folder, weights=TINY_BUDGET, progress=False, context=64)


def test_tiny_model_runs_on_nano_weights_and_matches_the_float_reference(tiny_nano):
    import numpy_reference
    m = tiny_nano
    layer = [n for n in m.formats if n.startswith("layers.")]
    assert {m.formats[n] for n in layer} == {TINY_BUDGET}
    assert m._matrices["layers.0.q"].format == "nano" and m._matrices["embed"].format == "bf16"
    ids = m.tokenizer.encode("The quick brown fox jumps over the lazy dog")
    w = {}
    for name in m.config.tensor_names():
        value = m._matrices[name]
        w[name] = value.dequantize() if isinstance(value, ternlm.QuantizedMatrix) else np.asarray(value)
    ref = numpy_reference.forward(m.config, w, ids)
    got = m.logits(ids)
    # The float reference uses the dequantized nano weights; the engine also quantizes each
    # linear's input and its rank-r intermediate to int8 (cpp/formats/nano.h).
    err = np.abs(got - ref).max()
    assert err <= 0.05 * np.abs(ref).max(), (err, np.abs(ref).max())
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    # decode and batched decode: greedy text alone equals the text of two at once
    a = m.generate("The quick", max_new_tokens=8, temperature=0.0)
    assert len(m.tokenizer.encode(a, add_special_tokens=False)) >= 1
    out = [None, None]

    def run(i):
        out[i] = m.generate("The quick", max_new_tokens=8, temperature=0.0)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert out == [a, a]


def test_tiny_nano_model_saves_and_loads_exactly(tiny_nano, tmp_path):
    m = tiny_nano
    ids = m.tokenizer.encode("Hello there, general")
    m.save(tmp_path / "nano_model")
    m2 = ternlm.load(str(tmp_path / "nano_model"), progress=False, context=64)
    assert m2._matrices["layers.1.down"].format == "nano"
    assert m2._matrices["layers.1.down"].group_size == m._matrices["layers.1.down"].group_size
    np.testing.assert_array_equal(m2.logits(ids), m.logits(ids))


def test_load_rejects_bad_nano_budgets(tiny_folder):
    with pytest.raises(ValueError, match=r"weights='nano:3': .*0 < bits < 2"):
        ternlm.load(tiny_folder, weights="nano:3", progress=False, context=64)
    with pytest.raises(ValueError, match=r"tensor 'layers.0.k': nano:0.8: a \[64, 128\] matrix needs at least 0.938 bits"):
        ternlm.load(tiny_folder, weights="nano:0.8", progress=False, context=64)


@pytest.mark.parametrize("rank,msg", [(0, r"rank \(group_size\) must be in \[1, 65536\], got 0"),
                                      (65000, r"'v_bits' has \d+ elements, expected \d+"),
                                      (70000, r"group_size must be a small int, got 70000")])
def test_a_damaged_nano_folder_is_a_clear_error(tiny_nano, tmp_path, rank, msg):
    import json
    folder = tmp_path / "damaged"
    tiny_nano.save(folder)
    header = json.loads((folder / "ternlm.json").read_text())
    header["matrices"]["layers.0.up"]["group_size"] = rank
    (folder / "ternlm.json").write_text(json.dumps(header))
    with pytest.raises(ValueError, match=r"ternlm.json.*matrix 'layers.0.up': .*" + msg):
        ternlm.load(str(folder), progress=False, context=64)


def test_cli_converts_to_nano_and_rejects_bad_budgets(tiny_folder, tmp_path):
    from test_cli import run_cli
    out = tmp_path / "converted"
    r = run_cli("convert", tiny_folder, out, "--weights", TINY_BUDGET, "-q")
    assert r.returncode == 0, r.stderr
    assert "nano:1.9" in r.stdout
    m = ternlm.load(str(out), progress=False, context=64)
    assert m._matrices["layers.0.gate"].format == "nano"
    r = run_cli("convert", tiny_folder, tmp_path / "bad", "--weights", "nano:2.5", "-q")
    assert r.returncode == 2 and "invalid choice: 'nano:2.5'" in r.stderr and "0 < bits < 2" in r.stderr
