"""GGUF files of the architectures ternlm runs from Hugging Face folders, written the way
llama.cpp's converter writes them (tests/gguf_files.py gguf_from_arch_folder): `qwen2`
(q/k/v biases), `qwen3` (attn_q_norm / attn_k_norm, key_length wider than hidden / heads)
and Mistral as `llama` (q/k rows permuted; a sliding window only when the file has
`llama.attention.sliding_window`), with F32 / F16 / BF16 / Q8_0 / Q4_0 / Q4_1 / Q6_K
tensors, against the same model's Hugging Face folder (and, for qwen2 / qwen3, against
transformers' own GGUF loading of the file).

References and tolerances. "The same model's HF folder" is the folder the file was written
from with every tensor replaced by gguf's own dequantization of the file's (q/k un-permuted):
transformers float32 on it. Types that ternlm runs in float (F32, F16, BF16, Q8_0: stored f32
or bf16, f32 math): 2e-4 of max|logit|, greedy argmax equal everywhere. Q4_0 / Q4_1 / Q6_K
import without loss into int4 / q6, whose matmuls round activations to int8 per 32-block
(cpp/kernels/activations.h): RMS error < 5% of the logits' RMS, max < 10% of max|logit|,
>= 90% argmax agreement (tests/test_gguf_loader.py measures the same bounds). The tokenizer
from the metadata must encode like the folder's tokenizer.json.
"""
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import ternlm  # noqa: E402
from arch_checkpoints import write_arch  # noqa: E402
from gguf_files import gguf_from_arch_folder, llamacpp_permute  # noqa: E402
from ternlm.io.gguf import unpermute_rows  # noqa: E402

