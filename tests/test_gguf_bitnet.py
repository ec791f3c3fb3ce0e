"""GGUF files of the BitNet architectures (llama.cpp's `bitnet`, bitnet.cpp's `bitnet-25` /
`bitnet-b1.58`) with TQ2_0 / TQ1_0 / I2_S layer matrices and Q6_K heads, written by the
`gguf` package (and tests/gguf_files.py's encoders for the two types it cannot write): the
same logits as ternlm's Hugging Face path on the same weights, lossless imports, and clear
errors for bitnet.cpp's TL1 / TL2 and for damaged files."""
import json
import os

import numpy as np
import pytest

import ternlm
from gguf_files import I2S_TYPE_ID, q6k_bytes, tokenizer_meta_from_fast, write_gguf
from head_reference import q6_fields
from ternlm import schema
from ternlm.loading import read_checkpoint

IDS = list(range(3, 40))


@pytest.fixture(scope="module")
def bitnet_folders(tmp_path_factory):
    """BitNet HF folders (tests/conftest.py) 256 wide: TQ1_0 / TQ2_0 / Q6_K blocks are 256 weights."""
    from conftest import BITNET_VARIANTS, write_bitnet
    return {name: write_bitnet(tmp_path_factory.mktemp(f"bitnet256_{name}"), BITNET_VARIANTS[name], seed=30 + i,
                               hidden=256, ffn=512)
            for i, name in enumerate(("bitlinear", "autobitlinear_offline"))}


def bitnet_gguf(folder, path, matrix="TQ2_0", arch="bitnet", scale_tensors=False, head=None, n_layers=None):
    """The BitNet HF folder's weights (as ternlm reads them) as a GGUF file: embeddings and
    norms F32, layer matrices `matrix` (w = t * m for TQ types, whose block scale is then m;
    with scale_tensors the TQ blocks hold t and llama.cpp's `.scale` tensor holds m; I2_S
    holds t and m in its tail), lm_head F32 or, with head="Q6_K", ternlm's q6 of it."""
    ckpt = read_checkpoint(folder)
    cfg = ckpt.config
    tok_json = json.load(open(os.path.join(folder, "tokenizer.json"), encoding="utf-8"))
    specials = {a["content"] for a in tok_json.get("added_tokens", []) if a.get("special")}
    tokens, types, merges, _ = tokenizer_meta_from_fast(tok_json, "gpt2", specials)
    tok = {"model": "gpt2", "pre": "gpt-2", "tokens": tokens, "types": types, "merges": merges,
           "bos": cfg.bos_token_id, "eos": cfg.eos_token_ids[0], "add_bos": True}
    gcfg = {"hidden": cfg.hidden_size, "ffn": cfg.intermediate_size, "layers": cfg.num_layers,
            "heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads, "ctx": cfg.max_position_embeddings,
            "eps": cfg.rms_norm_eps, "theta": cfg.rope_theta}
    tensors = {}
    for spec in schema.specs(cfg):
        value = ckpt.tensors[spec.name]
        if isinstance(value, ternlm.QuantizedMatrix) and value.format == "ternary":
            t = value.ternary_values()
            m = value.buffers()["row_multiplier"]
            assert np.all(m == m[0])                  # one scale per tensor
            if matrix == "I2_S":
                tensors[spec.gguf_name] = ((t, m[0]), "I2_S")
            elif scale_tensors:
                tensors[spec.gguf_name] = (t.astype(np.float32), matrix)
                tensors[spec.gguf_name[:-len(".weight")] + ".scale"] = (np.array([m[0]], np.float32), "F32")
            else:
                tensors[spec.gguf_name] = (t.astype(np.float32) * m[0], matrix)
        else:
            arr = np.asarray(value, dtype=np.float32)
            if spec.role == "head" and head == "Q6_K":
                u, sc, d = q6_fields(ternlm.quantize(np.ascontiguousarray(arr), "q6"))
                tensors[spec.gguf_name] = ((u.astype(np.uint8), sc, d), "Q6_K")
            else:
                tensors[spec.gguf_name] = (arr, "F32")
    return write_gguf(path, gcfg, tensors, tok, arch=arch)


def load(path, **kw):
    return ternlm.load(path, context=64, threads=2, progress=False, **kw)


def same_model(a, b):
    assert a.formats == b.formats
    np.testing.assert_array_equal(a.logits(IDS), b.logits(IDS))
    assert a.generate("Hello", max_new_tokens=6) == b.generate("Hello", max_new_tokens=6)


