"""Deterministic random BitNet b1.58 models for the side-by-side benchmark, written as a
Hugging Face BitNet folder (ternlm's input) from the same generator that write_gguf.py
uses for the GGUF files, so that every engine multiplies identical matrices.

    from bench_models import SHAPES, write_hf_bitnet_folder
    write_hf_bitnet_folder("out/hf", SHAPES["2b4t"], seed=0)

Every tensor comes from its own numpy Generator seeded with (seed, layer, tensor index),
so a writer can regenerate any tensor alone, in any order, without holding the model:

    layer matrices   T in {-1, 0, 1} (each value with probability 1/3) times one scale per
                     tensor, s ~ 1/sqrt(in) * U(0.8, 1.2) rounded to bf16; the dense matrix
                     is W = s * T (so s is exact in bf16, f16 and as a TQ block scale).
    token embedding  N(0, 0.02^2) rounded to bf16, |x| < 2^-14 flushed to 0, so every value
                     is exact in bf16 and in f16 (the GGUF F16 copy equals ternlm's bf16).
                     Tied: it is also the output head.
    norm weights     1.0 (f32)

The HF folder follows microsoft/bitnet-b1.58-2B-4T's conventions: BitNetForCausalLM,
quantization_config {quant_method: bitnet, linear_class: autobitlinear,
quantization_mode: offline}, weights packed uint8 [out/4, in] (output row i*P + p in bits
2i..2i+1 of packed row p, stored as value + 1) and `weight_scale` bf16 [1] = s (the
dequantization multiplier). Its tokenizer is a word-level vocabulary t0 .. t{vocab-1}
with no BOS/EOS, enough for a benchmark that feeds token ids.
"""
from __future__ import annotations

import functools
import json
import math
import os
import struct
from dataclasses import asdict, dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    rope_theta: float = 500000.0
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def with_layers(self, layers: int) -> "Shape":
        return replace(self, layers=int(layers))

    def to_dict(self) -> dict:
        return asdict(self)


SHAPES = {
    # microsoft/bitnet-b1.58-2B-4T
    "2b4t": Shape("2b4t", hidden=2560, ffn=6912, layers=30, heads=20, kv_heads=5, vocab=128256),
    # smoke tests: every dimension a multiple of 256 (TQ1_0/TQ2_0 blocks)
    "tiny": Shape("tiny", hidden=256, ffn=512, layers=2, heads=4, kv_heads=2, vocab=1024),
}

# canonical layer matrix -> index in the seed of its generator
MATRIX_SEED_INDEX = {"q": 0, "k": 1, "v": 2, "o": 3, "gate": 4, "up": 5, "down": 6}
EMBED_SEED_TAG = 1_000_003
EMBED_STD = 0.02


def model_config(shape: Shape):
    """The ternlm ModelConfig of the benchmark model (BitNet b1.58, tied embedding)."""
    from ternlm.config import ModelConfig
    return ModelConfig(arch="bitnet", vocab_size=shape.vocab, hidden_size=shape.hidden,
                       intermediate_size=shape.ffn, num_layers=shape.layers, num_heads=shape.heads,
                       num_kv_heads=shape.kv_heads, head_dim=shape.head_dim, rms_norm_eps=shape.rms_eps,
                       rope_theta=shape.rope_theta, hidden_act="relu2", tie_word_embeddings=True)


def tensor_specs(shape: Shape) -> list:
    """The model's tensors from ternlm's tensor schema (names in HF and GGUF, shapes, roles)."""
    from ternlm import schema
    return schema.specs(model_config(shape))


@functools.lru_cache(maxsize=None)
def _layer_shapes(shape: Shape) -> dict:
    return {s.kind: s.shape for s in tensor_specs(shape.with_layers(1)) if s.layer == 0}


def matrix_shape(shape: Shape, name: str) -> tuple:
    """[out, in] of a layer matrix."""
    return _layer_shapes(shape)[name]


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> float32 holding the nearest bf16 value (round half to even)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def ternary_matrix(shape: Shape, seed: int, layer: int, name: str) -> tuple[np.ndarray, float]:
    """(T int8 [out, in] in {-1, 0, 1}, scale s) of one layer matrix; W = s * T."""
    index = MATRIX_SEED_INDEX[name]
    rng = np.random.default_rng([int(seed), int(layer), index])
    out_rows, cols = matrix_shape(shape, name)
    t = rng.integers(-1, 2, size=(out_rows, cols), dtype=np.int8)
    s = float(round_to_bf16(np.float32([rng.uniform(0.8, 1.2) / math.sqrt(cols)]))[0])
    return t, s


