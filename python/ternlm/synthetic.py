"""Random-weight BitNet checkpoints in the Hugging Face layout, for benchmarks and tests.

    write_synthetic_bitnet(folder, "bitnet-2b")   # the exact shape of microsoft/bitnet-b1.58-2B-4T
    write_synthetic_bitnet(folder, "tiny")        # a few MB, for tests

The folder is what a BitNet release looks like (config.json with quantization_config
{quant_method: bitnet, linear_class: autobitlinear, quantization_mode: offline},
generation_config.json, model.safetensors, tokenizer.json): layer matrices are packed uint8
[ceil(out/4), in] (row i*P + p in bits 2i..2i+1 of packed row p, stored as value + 1) with a
bf16 weight_scale [1] (the dequantization multiplier); embeddings and norms are bf16,
embeddings tied. The weights are random, so the text is nonsense -- only speed and memory
mean anything. The tokenizer is byte-level with no merges (one token per byte).
It needs numpy and tokenizers only (no torch).
"""
from __future__ import annotations

import json
import os

import numpy as np

SHAPES = {
    # microsoft/bitnet-b1.58-2B-4T config.json
    "bitnet-2b": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
                      num_attention_heads=20, num_key_value_heads=5, vocab_size=128256,
                      max_position_embeddings=4096),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                 max_position_embeddings=1024),
}
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"

# the 81 bytes whose four 2-bit fields are all in {0, 1, 2} (ternary value + 1)
_VALID_PACKED = np.array([b for b in range(256) if all((b >> (2 * i)) & 3 != 3 for i in range(4))],
                         dtype=np.uint8)


def _bf16_random(rng, shape, std, chunk_rows=8192) -> np.ndarray:
    """Normal(0, std) as bf16 bit patterns (uint16), generated a chunk of rows at a time so
    that a 128256 x 2560 embedding never exists in float32."""
    from .io.safetensors import float32_to_bf16_bits
    out = np.empty(shape, dtype=np.uint16)
    flat = out.reshape(shape[0], -1)
    for r in range(0, shape[0], chunk_rows):
        n = min(chunk_rows, shape[0] - r)
        flat[r:r + n] = float32_to_bf16_bits(
            rng.standard_normal((n, flat.shape[1]), dtype=np.float32) * np.float32(std))
    return out


def _bf16_const(shape, value) -> np.ndarray:
    from .io.safetensors import float32_to_bf16_bits
    return float32_to_bf16_bits(np.full(shape, value, dtype=np.float32))


def _tokenizer(vocab_size: int):
    """Byte-level tokenizer: the 256 byte symbols, then BOS and EOS (ids 256, 257)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(BOS, special=True, normalized=False),
                            AddedToken(EOS, special=True, normalized=False)])
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos)])
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the synthetic tokenizer ({tok.get_vocab_size()})")
    return tok, bos, tok.token_to_id(EOS)


def write_synthetic_bitnet(folder, shape="tiny", seed=0) -> str:
    """Write a random BitNet checkpoint of `shape` ("bitnet-2b" | "tiny" | a dict like
    SHAPES' values) into `folder` (created; must not contain a config.json). Returns folder."""
    from .io.safetensors import save_safetensors
    if isinstance(shape, str) and shape not in SHAPES:
        raise ValueError(f"unknown synthetic shape {shape!r}; choose one of {sorted(SHAPES)}")
    dims = SHAPES[shape] if isinstance(shape, str) else dict(shape)
    folder = os.fspath(folder)
    if os.path.exists(os.path.join(folder, "config.json")):
        raise FileExistsError(f"{folder} already holds a model (config.json); pick an empty folder")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, f = dims["hidden_size"], dims["intermediate_size"]
    heads, kv = dims["num_attention_heads"], dims["num_key_value_heads"]
    hd = h // heads
    tok, bos, eos = _tokenizer(dims["vocab_size"])

    def packed(out_rows, in_cols):
        # T has 2/3 non-zeros, so y ~ N(0, in * 2/3 * scale^2 * var(x)); scale keeps var ~ 1
        codes = _VALID_PACKED[rng.integers(0, len(_VALID_PACKED), size=((out_rows + 3) // 4, in_cols))]
        scale = np.float32(1.0 / np.sqrt(in_cols * 2.0 / 3.0))
        return codes, ("BF16", _bf16_const((1,), scale))

    tensors = {"model.embed_tokens.weight": ("BF16", _bf16_random(rng, (dims["vocab_size"], h), 1.0)),
               "model.norm.weight": ("BF16", _bf16_const((h,), 1.0))}
    linears = {"self_attn.q_proj": (heads * hd, h), "self_attn.k_proj": (kv * hd, h),
               "self_attn.v_proj": (kv * hd, h), "self_attn.o_proj": (h, heads * hd),
               "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}
    for i in range(dims["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = ("BF16", _bf16_const((h,), 1.0))
        tensors[p + "post_attention_layernorm.weight"] = ("BF16", _bf16_const((h,), 1.0))
        tensors[p + "self_attn.attn_sub_norm.weight"] = ("BF16", _bf16_const((heads * hd,), 1.0))
        tensors[p + "mlp.ffn_sub_norm.weight"] = ("BF16", _bf16_const((f,), 1.0))
        for module, (rows, cols) in linears.items():
            w, s = packed(rows, cols)
            tensors[p + module + ".weight"] = w
            tensors[p + module + ".weight_scale"] = s
    save_safetensors(os.path.join(folder, "model.safetensors"), tensors, {"format": "pt"})

    config = {"architectures": ["BitNetForCausalLM"], "model_type": "bitnet", **dims,
              "head_dim": hd, "hidden_act": "relu2", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
              "tie_word_embeddings": True, "bos_token_id": bos, "eos_token_id": eos,
              "torch_dtype": "bfloat16",
              "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                      "quantization_mode": "offline"}}
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
    with open(os.path.join(folder, "generation_config.json"), "w") as fh:
        json.dump({"bos_token_id": bos, "eos_token_id": [eos]}, fh, indent=2)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as fh:
        json.dump({"bos_token": BOS, "eos_token": EOS, "tokenizer_class": "PreTrainedTokenizerFast"}, fh, indent=2)
    return folder