FAMILIES = {"qwen2": "qwen2_256", "qwen3": "qwen3_256", "mistral": "mistral_256"}
FLOAT_KINDS = ("F32", "F16", "BF16", "Q8_0")
TYPES = {   # file -> (embedding, head, layer matrices); both heads of a tied model are the embedding
    "F32": ("F32", "F32", "F32"), "F16": ("F16", "F16", "F16"), "BF16": ("BF16", "F32", "BF16"),
    "Q8_0": ("Q8_0", "F16", "Q8_0"), "Q4_0": ("Q8_0", "Q6_K", "Q4_0"), "Q4_1": ("F16", "Q8_0", "Q4_1"),
    "Q6_K": ("Q6_K", "Q6_K", "Q6_K"),
}
TEXTS = ["Hello world! How are you today?", "I'm sure they'll say it's 12345 or 3.14159...",
         "  leading spaces\n\nand\ttabs\r\nnew lines", "caf\u00e9 cafe\u0301 na\u00efve \u00c5ngstr\u00f6m",
         "\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929 \U0001F680 (emoji)", "<|im_start|>user\nhi<|im_end|>"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {name: write_arch(tmp_path_factory.mktemp(f"g_{name}"), fam, seed=40 + i)
            for i, (name, fam) in enumerate(FAMILIES.items())}


@pytest.fixture(scope="module")
def files(folders, tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf_archs")
    out = {}
    for name, folder in folders.items():
        for kind, (embed, head, matrix) in TYPES.items():
            out[name, kind] = gguf_from_arch_folder(folder, d / f"{name}_{kind}.gguf",
                                                    {"embed": embed, "lm_head": head, "matrix": matrix})
    return out


def _dequantized_folder_logits(src, path, ids):
    """transformers float32 on the folder `src` with every tensor taken from the GGUF file
    at `path` through gguf's dequantization (q/k rows of a `llama` file un-permuted)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(src)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    r = gguf.GGUFReader(path)
    llama = r.fields["general.architecture"].contents() == "llama"
    by = {t.name: t for t in r.tensors}
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
             "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    state = {}
    for name, t in by.items():
        shape = tuple(int(x) for x in reversed(t.shape))
        a = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float32)
        parts = name.split(".")
        if parts[0] == "blk":
            if llama and parts[2] in ("attn_q", "attn_k"):
                a = unpermute_rows(a, cfg.num_attention_heads if parts[2] == "attn_q" else cfg.num_key_value_heads)
            key = f"model.layers.{parts[1]}.{names[parts[2]]}.{parts[3]}"
        else:
            key = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                   "output.weight": "lm_head.weight"}[name]
        state[key] = torch.from_numpy(a)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("kind", list(TYPES))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_the_same_models_hf_folder(folders, files, name, kind):
    path = files[name, kind]
    m = ternlm.load(path, context=96, threads=2, progress=False)
    c = m.config
    assert (c.attention_bias, c.qk_norm) == (name == "qwen2", name == "qwen3")
    assert c.sliding_window == 0            # llama.cpp's converter writes no window key
    if name == "qwen3":
        assert c.head_dim == 128 and c.num_heads * c.head_dim > c.hidden_size    # from key_length
    ids = np.random.default_rng(7).integers(3, c.vocab_size, 20).tolist()    # within Mistral's window
    ref = _dequantized_folder_logits(folders[name], path, ids)
    got = m.logits(ids)
    err = got - ref
    rel_rms = float(np.sqrt(np.mean(err ** 2) / np.mean(ref ** 2)))
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
    print(f"{name}/{kind}: rms {rel_rms:.2e}, max {np.abs(err).max() / np.abs(ref).max():.2e}, argmax {agree:.3f}")
    if kind in FLOAT_KINDS:
        np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max(), rtol=0)
        assert agree == 1.0
    else:
        assert rel_rms < 5e-2 and np.abs(err).max() < 0.1 * np.abs(ref).max() and agree >= 0.9


@pytest.mark.parametrize("name, kind", [("qwen2", "F32"), ("qwen3", "F32"), ("qwen2", "Q8_0"), ("qwen3", "F16")])
def test_logits_and_tokens_match_transformers_gguf_loading(files, name, kind):
    """transformers' own GGUF loader (model and tokenizer) on the same qwen2 / qwen3 file:
    an independent reading of the metadata, names and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = files[name, kind]
    folder, fname = os.path.dirname(path), os.path.basename(path)
    ref_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    ref_tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    m = ternlm.load(path, context=64, threads=2, progress=False)
    for text in TEXTS[:3]:
        assert m.tokenizer.encode(text) == ref_tok.encode(text), text
    ids = m.tokenizer.encode(TEXTS[1])
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(m.logits(ids), ref, atol=2e-4 * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_stored_formats_are_lossless_imports(files, name):
    """Q4_0 / Q4_1 layer matrices -> int4, Q6_K -> q6, BF16 kept as bf16; each bit for bit
    gguf's dequantization (q/k of the llama file un-permuted)."""
    from ternlm.loading import read_checkpoint
    for kind, want in (("Q4_0", "int4"), ("Q4_1", "int4"), ("Q6_K", "q6"), ("BF16", "bf16")):
        path = files[name, kind]
        ck = read_checkpoint(path)
        r = gguf.GGUFReader(path)
        t = next(x for x in r.tensors if x.name == "blk.1.attn_k.weight")
        ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
        if name == "mistral":
            ref = unpermute_rows(ref, ck.config.num_kv_heads)
        got = ck.tensors["layers.1.k"]
        assert ck.stored["layers.1.k"] == want
        got = got.dequantize() if isinstance(got, ternlm.QuantizedMatrix) else np.asarray(got, np.float32)
        np.testing.assert_array_equal(got, ref)


def test_qwen2_biases_and_qwen3_norms_come_from_their_tensors(files):
    from ternlm.loading import read_checkpoint
    q2 = read_checkpoint(files["qwen2", "F32"])
    r = gguf.GGUFReader(files["qwen2", "F32"])
    bias = next(np.asarray(t.data) for t in r.tensors if t.name == "blk.0.attn_k.bias")
    np.testing.assert_array_equal(q2.tensors["layers.0.k_bias"], bias)      # NEOX arch: not permuted
    q3 = read_checkpoint(files["qwen3", "F32"])
    assert q3.tensors["layers.1.q_norm"].shape == (128,)
    assert "layers.0.q_bias" not in q3.tensors and q3.config.tie_word_embeddings


@pytest.mark.parametrize("name", ["qwen2", "qwen3", "mistral"])
def test_tokenizer_from_metadata_encodes_like_the_folder(folders, files, name):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(folders[name])
    ours = ternlm.load(files[name, "Q8_0"], context=64, progress=False).tokenizer
    for text in TEXTS:
        if name == "mistral" and text[0].isspace():
            # this Llama-2-style tokenizer.json prepends "\u2581" even to a leading space (as
            # llama.cpp does); ternlm's GGUF SentencePiece tokenizer follows transformers' GGUF
            # loader and legacy=false tokenizer.json files, which do not (gguf_tokenizer.py)
            continue
        assert ours.encode(text) == hf.encode(text), text
        assert ours.decode(ours.encode(text)) == hf.decode(hf.encode(text), skip_special_tokens=True), text


def test_qwen2_pre_tokenizer_normalizes_to_nfc(folders, files):
    """A decomposed accent (e + U+0301) tokenizes as the composed one, as Qwen2's tokenizer.json does."""
    tok = ternlm.load(files["qwen2", "F16"], context=64, progress=False).tokenizer
    assert tok.encode("cafe\u0301") == tok.encode("caf\u00e9")


def test_mistral_window_key_makes_it_exact_past_the_window(folders, tmp_path):
    """With `llama.attention.sliding_window` in the file, the window applies (transformers'
    Mistral past its 24 positions); the same file without it attends to every position,
    as llama.cpp's llama graph does."""
    from conftest import hf_logits
    folder = folders["mistral"]
    types = {"embed": "F32", "lm_head": "F32", "matrix": "F32"}
    windowed = gguf_from_arch_folder(folder, tmp_path / "w.gguf", types, sliding_window=24)
    ids = np.random.default_rng(8).integers(3, 300, 60).tolist()
    m = ternlm.load(windowed, context=96, threads=2, progress=False)
    assert m.config.sliding_window == 24 and m.config.full_attention_layers == []
    ref = hf_logits(folder, ids)
    np.testing.assert_allclose(m.logits(ids), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    plain = ternlm.load(gguf_from_arch_folder(folder, tmp_path / "p.gguf", types), context=96, progress=False)
    assert np.abs(plain.logits(ids)[40:] - ref[40:]).max() > 1e-2 * np.abs(ref).max()


def test_window_pattern_marks_full_layers(folders, tmp_path):
    """`sliding_window_pattern` as a bool per layer (true: sliding) or a period."""
    folder = folders["mistral"]
    types = {"embed": "F32", "lm_head": "F32", "matrix": "F32"}
    from ternlm.loading import read_checkpoint
    per_layer = gguf_from_arch_folder(folder, tmp_path / "a.gguf", types, sliding_window=24,
                                      window_pattern=[False, True])
    assert read_checkpoint(per_layer).config.full_attention_layers == [0]
    period = gguf_from_arch_folder(folder, tmp_path / "b.gguf", types, sliding_window=24, window_pattern=2)
    assert read_checkpoint(period).config.full_attention_layers == [1]


def test_window_pattern_of_the_wrong_length_is_named(folders, tmp_path):
    path = gguf_from_arch_folder(folders["mistral"], tmp_path / "bad.gguf", {"embed": "F32", "lm_head": "F32",
                                 "matrix": "F32"}, sliding_window=24, window_pattern=[True])
    with pytest.raises(ValueError, match=r"bad.gguf: metadata key llama.attention.sliding_window_pattern must "
                                         r"hold one bool per layer \(2\)"):
        ternlm.load(path, progress=False)


def test_llama_file_with_permuted_q_bias(tmp_path):
    """A `llama` file's optional attn_q / attn_k biases are permuted with their rows
    (llama.cpp's converter permutes q_proj.bias too) and un-permuted on import."""
    from gguf_files import write_gguf
    from ternlm.loading import read_checkpoint
    rng = np.random.default_rng(3)
    cfg = {"hidden": 64, "ffn": 96, "layers": 1, "heads": 4, "kv_heads": 2, "ctx": 64, "eps": 1e-5, "theta": 1e4}
    tok = {"model": "gpt2", "pre": "gpt-2", "tokens": [chr(0x21 + i) for i in range(40)], "types": [3, 3] + [1] * 38,
           "merges": [], "bos": 0, "eos": 1}
    shapes = {"attn_q": (64, 64), "attn_k": (32, 64), "attn_v": (32, 64), "attn_output": (64, 64),
              "ffn_gate": (96, 64), "ffn_up": (96, 64), "ffn_down": (64, 96)}
    tensors = {"token_embd.weight": (rng.standard_normal((40, 64)).astype(np.float32), "F32"),
               "output_norm.weight": (np.ones(64, np.float32), "F32"),
               "blk.0.attn_norm.weight": (np.ones(64, np.float32), "F32"),
               "blk.0.ffn_norm.weight": (np.ones(64, np.float32), "F32")}
    for k, s in shapes.items():
        tensors[f"blk.0.{k}.weight"] = (rng.standard_normal(s).astype(np.float32), "F32")
    q_bias, k_bias = rng.standard_normal(64).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    tensors["blk.0.attn_q.bias"] = (llamacpp_permute(q_bias, 4), "F32")
    tensors["blk.0.attn_k.bias"] = (llamacpp_permute(k_bias, 2), "F32")
    tensors["blk.0.attn_v.bias"] = (np.zeros(32, np.float32), "F32")
    tensors["blk.0.attn_output.bias"] = (np.ones(64, np.float32), "F32")
    ck = read_checkpoint(write_gguf(tmp_path / "b.gguf", cfg, tensors, tok))
    assert ck.config.attention_bias and ck.config.o_bias and not ck.config.mlp_bias
    np.testing.assert_array_equal(ck.tensors["layers.0.q_bias"], q_bias)
    np.testing.assert_array_equal(ck.tensors["layers.0.k_bias"], k_bias)
    np.testing.assert_array_equal(ck.tensors["layers.0.o_bias"], np.ones(64, np.float32))


def test_qwen2_file_without_its_biases_names_them(folders, tmp_path):
    import gguf as g
    src = gguf_from_arch_folder(folders["qwen2"], tmp_path / "q.gguf", {"embed": "F32", "lm_head": "F32",
                                                                       "matrix": "F32"})
    r = g.GGUFReader(src)
    w = g.GGUFWriter(str(tmp_path / "nobias.gguf"), "qwen2")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        w.add_key_value(f.name, f.contents(), f.types[0], f.types[1] if f.types[0] == g.GGUFValueType.ARRAY
                        else None)
    for t in r.tensors:
        if not t.name.endswith("attn_q.bias"):
            w.add_tensor(t.name, np.asarray(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"nobias.gguf: missing tensors for \['layers.0.q_bias'"):
        ternlm.load(os.fspath(tmp_path / "nobias.gguf"), progress=False)