def embedding_rows(shape: Shape, seed: int, begin: int, end: int) -> np.ndarray:
    """float32 rows [begin, end) of the token embedding (values exact in bf16 and f16).
    Generated in fixed blocks of 4096 rows so any row range gives the same values."""
    block = 4096
    out = []
    for b in range(begin // block, (end + block - 1) // block):
        rng = np.random.default_rng([int(seed), EMBED_SEED_TAG, b])
        rows = min(block, shape.vocab - b * block)
        e = round_to_bf16(rng.standard_normal((rows, shape.hidden), dtype=np.float32) * np.float32(EMBED_STD))
        e[np.abs(e) < np.float32(2.0 ** -14)] = 0.0
        lo, hi = max(begin, b * block) - b * block, min(end, b * block + rows) - b * block
        out.append(e[lo:hi])
    return np.concatenate(out, axis=0)


def iter_embedding_blocks(shape: Shape, seed: int, rows_per_block: int = 16384):
    for begin in range(0, shape.vocab, rows_per_block):
        yield embedding_rows(shape, seed, begin, min(shape.vocab, begin + rows_per_block))


def prompt_ids(shape: Shape, seed: int, n: int) -> list:
    """n pseudo-random token ids (the same for every engine)."""
    rng = np.random.default_rng([int(seed), 77])
    return [int(i) for i in rng.integers(3, shape.vocab, size=n)]


# ---- HF BitNet folder -----------------------------------------------------------------------
def pack_bitnet_rows(t: np.ndarray) -> np.ndarray:
    """int8 [out, in] -> uint8 [ceil(out/4), in] in Hugging Face's BitNet layout."""
    out_rows, cols = t.shape
    p = (out_rows + 3) // 4
    codes = np.ones((4 * p, cols), dtype=np.uint8)       # padding rows hold 0 (code 1)
    codes[:out_rows] = (t + 1).astype(np.uint8)
    packed = np.zeros((p, cols), dtype=np.uint8)
    for i in range(4):
        packed |= codes[i * p:(i + 1) * p] << np.uint8(2 * i)
    return packed


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    return (round_to_bf16(x).view(np.uint32) >> 16).astype(np.uint16)


class StreamingSafetensorsWriter:
    """A safetensors file written tensor by tensor: the header is fixed up front from
    (name, dtype, shape) and each tensor is then generated and appended in that order."""

    ITEMSIZE = {"U8": 1, "BF16": 2, "F16": 2, "F32": 4}

    def __init__(self, path: str, specs: list):
        self.path, self.specs, self.next = path, specs, 0
        header, offset = {}, 0
        for name, dtype, shp in specs:
            n = int(np.prod(shp)) * self.ITEMSIZE[dtype]
            header[name] = {"dtype": dtype, "shape": list(shp), "data_offsets": [offset, offset + n]}
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(blob)) + blob)

    def write(self, name: str, arr: np.ndarray):
        want, dtype, shp = self.specs[self.next]
        if name != want or tuple(arr.shape) != tuple(shp) or arr.dtype.itemsize != self.ITEMSIZE[dtype]:
            raise ValueError(f"{self.path}: expected tensor {want} {dtype} {shp}, got {name} {arr.dtype} {arr.shape}")
        self.f.write(np.ascontiguousarray(arr).tobytes())
        self.next += 1

    def close(self):
        self.f.close()
        if self.next != len(self.specs):
            raise ValueError(f"{self.path}: only {self.next} of {len(self.specs)} tensors were written")


def hf_config(shape: Shape) -> dict:
    return {
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet",
        "vocab_size": shape.vocab, "hidden_size": shape.hidden, "intermediate_size": shape.ffn,
        "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim, "hidden_act": "relu2",
        "max_position_embeddings": 4096, "rms_norm_eps": shape.rms_eps, "rope_theta": shape.rope_theta,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "attention_bias": False,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "offline"},
    }


def write_tokenizer_files(folder: str, vocab: int):
    """tokenizer.json: word level, t0 .. t{vocab-1}, split on whitespace, t0 is unknown."""
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {f"t{i}": i for i in range(vocab)}, "unk_token": "t0"},
    }
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096}, f)


def write_hf_bitnet_folder(folder: str, shape: Shape, seed: int = 0) -> str:
    """Write the model as a Hugging Face BitNet packed folder; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    tensors = tensor_specs(shape)
    specs = []
    for t in tensors:
        if t.role == "embedding":
            specs.append((t.hf_name, "BF16", t.shape))
        elif t.is_norm:
            specs.append((t.hf_name, "F32", t.shape))
        else:
            specs.append((t.hf_name, "U8", ((t.shape[0] + 3) // 4, t.shape[1])))
            specs.append((t.hf_name + "_scale", "BF16", (1,)))
    w = StreamingSafetensorsWriter(os.path.join(folder, "model.safetensors"), specs)
    try:
        for t in tensors:
            if t.role == "embedding":
                w.write(t.hf_name, np.concatenate([float32_to_bf16_bits(b) for b in iter_embedding_blocks(shape, seed)]))
            elif t.is_norm:
                w.write(t.hf_name, np.ones(t.shape, np.float32))
            else:
                tern, s = ternary_matrix(shape, seed, t.layer, t.kind)
                w.write(t.hf_name, pack_bitnet_rows(tern))
                w.write(t.hf_name + "_scale", float32_to_bf16_bits(np.float32([s])))
    finally:
        w.close()
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config(shape), f, indent=1)
    write_tokenizer_files(folder, shape.vocab)
    return folder
