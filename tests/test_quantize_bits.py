"""Quantizing straight from bf16 / fp16 bits over a thread pool (cpp/formats/quantize.h):
bit for bit what quantize() makes of the float32 widening, for every format, on awkward
shapes, at any thread count and from many Python threads at once; non-finite weights and
out-of-range values refused with the messages of the float32 path; and models loaded from
bf16 / fp16 checkpoints with small heads, whose matrices and logits equal those of the old
whole-matrix float32 path (ternlm.loading._convert_one)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import ternlm
from concurrency import run_threads
from ternlm.config import BF16Bits
from ternlm.io.safetensors import bf16_bits_to_float32
from ternlm.loading import read_checkpoint

FORMATS = ["int8", "q6", "int4", "ternary", "f32", "bf16", "bf16c"]
# rows not a multiple of the 16-row tile, cols not a multiple of 32 (int4's group divides cols);
# the last shape spreads over several tasks at 2-3 threads
SHAPES = [(1, 37), (15, 100), (17, 257), (33, 300), (1003, 301)]
INT4_SHAPES = [(1, 32), (15, 96), (17, 160), (33, 288), (1003, 320)]


def shapes_for(fmt):
    return INT4_SHAPES if fmt == "int4" else SHAPES


def float_weights(rng, rows, cols):
    """Rows of different scales, exact zeros, values far below the rest, and repeated values
    (ties for the roundings)."""
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w *= np.exp2(rng.integers(-8, 4, (rows, 1))).astype(np.float32)
    w[rng.random((rows, cols)) < 0.05] = 0
    w[rng.random((rows, cols)) < 0.01] *= np.float32(2.0 ** -60)
    w[:, : cols // 7] = np.round(w[:, : cols // 7] * 4) / 4
    return w


def bf16_bits(rng, rows, cols):
    return (float_weights(rng, rows, cols).view(np.uint32) >> 16).astype(np.uint16)


def assert_same(a, b):
    assert (a.format, a.shape, a.group_size) == (b.format, b.shape, b.group_size)
    ba, bb = a.buffers(), b.buffers()
    assert ba.keys() == bb.keys()
    for k in ba:
        np.testing.assert_array_equal(ba[k], bb[k], err_msg=k)


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantize_bf16_equals_quantize_of_the_float32_values(fmt):
    rng = np.random.default_rng(FORMATS.index(fmt))
    for rows, cols in shapes_for(fmt):
        bits = bf16_bits(rng, rows, cols)
        want = ternlm.quantize(bf16_bits_to_float32(bits), fmt, threads=1)
        for threads in (1, 2, 3, None):
            assert_same(ternlm.quantize_bf16(bits, fmt, threads=threads), want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_float16_weights_equal_quantize_of_the_float32_values(fmt):
    rng = np.random.default_rng(10 + FORMATS.index(fmt))
    for rows, cols in shapes_for(fmt):
        w = float_weights(rng, rows, cols).astype(np.float16)      # subnormal halves included
        want = ternlm.quantize(w.astype(np.float32), fmt, threads=1)
        for threads in (1, 3):
            assert_same(ternlm.quantize(w, fmt, threads=threads), want)


@pytest.mark.parametrize("group", [64, 128])
def test_int4_groups_from_bits(group):
    bits = bf16_bits(np.random.default_rng(3), 70, 384)
    want = ternlm.quantize(bf16_bits_to_float32(bits), "int4", group_size=group, threads=1)
    assert want.group_size == group
    assert_same(ternlm.quantize_bf16(bits, "int4", group_size=group, threads=2), want)


def _message(fn):
    with pytest.raises(ValueError) as e:
        fn()
    return str(e.value)


@pytest.mark.parametrize("fmt", ["int8", "q6", "int4", "ternary", "f32"])
def test_non_finite_bits_are_named_as_quantize_names_them(fmt):
    rows, cols = (1003, 320)
    bits = bf16_bits(np.random.default_rng(4), rows, cols)
    bits[900, 5] = 0x7FC0                                  # NaN, in a later task
    bits[3, 7] = 0xFF80                                    # -Inf: the first in flat order
    as_float = bf16_bits_to_float32(bits)
    msg = _message(lambda: ternlm.quantize_bf16(bits, fmt, threads=3))
    assert msg == f"quantize: w has a non-finite value (-inf) at flat index {3 * cols + 7}"
    assert msg == _message(lambda: ternlm.quantize(as_float, fmt, threads=1))
    half = as_float.astype(np.float16)
    assert _message(lambda: ternlm.quantize(half, fmt, threads=3)) == msg


def test_range_errors_name_the_first_row_as_a_serial_run_does():
    rows, cols = (1003, 320)
    bits = bf16_bits(np.random.default_rng(5), rows, cols)
    big = np.float32(1e30).view(np.uint32) >> 16
    bits[900, :16] = big                                   # q6's fp16 super-block scale overflows
    bits[37, 40:56] = big
    want = _message(lambda: ternlm.quantize(bf16_bits_to_float32(bits), "q6", threads=1))
    assert "row 37 has larger values" in want
    for threads in (1, 2, 3):
        assert _message(lambda: ternlm.quantize_bf16(bits, "q6", threads=threads)) == want
    want = _message(lambda: ternlm.quantize(bf16_bits_to_float32(bits), "int4", threads=1))
    largest = float(bf16_bits_to_float32(np.array([big], np.uint16))[0])     # 1e30 cut to bf16
    assert want == f"quantize: int4 needs |w| <= 65504 (fp16 scale/min), got {largest:f}"
    assert _message(lambda: ternlm.quantize_bf16(bits, "int4", threads=3)) == want


def test_bad_arguments():
    bits = np.zeros((4, 32), np.uint16)
    with pytest.raises(ValueError, match="format must be one of 'ternary', 'int4', 'q6', 'int8', 'bf16', 'bf16c', "
                                         "'f32', got 'int3'"):
        ternlm.quantize_bf16(bits, "int3")
    with pytest.raises(ValueError, match="quantize: threads must be >= 1 or None, got 0"):
        ternlm.quantize_bf16(bits, "q6", threads=0)
    with pytest.raises(ValueError, match="quantize: threads must be >= 1 or None, got 0"):
        ternlm.quantize(np.zeros((4, 32), np.float16), "q6", threads=0)
    with pytest.raises(ValueError, match=r"quantize: w must be C-contiguous"):
        ternlm.quantize(np.zeros((32, 4), np.float16).T, "int8")
    with pytest.raises(ValueError, match=r"quantize: w must be 2-D, got shape \(16,\)"):
        ternlm.quantize(np.zeros(16, np.float16), "int8")
    with pytest.raises(ValueError, match="group_size 64 does not divide cols = 96"):
        ternlm.quantize_bf16(np.zeros((4, 96), np.uint16), "int4", group_size=64)
    with pytest.raises(ValueError, match=r"shape must be non-empty, got \[0, 32\]"):
        ternlm.quantize_bf16(np.zeros((0, 32), np.uint16), "q6")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc/self/status")
@pytest.mark.skipif(os.environ.get("TERNLM_SANITIZE") == "1", reason="ASan's allocator and shadow memory add to VmHWM")
def test_no_float32_copy_of_the_matrix():
    # The peak resident memory of a fresh process grows by the q6 matrix (~27 MB) and a few
    # rows of scratch, not by a float32 copy of the weights (128 MB here).
    code = """if True:
        import numpy as np, ternlm
        def hwm():
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
        bits = np.random.default_rng(0).integers(0x3C00, 0x3F80, size=(4096, 8192), dtype=np.uint16)
        ternlm.quantize_bf16(bits[:16], "q6", threads=2)          # pools and code paths warm
        before = hwm()
        q = ternlm.quantize_bf16(bits, "q6", threads=2)
        print(hwm() - before, q.nbytes / 2**20)"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    grew, matrix_mb = float(out[0]), float(out[1])
    assert 20 < matrix_mb < 35 and grew < matrix_mb + 24, (grew, matrix_mb)


