"""GGUF import on small files written like llama.cpp writes them: tensor types, the q/k row
permutation, ternary blocks, metadata -> config, errors; the model against transformers'
own GGUF loading of the same file."""
import os
import warnings

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import ternlm  # noqa: E402
from gguf_files import gguf_from_hf_folder, llamacpp_permute, write_gguf  # noqa: E402
from ternlm.io.gguf import load_gguf, unpermute_rows  # noqa: E402

CFG = {"hidden": 256, "ffn": 512, "layers": 1, "heads": 4, "kv_heads": 2, "ctx": 128, "eps": 1e-5, "theta": 10000.0}
TOK = {"model": "gpt2", "pre": "gpt-2", "tokens": [chr(0x21 + i) for i in range(64)],
       "types": [3, 3] + [1] * 62, "merges": [], "bos": 0, "eos": 1, "add_bos": True}


def _weights(seed, types=None, ternary=None):
    """Random GGUF tensors for CFG; `types` maps GGUF short names (attn_q, ...) to types."""
    rng = np.random.default_rng(seed)
    h, f, hd = CFG["hidden"], CFG["ffn"], CFG["hidden"] // CFG["heads"]
    shapes = {"attn_q": (CFG["heads"] * hd, h), "attn_k": (CFG["kv_heads"] * hd, h),
              "attn_v": (CFG["kv_heads"] * hd, h), "attn_output": (h, CFG["heads"] * hd),
              "ffn_gate": (f, h), "ffn_up": (f, h), "ffn_down": (h, f)}
    types = types or {}
    out = {"token_embd.weight": (rng.standard_normal((64, h)).astype(np.float32), types.get("token_embd", "F32")),
           "output_norm.weight": (1 + 0.1 * rng.standard_normal(h).astype(np.float32), "F32"),
           "blk.0.attn_norm.weight": (1 + 0.1 * rng.standard_normal(h).astype(np.float32), "F32"),
           "blk.0.ffn_norm.weight": (1 + 0.1 * rng.standard_normal(h).astype(np.float32), "F32")}
    for name, shape in shapes.items():
        w = (0.05 * rng.standard_normal(shape)).astype(np.float32)
        if ternary is not None:
            w = ternary(rng, shape)
        out[f"blk.0.{name}.weight"] = (w, types.get(name, "F32"))
    return out


