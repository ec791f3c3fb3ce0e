"""Random-weight BitNet b1.58 checkpoints in the Hugging Face layout, for benchmarks and tests.

    write_synthetic_bitnet(folder, "bitnet-2b")   # the exact shape of microsoft/bitnet-b1.58-2B-4T
    write_synthetic_bitnet(folder, "tiny")        # about 1 MB, for tests

The folder is what a BitNet release looks like: config.json (BitNetForCausalLM,
quantization_config {quant_method: bitnet, linear_class: autobitlinear, quantization_mode:
offline}), generation_config.json, model.safetensors, tokenizer.json. Layer matrices are
packed uint8 [ceil(out/4), in] (ternlm.io.hf.pack_bitnet_weight draws the layout) with a
bf16 weight_scale [1], the dequantization multiplier; the embedding is bf16 and tied (it is
also the output head); norms are f32. Tensor names and shapes come from the tensor schema
(ternlm.schema).

The weights are deterministic and generated one tensor at a time: each tensor has its own
numpy Generator seeded with (seed, layer, tensor), so any tensor can be regenerated alone,
in any order, without holding the model. The safetensors file is streamed tensor by tensor,
and benchmarks/write_gguf.py writes the same values as GGUF for llama.cpp by calling
ternary_matrix and embedding_rows itself.

    layer matrices   T in {-1, 0, 1} (each value with probability 1/3) times one scale per
                     tensor, s ~ 1/sqrt(in) * U(0.8, 1.2) rounded to bf16; the dense matrix
                     is W = s * T (so s is exact in bf16, f16 and as a GGUF TQ block scale).
    token embedding  N(0, 1) rounded to bf16, |x| < 2^-14 flushed to 0, so every value is
                     exact in bf16 and in f16 (a GGUF F16 copy equals the bf16 here).
    norm weights     1.0

The text they produce is nonsense: only speed and memory mean anything. The tokenizer is
byte-level with no merges (one token per byte), then BOS and EOS; ids past it (up to the
vocab size) are valid model inputs that no text encodes to. Needs numpy and tokenizers
only (no torch).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

SHAPES = {
    # microsoft/bitnet-b1.58-2B-4T config.json
    "bitnet-2b": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
                      num_attention_heads=20, num_key_value_heads=5, vocab_size=128256,
                      max_position_embeddings=4096),
    # every matrix dimension a multiple of 256, the block of GGUF's TQ1_0 / TQ2_0
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1024,
                 max_position_embeddings=1024),
}
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
BOS_ID, EOS_ID = 256, 257                 # after the 256 byte tokens

# layer matrix kind (ternlm.schema) -> its index in the seed of its generator
MATRIX_SEED_INDEX = {"q": 0, "k": 1, "v": 2, "o": 3, "gate": 4, "up": 5, "down": 6}
EMBED_SEED_TAG = 1_000_003
# Unit scale, not a trained model's ~0.02: with a small embedding, an int8 activation
# rounding tie that flips with the summation order moves the tied head's logits by ~2% of
# the largest, with unit scale by under 1% (tests compare engines and kernel targets).
EMBED_STD = 1.0
EMBED_BLOCK = 4096                        # embedding rows per generator


def _dims(shape) -> dict:
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"unknown synthetic shape {shape!r}; choose one of {sorted(SHAPES)}")
        return dict(SHAPES[shape])
    return dict(shape)


def hf_config(shape="tiny") -> dict:
    """config.json of the synthetic model of `shape` ("bitnet-2b" | "tiny" | a dict like
    SHAPES' values, e.g. dict(SHAPES["bitnet-2b"], num_hidden_layers=4))."""
    dims = _dims(shape)
    return {"architectures": ["BitNetForCausalLM"], "model_type": "bitnet",
            "max_position_embeddings": 4096, **dims,
            "head_dim": dims["hidden_size"] // dims["num_attention_heads"], "hidden_act": "relu2",
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True,
            "attention_bias": False, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
            "torch_dtype": "bfloat16",
            "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                    "quantization_mode": "offline"}}


def model_config(shape="tiny"):
    """The ternlm ModelConfig of the synthetic model (what loading its folder gives)."""
    from .io.hf import config_from_hf
    return config_from_hf(hf_config(shape), where="synthetic config.json")[0]


def _round_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> float32 holding the nearest bf16 value."""
    from .io.safetensors import bf16_bits_to_float32, float32_to_bf16_bits
    return bf16_bits_to_float32(float32_to_bf16_bits(x))


def ternary_matrix(spec, seed: int) -> tuple[np.ndarray, float]:
    """(T int8 [out, in] in {-1, 0, 1}, scale s) of the layer matrix `spec` (a
    ternlm.schema.TensorSpec with role "matrix"); its weights are W = s * T."""
    rng = np.random.default_rng([int(seed), int(spec.layer), MATRIX_SEED_INDEX[spec.kind]])
    rows, cols = spec.shape
    t = rng.integers(-1, 2, size=(rows, cols), dtype=np.int8)
    s = float(_round_to_bf16(np.float32([rng.uniform(0.8, 1.2) / math.sqrt(cols)]))[0])
    return t, s


def embedding_rows(config, seed: int, begin: int, end: int) -> np.ndarray:
    """float32 rows [begin, end) of the token embedding of a model with ModelConfig `config`
    (values exact in bf16 and f16). Generated in fixed blocks of EMBED_BLOCK rows, so any row
    range gives the same values."""
    vocab, hidden = config.vocab_size, config.hidden_size
    out = []
    for b in range(begin // EMBED_BLOCK, (end + EMBED_BLOCK - 1) // EMBED_BLOCK):
        rng = np.random.default_rng([int(seed), EMBED_SEED_TAG, b])
        first = b * EMBED_BLOCK
        rows = min(EMBED_BLOCK, vocab - first)
        e = _round_to_bf16(rng.standard_normal((rows, hidden), dtype=np.float32) * np.float32(EMBED_STD))
        e[np.abs(e) < np.float32(2.0 ** -14)] = 0.0
        out.append(e[max(begin, first) - first:min(end, first + rows) - first])
    return np.concatenate(out, axis=0)


def _tokenizer(vocab_size: int):
    """Byte-level tokenizer: the 256 byte symbols, then BOS and EOS (BOS_ID, EOS_ID)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(BOS, special=True, normalized=False),
                            AddedToken(EOS, special=True, normalized=False)])
    assert (tok.token_to_id(BOS), tok.token_to_id(EOS)) == (BOS_ID, EOS_ID)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, BOS_ID)])
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the synthetic tokenizer ({tok.get_vocab_size()})")
    return tok