def test_many_python_threads_at_once():
    rng = np.random.default_rng(6)
    jobs = [(fmt, bf16_bits(rng, 400 + 17 * i, 320)) for i, fmt in enumerate(["int8", "q6", "int4", "ternary"])]
    want = [ternlm.quantize(bf16_bits_to_float32(b), fmt, threads=1).buffers() for fmt, b in jobs]

    def work(k):
        for n in range(6):
            j = (k + n) % len(jobs)
            got = ternlm.quantize_bf16(jobs[j][1], jobs[j][0], threads=(None, 1, 2, 3)[(k + n) % 4]).buffers()
            for name, v in want[j].items():
                np.testing.assert_array_equal(got[name], v)

    run_threads([lambda k=k: work(k) for k in range(6)])


# ---- through ternlm.load -------------------------------------------------------------------------

def float32_path_model(path, weights, head, context=64, threads=2):
    """The model as the loader built it before: every bf16 / fp16 matrix widened to a float32
    copy of the whole matrix, then quantize()."""
    from ternlm.loading import build_engine, target_formats
    from ternlm.model import Model
    ckpt = read_checkpoint(path)
    formats = target_formats(ckpt, weights, head)
    tensors = {}
    for name in ckpt.config.tensor_names():
        value, want = ckpt.tensors[name], formats.get(name)
        if isinstance(value, BF16Bits):
            value = np.asarray(value)
        if want is None or not isinstance(value, ternlm.QuantizedMatrix):
            value = np.ascontiguousarray(value, dtype=np.float32)
        if want is not None and not isinstance(value, ternlm.QuantizedMatrix):
            value = ternlm.quantize(value, want, threads=1)
        tensors[name] = value
    engine = build_engine(ckpt.config, tensors, context, threads)
    return Model(engine, ckpt.tokenizer, ckpt.config, formats, context)