def _reference(path, gguf_name, n_head=None):
    """gguf's own dequantization of one tensor, [rows, cols], q/k rows un-permuted."""
    r = gguf.GGUFReader(path)
    t = next(x for x in r.tensors if x.name == gguf_name)
    w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
    return unpermute_rows(w, n_head) if n_head else w


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_q4_imports_as_int4_bit_for_bit(tmp_path, kind):
    types = {k: kind for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    path = write_gguf(tmp_path / "m.gguf", CFG, _weights(1, types), TOK)
    ck = load_gguf(path)
    for canon, gname, heads in [("layers.0.q", "blk.0.attn_q.weight", CFG["heads"]),
                                ("layers.0.k", "blk.0.attn_k.weight", CFG["kv_heads"]),
                                ("layers.0.v", "blk.0.attn_v.weight", None),
                                ("layers.0.down", "blk.0.ffn_down.weight", None)]:
        q = ck.tensors[canon]
        assert ck.stored[canon] == "int4" and q.format == "int4" and q.group_size == 32
        np.testing.assert_array_equal(q.dequantize(), _reference(path, gname, heads))


def test_q4_0_extreme_scales_stay_exact(tmp_path):
    """Q4_0's min = -8 d must be exact in fp16: large and subnormal block scales."""
    w = _weights(2, {"ffn_up": "Q4_0"})
    big = w["blk.0.ffn_up.weight"][0].copy()
    big[0, :32] *= 2e4 / np.abs(big[0, :32]).max()        # d ~ 2500: -8 d ~ -2e4, still finite
    big[1, :32] *= 1e-6                                    # subnormal fp16 scale
    w["blk.0.ffn_up.weight"] = (big, "Q4_0")
    path = write_gguf(tmp_path / "m.gguf", CFG, w, TOK)
    ck = load_gguf(path)
    assert ck.stored["layers.0.up"] == "int4"
    np.testing.assert_array_equal(ck.tensors["layers.0.up"].dequantize(), _reference(path, "blk.0.ffn_up.weight"))


@pytest.mark.parametrize("kind,stored", [("F32", "f32"), ("F16", "f32"), ("BF16", "bf16"), ("Q8_0", "f32")])
def test_float_and_q8_tensors_match_gguf_dequantize(tmp_path, kind, stored):
    types = {k: kind for k in ("token_embd", "attn_q", "attn_k", "ffn_down")}
    path = write_gguf(tmp_path / "m.gguf", CFG, _weights(3, types), TOK)
    ck = load_gguf(path)
    for canon, gname, heads in [("embed", "token_embd.weight", None), ("layers.0.q", "blk.0.attn_q.weight", 4),
                                ("layers.0.k", "blk.0.attn_k.weight", 2), ("layers.0.down", "blk.0.ffn_down.weight", None)]:
        assert ck.stored[canon] == stored
        got = np.asarray(ck.tensors[canon], dtype=np.float32)
        np.testing.assert_array_equal(got, _reference(path, gname, heads))


def test_qk_permutation_is_undone_exactly():
    rng = np.random.default_rng(0)
    for heads in (1, 2, 4, 9):
        w = rng.standard_normal((heads * 16, 8)).astype(np.float32)
        np.testing.assert_array_equal(unpermute_rows(llamacpp_permute(w, heads), heads), w)
        assert not np.array_equal(llamacpp_permute(w, heads), w)


def _ternary_rows(rng, shape, mixed=False):
    """ternary * scale with one scale per row (mixed=False) or per 256-block (mixed=True);
    some blocks all zero (their fp16 scale is then 0 in the file)."""
    rows, cols = shape
    t = rng.integers(-1, 2, size=shape).astype(np.float32)
    t[0, :256] = 0                                                       # an all-zero block
    scale = rng.uniform(0.01, 0.1, size=(rows, 1)).astype(np.float16).astype(np.float32)
    if mixed:
        blocks = rng.uniform(0.01, 0.1, size=(rows, cols // 256)).astype(np.float16).astype(np.float32)
        return t * np.repeat(blocks, 256, axis=1)
    return t * scale


@pytest.mark.parametrize("kind", ["TQ1_0", "TQ2_0"])
def test_ternary_blocks_with_one_scale_per_row_import_exactly_as_ternary(tmp_path, kind):
    types = {k: kind for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    path = write_gguf(tmp_path / "m.gguf", CFG, _weights(4, types, ternary=_ternary_rows), TOK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # exact: no fallback warning
        ck = load_gguf(path)
    for canon, gname, heads in [("layers.0.q", "blk.0.attn_q.weight", 4), ("layers.0.k", "blk.0.attn_k.weight", 2),
                                ("layers.0.down", "blk.0.ffn_down.weight", None)]:
        q = ck.tensors[canon]
        assert ck.stored[canon] == "ternary" and q.format == "ternary"
        np.testing.assert_array_equal(q.dequantize(), _reference(path, gname, heads))


@pytest.mark.parametrize("kind", ["TQ1_0", "TQ2_0"])
def test_ternary_blocks_with_different_scales_fall_back_to_exact_int4(tmp_path, kind):
    mixed = lambda rng, shape: _ternary_rows(rng, shape, mixed=True)   # noqa: E731
    path = write_gguf(tmp_path / "m.gguf", CFG, _weights(5, {"ffn_down": kind}, ternary=mixed), TOK)
    with pytest.warns(UserWarning, match=r"blk\.0\.ffn_down\.weight.*different scales.*INT4"):
        ck = load_gguf(path)
    assert ck.stored["layers.0.down"] == "int4"
    np.testing.assert_array_equal(ck.tensors["layers.0.down"].dequantize(), _reference(path, "blk.0.ffn_down.weight"))


def test_metadata_becomes_config(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", CFG, _weights(6), TOK)
    c = load_gguf(path).config
    assert (c.arch, c.hidden_size, c.intermediate_size, c.num_layers) == ("llama", 256, 512, 1)
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size) == (4, 2, 64, 64)
    assert c.tie_word_embeddings and c.rope_scaling is None
    assert c.rope_theta == 10000.0 and abs(c.rms_norm_eps - 1e-5) < 1e-12 and c.max_position_embeddings == 128
    assert c.bos_token_id == 0 and c.eos_token_ids == [1]


def _llama3_inv_freq(theta, dim, s):
    """transformers' _compute_llama3_parameters, in numpy."""
    inv = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    low_wl = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wl = s["original_max_position_embeddings"] / s["high_freq_factor"]
    wl = 2 * np.pi / inv
    out = np.where(wl > low_wl, inv / s["factor"], inv)
    smooth = (s["original_max_position_embeddings"] / wl - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    mid = (1 - smooth) * out / s["factor"] + smooth * out
    band = ~(wl < high_wl) & ~(wl > low_wl)
    return np.where(band, mid, out)


def test_llama3_rope_freqs_tensor_becomes_equivalent_rope_scaling(tmp_path):
    theta, dim = 500000.0, 64
    s = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    inv = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    freqs = (inv / _llama3_inv_freq(theta, dim, s)).astype(np.float32)     # llama.cpp's divisors
    assert 1 < len(set(np.round(freqs, 3))) and freqs.max() == pytest.approx(8.0)
    w = _weights(7)
    w["rope_freqs.weight"] = (freqs, "F32")
    cfg = dict(CFG, theta=theta)
    path = write_gguf(tmp_path / "m.gguf", cfg, w, TOK, extra={"llama.rope.scaling.original_context_length": 8192})
    got = load_gguf(path).config.rope_scaling
    assert got["rope_type"] == "llama3" and got["factor"] == pytest.approx(8.0)
    np.testing.assert_allclose(_llama3_inv_freq(theta, dim, got), _llama3_inv_freq(theta, dim, s), rtol=1e-6)


def test_unknown_architecture_is_refused(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", CFG, _weights(8), TOK, arch="gemma")
    with pytest.raises(ValueError, match=r"m\.gguf.*architecture is 'gemma'"):
        load_gguf(path)


def test_unsupported_tensor_type_names_file_tensor_and_type(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", CFG, _weights(9, {"ffn_gate": "Q5_0"}), TOK)
    with pytest.raises(ValueError, match=r"m\.gguf: tensor blk\.0\.ffn_gate\.weight has GGUF type Q5_0"):
        load_gguf(path)


def test_missing_tensor_and_bad_files(tmp_path):
    w = _weights(10)
    del w["blk.0.ffn_up.weight"]
    path = write_gguf(tmp_path / "m.gguf", CFG, w, TOK)
    with pytest.raises(ValueError, match=r"missing tensors.*layers\.0\.up"):
        load_gguf(path)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="junk.gguf: not a readable GGUF file"):
        load_gguf(str(junk))
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_gguf(str(tmp_path / "nope.gguf"))


# ---- the model through ternlm.load, against transformers' GGUF loading ------------------------------
@pytest.fixture(scope="module")
def tiny_ggufs(llama_folders, tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf_models")
    src = llama_folders["gqa_f32"]
    return {
        "f32": gguf_from_hf_folder(src, d / "f32.gguf", {"embed": "F32", "lm_head": "F32", "matrix": "F32"}),
        "q4_1": gguf_from_hf_folder(src, d / "q4_1.gguf", {"embed": "Q8_0", "lm_head": "F16", "matrix": "Q4_1"}),
        "q4_0": gguf_from_hf_folder(src, d / "q4_0.gguf", {"embed": "BF16", "lm_head": "Q8_0", "matrix": "Q4_0"}),
        "src": src,
    }


def _transformers_gguf_logits(path, ids):
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                             dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("kind", ["f32", "q4_1", "q4_0"])
def test_logits_match_transformers_gguf_loading(tiny_ggufs, kind):
    path = tiny_ggufs[kind]
    m = ternlm.load(path, progress=False)
    ids = m.tokenizer.encode("The quick brown fox jumps over the lazy dog. 12345")
    ref = _transformers_gguf_logits(path, ids)
    got = m.logits(ids)
    # float32 engine vs float32 torch on identical (dequantized) weights. INT4 matmuls quantize
    # activations to int8 per 32-block (cpp/kernels/activations.h); in this 64-wide random model that costs
    # about 1% of the logits' RMS, with single logits off by up to ~5% of the largest.
    err = got - ref
    rel_rms = np.sqrt(np.mean(err ** 2) / np.mean(ref ** 2))
    if kind == "f32":
        np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max(), rtol=0)
    else:
        assert rel_rms < 5e-2, rel_rms
        assert np.abs(err).max() < 0.1 * np.abs(ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= (1.0 if kind == "f32" else 0.9)


@pytest.mark.parametrize("kind", ["q4_1", "q4_0"])
def test_dequantized_gguf_weights_in_f32_match_transformers_tightly(tiny_ggufs, kind):
    """The same file with every imported matrix run in f32 (no activation quantization):
    what the loader hands over is exactly what transformers dequantizes."""
    from ternlm.loading import build_engine, read_checkpoint
    from ternlm.model import Model
    path = tiny_ggufs[kind]
    ck = read_checkpoint(path)
    tensors = {n: (v.dequantize() if isinstance(v, ternlm.QuantizedMatrix) else np.asarray(v, np.float32))
               for n, v in ck.tensors.items()}
    tensors = {n: (ternlm.quantize(v, "f32") if n in ck.stored else v) for n, v in tensors.items()}
    m = Model(build_engine(ck.config, tensors, 64, None), ck.tokenizer, ck.config,
              {n: "f32" for n in ck.stored}, 64)
    ids = m.tokenizer.encode("The quick brown fox jumps over the lazy dog. 12345")
    ref = _transformers_gguf_logits(path, ids)
    np.testing.assert_allclose(m.logits(ids), ref, atol=2e-4 * np.abs(ref).max(), rtol=0)


def test_f32_gguf_equals_the_hf_checkpoint_it_came_from(tiny_ggufs):
    """The un-permuted q/k give the same logits as the original Hugging Face folder."""
    a = ternlm.load(tiny_ggufs["f32"], progress=False)
    b = ternlm.load(tiny_ggufs["src"], progress=False)
    ids = b.tokenizer.encode("Hello world! How are you today?")
    np.testing.assert_allclose(a.logits(ids), b.logits(ids), rtol=0, atol=1e-5)