def test_tq2_file_equals_the_hf_folder(bitnet_folders, tmp_path):
    """autobitlinear's multiplier is a bf16 value, exact as TQ2_0's fp16 block scale: the file
    holds the folder's weights exactly, and ternlm computes the same logits from both."""
    folder = bitnet_folders["autobitlinear_offline"]
    path = bitnet_gguf(folder, tmp_path / "m.gguf", "TQ2_0")
    g, h = load(path, head="bf16"), load(folder, head="bf16")
    assert g.config.arch == "bitnet" and g.config.hidden_act == "relu2" and not g.config.tie_word_embeddings
    assert g.formats["layers.0.q"] == "ternary" and g.formats["layers.1.down"] == "ternary"
    same_model(g, h)


@pytest.mark.parametrize("matrix", ["TQ1_0", "TQ2_0"])
def test_scale_tensors_are_folded_exactly(bitnet_folders, tmp_path, matrix):
    """bitlinear's multiplier is 1 / weight_scale (not an fp16 value): with llama.cpp's
    `blk.N.*.scale` tensors it is carried in f32, and the logits equal the folder's."""
    folder = bitnet_folders["bitlinear"]
    path = bitnet_gguf(folder, tmp_path / "m.gguf", matrix, scale_tensors=True)
    same_model(load(path, head="bf16"), load(folder, head="bf16"))


