"""ModelConfig: the one description of a model's shape that every loader produces
(Hugging Face folder, GGUF file, ternlm's own folder) and the C++ engine consumes.

Canonical tensor names (what loaders hand to the engine), shapes in [out, in]:
    embed                      [vocab, hidden]   token embedding
    lm_head                    [vocab, hidden]   absent when tie_word_embeddings
    norm                       [hidden]          final RMSNorm weight
    layers.{i}.attn_norm       [hidden]
    layers.{i}.q / .k / .v     [heads*head_dim | kv_heads*head_dim, hidden]
    layers.{i}.attn_sub_norm   [heads*head_dim]  BitNet only, before o
    layers.{i}.o               [hidden, heads*head_dim]
    layers.{i}.ffn_norm        [hidden]
    layers.{i}.gate / .up      [intermediate, hidden]
    layers.{i}.ffn_sub_norm    [intermediate]    BitNet only, before down
    layers.{i}.down            [hidden, intermediate]
Norm weights are float32 numpy arrays; matrices are ternlm.QuantizedMatrix.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class ModelConfig:
    arch: str                      # "llama" | "bitnet"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None, or {"rope_type": "llama3", "factor", "low_freq_factor",
    # "high_freq_factor", "original_max_position_embeddings"}
    rope_scaling: Optional[dict] = None
    max_position_embeddings: int = 4096
    hidden_act: str = "silu"       # "silu" (Llama) | "relu2" (BitNet squared ReLU)
    tie_word_embeddings: bool = False
    bos_token_id: Optional[int] = None
    eos_token_ids: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def tensor_names(self) -> list[str]:
        """The canonical names the engine needs, in load order."""
        names = ["embed"]
        for i in range(self.num_layers):
            p = f"layers.{i}."
            names += [p + "attn_norm", p + "q", p + "k", p + "v"]
            if self.arch == "bitnet":
                names.append(p + "attn_sub_norm")
            names += [p + "o", p + "ffn_norm", p + "gate", p + "up"]
            if self.arch == "bitnet":
                names.append(p + "ffn_sub_norm")
            names.append(p + "down")
        names.append("norm")
        if not self.tie_word_embeddings:
            names.append("lm_head")
        return names


@dataclass
class Checkpoint:
    """What every loader returns before conversion: the config, the tensors under
    canonical names, and the tokenizer.

    tensors[name] is either a numpy float array (f32/f16/bf16-as-float32, possibly a
    memmap view) still to be put into a format, a ternlm.io.hf.BF16Tensor (a checkpoint's
    BF16 tensor, read as float32 by np.asarray or as bits by .bits()), or a
    ternlm.QuantizedMatrix already in one (packed BitNet weights, GGUF Q4_1, ternlm's own
    folder). `stored` maps each
    matrix name to the format it is stored in ("f32", "bf16", "int4", "ternary"): this is
    what weights=None ("as stored") keeps.
    """
    config: ModelConfig
    tensors: dict
    stored: dict
    tokenizer: object              # ternlm.tokenizer.Tokenizer
    source: str = ""               # path it came from, for messages
