"""ModelConfig: the one description of a model's shape that every loader produces
(Hugging Face folder, GGUF file, ternlm's own folder) and the C++ engine consumes
(cpp/model/config.cc parses its to_dict()). Checkpoint: what a loader returns.

The tensors a config implies (canonical names, shapes, roles, source names) are declared
in the tensor schema: python/ternlm/schema.py over cpp/model/schema.h.
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
        """The canonical names the engine needs, in load order (ternlm.schema)."""
        from . import schema
        return [s.name for s in schema.specs(self)]


class BF16Bits:
    """A matrix a checkpoint stores in bf16, not read yet. The converter takes its bits
    as they are (ternlm.from_bf16: no float32 copy) and then calls release(); anything
    else reads it as float32 with np.asarray (exact). Loaders subclass it."""

    shape: tuple

    def bits(self):
        """uint16 [rows, cols]: the bf16 bit patterns."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop what the bits were read from (e.g. a memory map's pages)."""

    def __array__(self, dtype=None, copy=None):
        raise NotImplementedError


@dataclass
class Checkpoint:
    """What every loader returns before conversion: the config, the tensors under
    canonical names, and the tokenizer.

    tensors[name] is either a numpy float array (f32/f16/bf16-as-float32, possibly a
    memmap view) still to be put into a format, a BF16Bits (a checkpoint's BF16 tensor,
    read as float32 by np.asarray or as bits by .bits()), or a ternlm.QuantizedMatrix
    already in one (packed BitNet weights, GGUF Q4_1, ternlm's own folder). `stored` maps
    each matrix name to the format it is stored in ("f32", "bf16", "int4", "ternary"):
    this is what weights=None ("as stored") keeps.
    """
    config: ModelConfig
    tensors: dict
    stored: dict
    tokenizer: object              # ternlm.tokenizer.Tokenizer
    source: str = ""               # path it came from, for messages