def test_tq2_block_scales_round_the_multiplier_to_fp16(bitnet_folders, tmp_path):
    folder = bitnet_folders["bitlinear"]
    path = bitnet_gguf(folder, tmp_path / "m.gguf", "TQ2_0")
    from ternlm.io.gguf import load_gguf
    g, h = load_gguf(path), read_checkpoint(folder)
    for name in ("layers.0.q", "layers.1.down"):
        np.testing.assert_array_equal(g.tensors[name].ternary_values(), h.tensors[name].ternary_values())
        m = h.tensors[name].buffers()["row_multiplier"]
        np.testing.assert_array_equal(g.tensors[name].buffers()["row_multiplier"],
                                      m.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("arch", ["bitnet", "bitnet-25", "bitnet-b1.58"])
def test_i2s_file_equals_the_hf_folder(bitnet_folders, tmp_path, arch):
    folder = bitnet_folders["bitlinear"]
    path = bitnet_gguf(folder, tmp_path / "m.gguf", "I2_S", arch=arch)
    g = load(path, head="bf16")
    assert g.formats["layers.0.gate"] == "ternary"
    same_model(g, load(folder, head="bf16"))


def test_q6k_head_imports_without_loss(bitnet_folders, tmp_path):
    import gguf
    folder = bitnet_folders["autobitlinear_offline"]
    path = bitnet_gguf(folder, tmp_path / "m.gguf", "TQ2_0", head="Q6_K")
    from ternlm.io.gguf import load_gguf
    from ternlm.io.gguf_reader import GGUFFile
    ckpt = load_gguf(path)
    assert ckpt.stored["lm_head"] == "q6"
    raw = next(t for t in GGUFFile(path).tensors if t.name == "output.weight")
    ref = gguf.quants.dequantize(np.asarray(raw.data), gguf.GGMLQuantizationType.Q6_K)
    np.testing.assert_array_equal(ckpt.tensors["lm_head"].dequantize(), ref.reshape(ckpt.tensors["lm_head"].shape))
    # and the q6 matrix it came from (ternlm's quantizer) survives the round trip bit for bit
    head = np.asarray(read_checkpoint(folder).tensors["lm_head"], dtype=np.float32)
    np.testing.assert_array_equal(ref.reshape(head.shape), ternlm.quantize(head, "q6").dequantize())
    m = load(path)
    assert m.formats["lm_head"] == "q6" and m.formats["embed"] == "f32"
    assert np.all(np.isfinite(m.logits(IDS)))


def test_q6k_encoder_matches_ggufs_decoder():
    import gguf
    rng = np.random.default_rng(0)
    u = rng.integers(0, 64, (3, 512)).astype(np.uint8)
    sc = rng.integers(-128, 128, (3, 32)).astype(np.int8)
    d = rng.standard_normal((3, 2)).astype(np.float16)
    ref = gguf.quants.dequantize(q6k_bytes(u, sc, d), gguf.GGMLQuantizationType.Q6_K)
    want = d.astype(np.float32).repeat(256, 1) * sc.astype(np.float32).repeat(16, 1) * (u.astype(np.float32) - 32)
    np.testing.assert_array_equal(ref, want)
    np.testing.assert_array_equal(ternlm.from_q6(u, sc, d).dequantize(), ref)


def _patch_type(path, tensor, type_id):
    """Rewrite the GGML type id of `tensor` in the file's tensor table."""
    data = bytearray(open(path, "rb").read())
    name = tensor.encode()
    at = data.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    at += 4 + 8 * n_dims
    data[at:at + 4] = type_id.to_bytes(4, "little")
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("type_id,kind", [(38, "TL1"), (39, "TL2"), (37, "I8_S")])
def test_bitnet_cpp_table_types_are_named(bitnet_folders, tmp_path, type_id, kind):
    path = bitnet_gguf(bitnet_folders["bitlinear"], tmp_path / "m.gguf", "I2_S", arch="bitnet-b1.58")
    _patch_type(path, "blk.0.attn_q.weight", type_id)
    with pytest.raises(ValueError, match=rf"blk\.0\.attn_q\.weight has bitnet\.cpp's type {kind} "
                                         rf"\(GGML type id {type_id}\)"):
        load(path)


def test_type_39_outside_bitnet_archs_is_mxfp4(tmp_path):
    from gguf_files import write_gguf as w
    tok = {"model": "gpt2", "pre": "gpt-2", "tokens": ["a", "b"], "types": [1, 1], "merges": [], "bos": 0, "eos": 1}
    cfg = {"hidden": 32, "ffn": 64, "layers": 1, "heads": 2, "kv_heads": 2, "ctx": 64, "eps": 1e-5, "theta": 1e4}
    path = w(tmp_path / "m.gguf", cfg, {"token_embd.weight": (np.ones((2, 32), np.float32), "F32")}, tok)
    _patch_type(path, "token_embd.weight", 39)
    from ternlm.io.gguf_reader import GGUFFile
    from ternlm.io.gguf_tensors import read_tensor
    t = GGUFFile(path).tensors[0]
    assert t.tensor_type.name == "MXFP4"
    with pytest.raises(ValueError, match="token_embd.weight has GGUF type MXFP4, which ternlm cannot import"):
        read_tensor(t, "embed", path, None)


def test_damaged_i2s_tensors_are_refused(bitnet_folders, tmp_path):
    path = bitnet_gguf(bitnet_folders["bitlinear"], tmp_path / "m.gguf", "I2_S")
    from ternlm.io.gguf_reader import GGUFFile
    f = GGUFFile(path)
    t = next(t for t in f.tensors if t.name == "blk.1.ffn_up.weight")
    start = t.data.__array_interface__["data"][0] - f._mm.__array_interface__["data"][0]
    del f, t.data
    data = bytearray(open(path, "rb").read())
    n = int(np.prod(t.shape)) // 4
    bad = bytearray(data)
    bad[start + 5] = 0xFF             # weights 5, 37, 69, 101 of block 0 get the invalid code 3
    open(tmp_path / "code3.gguf", "wb").write(bytes(bad))
    with pytest.raises(ValueError, match=r"blk\.1\.ffn_up\.weight: I2_S weight 5 \(row 0\) holds the invalid code 3"):
        load(tmp_path / "code3.gguf")
    bad = bytearray(data)
    bad[start + n: start + n + 4] = np.float32(np.nan).tobytes()
    open(tmp_path / "nan.gguf", "wb").write(bytes(bad))
    with pytest.raises(ValueError, match=r"blk\.1\.ffn_up\.weight: I2_S scale is nan"):
        load(tmp_path / "nan.gguf")
    open(tmp_path / "short.gguf", "wb").write(bytes(data[:-40]))
    with pytest.raises(ValueError, match="does not fit in the file"):
        load(tmp_path / "short.gguf")


def test_llama_cpp_python_logits_on_a_tq2_file(bitnet_folders, tmp_path):
    """llama.cpp's own logits on the same TQ2_0 bitnet file (optional: needs llama-cpp-python)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    folder = bitnet_folders["autobitlinear_offline"]
    path = bitnet_gguf(folder, tmp_path / "m.gguf", "TQ2_0")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(IDS)
    ref = np.array(llm.scores[: len(IDS)], dtype=np.float32)
    got = load(path, head="f32").logits(IDS)
    # llama.cpp quantizes activations to Q8_K for TQ2_0 dots: agreement to ~1% of the spread
    assert np.abs(got - ref).max() < 0.02 * (ref.max() - ref.min())