def assert_loads_as_before(path, weights, head, bits_type):
    assert isinstance(read_checkpoint(path).tensors["embed"], bits_type)
    m = ternlm.load(path, weights=weights, head=head, context=64, threads=2, progress=False)
    ref = float32_path_model(path, weights, head)
    assert m.formats == ref.formats
    names = ["embed", "layers.0.q", "layers.1.down"] + (["lm_head"] if "lm_head" in m.formats else [])
    for name in names:
        assert_same(m._matrices[name], ref._engine.matrix(name))
    ids = list(range(3, 40))
    np.testing.assert_array_equal(m.logits(ids), ref.logits(ids))


@pytest.fixture(scope="module")
def synthetic_tiny(tmp_path_factory):
    from ternlm.synthetic import write_synthetic_bitnet
    return write_synthetic_bitnet(tmp_path_factory.mktemp("syn") / "tiny", "tiny")


@pytest.mark.parametrize("head", ["q6", "int8", "int4", "f32"])
def test_synthetic_bitnet_with_small_heads_loads_as_before(synthetic_tiny, head):
    assert_loads_as_before(synthetic_tiny, None, head, BF16Bits)


@pytest.mark.parametrize("weights,head", [("ternary", "q6"), ("int4", None)])
def test_bf16_llama_layer_matrices_load_as_before(llama_folders, weights, head):
    assert_loads_as_before(llama_folders["tied_bf16"], weights, head, BF16Bits)


def test_tied_embedding_is_converted_once(synthetic_tiny, monkeypatch):
    calls = []
    real = ternlm.formats.quantize_bf16

    def counting(bits, *args, **kw):
        calls.append(bits.shape)
        return real(bits, *args, **kw)
    monkeypatch.setattr(ternlm.formats, "quantize_bf16", counting)
    m = ternlm.load(synthetic_tiny, head="q6", context=64, threads=2, progress=False)
    assert calls == [(m.config.vocab_size, m.config.hidden_size)]   # embed only: lm_head is embed
    assert "lm_head" not in m.config.tensor_names()


def _poke_bf16(folder, key, flat_index, bits):
    """Overwrite one bf16 value of tensor `key` in folder/model.safetensors."""
    path = folder / "model.safetensors"
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        begin = json.loads(f.read(n))[key]["data_offsets"][0]
        f.seek(8 + n + begin + 2 * flat_index)
        f.write(int(bits).to_bytes(2, "little"))


@pytest.mark.parametrize("head", ["q6", "int8", "int4"])
def test_nan_in_a_bf16_head_names_file_and_tensor(synthetic_tiny, tmp_path, head):
    d = tmp_path / "m"
    shutil.copytree(synthetic_tiny, d)
    _poke_bf16(d, "model.embed_tokens.weight", 1234, 0x7FC0)
    with pytest.raises(ValueError, match=r"m: tensor 'embed': quantize: w has a non-finite value \(nan\) at flat "
                                         r"index 1234"):
        ternlm.load(d, head=head, context=64, threads=2, progress=False)


def test_gguf_f16_and_bf16_tensors_load_as_before(llama_folders, tmp_path):
    pytest.importorskip("gguf")
    from gguf_files import gguf_from_hf_folder
    path = gguf_from_hf_folder(llama_folders["gqa_f32"], tmp_path / "m.gguf",
                               {"embed": "BF16", "lm_head": "F16", "matrix": "F16"})
    ckpt = read_checkpoint(path)
    assert ckpt.stored["embed"] == "bf16" and ckpt.stored["layers.0.q"] == "f32"
    q = ckpt.tensors["layers.0.q"]
    assert isinstance(q, np.ndarray) and q.dtype == np.float16   # a view of the file, widened at conversion
    for weights, head in [(None, "q6"), ("int4", "int8"), (None, None), ("bf16c", None), ("ternary", "int4")]:
        assert_loads_as_before(path, weights, head, BF16Bits)


def test_hf_float16_checkpoint_loads_as_before(llama_folders, tmp_path):
    from ternlm.io.safetensors import SafetensorsFile, save_safetensors
    d = tmp_path / "f16"
    shutil.copytree(llama_folders["gqa_f32"], d)
    st = SafetensorsFile(d / "model.safetensors")
    tensors = {k: np.array(st.raw(k)).astype(np.float16) for k in st.keys()}
    del st
    save_safetensors(d / "model.safetensors", tensors, metadata={"format": "pt"})
    embed = read_checkpoint(d).tensors["embed"]
    assert embed.dtype == np.float16                     # the file's view, widened at conversion
    for weights, head in [(None, "q6"), ("ternary", "int8"), ("bf16c", None)]:
        assert_loads_as_before(d, weights, head, np.ndarray)