def _write_weights(path: str, config, seed: int) -> None:
    """model.safetensors, streamed: at most one layer matrix or EMBED_BLOCK embedding rows
    in memory at a time."""
    from . import schema
    from .io.hf import pack_bitnet_weight
    from .io.safetensors import SafetensorsWriter, float32_to_bf16_bits
    specs = schema.specs(config)
    entries = []
    for t in specs:
        if t.role == "embedding":
            entries.append((t.hf_name, "BF16", t.shape))
        elif t.is_vector:
            entries.append((t.hf_name, "F32", t.shape))
        elif t.role == "matrix":
            entries.append((t.hf_name, "U8", ((t.shape[0] + 3) // 4, t.shape[1])))
            entries.append((t.hf_name + "_scale", "BF16", (1,)))
        else:
            raise AssertionError(f"synthetic models tie the embedding; no generator for {t.role} {t.name}")
    with SafetensorsWriter(path, entries, {"format": "pt"}) as w:
        for t in specs:
            if t.role == "embedding":
                for begin in range(0, config.vocab_size, EMBED_BLOCK):
                    end = min(config.vocab_size, begin + EMBED_BLOCK)
                    w.write(t.hf_name, float32_to_bf16_bits(embedding_rows(config, seed, begin, end)))
            elif t.is_vector:
                w.write(t.hf_name, np.ones(t.shape, np.float32))
            else:
                tern, s = ternary_matrix(t, seed)
                w.write(t.hf_name, pack_bitnet_weight(tern))
                w.write(t.hf_name + "_scale", float32_to_bf16_bits(np.float32([s])))


def write_synthetic_bitnet(folder, shape="tiny", seed=0) -> str:
    """Write a random BitNet checkpoint of `shape` ("bitnet-2b" | "tiny" | a dict like
    SHAPES' values) into `folder` (created; must not contain a config.json). Returns folder."""
    config_json = hf_config(shape)
    config = model_config(shape)
    folder = os.fspath(folder)
    if os.path.exists(os.path.join(folder, "config.json")):
        raise FileExistsError(f"{folder} already holds a model (config.json); pick an empty folder")
    tok = _tokenizer(config.vocab_size)
    os.makedirs(folder, exist_ok=True)
    _write_weights(os.path.join(folder, "model.safetensors"), config, seed)
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(config_json, fh, indent=2)
    with open(os.path.join(folder, "generation_config.json"), "w") as fh:
        json.dump({"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID]}, fh, indent=2)
    tok.save(os.path.join(folder, "tokenizer.json"))
    # written last: `ternlm bench --synthetic` takes a folder with it as complete
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as fh:
        json.dump({"bos_token": BOS, "eos_token": EOS, "tokenizer_class": "PreTrainedTokenizerFast"}, fh, indent=2)
    return folder
