"""The tensors of a model: canonical name, role, shape, fusion group and source names,
each declared once in C++ (cpp/model/schema.{h,cc}, the table the engine assembles its
weights from) and resolved here for one ModelConfig.

    for spec in schema.specs(config):     # in load order
        spec.name        "layers.3.q"           what loaders hand to the engine
        spec.kind        "q"                    the name without the layer
        spec.layer       3 (None for embed, norm, lm_head)
        spec.role        "embedding" | "head" | "norm" | "matrix" (a layer projection) | "bias"
        spec.shape       (rows, cols) or (n,) for a vector
        spec.fusion      "qkv" | "gate_up" | None, and spec.piece its index there
        spec.hf_name     "model.layers.3.self_attn.q_proj.weight"   (Hugging Face key)
        spec.gguf_name   "blk.3.attn_q.weight"                       (GGUF tensor name)

Norm weights and biases (spec.is_vector) are float32 numpy arrays; every tensor with
spec.has_format is a ternlm.QuantizedMatrix in the engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class TensorSpec:
    name: str
    kind: str
    layer: Optional[int]
    role: str
    shape: tuple
    fusion: Optional[str]
    piece: int
    hf_name: str
    gguf_name: str

    @property
    def has_format(self) -> bool:
        """Stored in a weight format (a QuantizedMatrix), not as a float vector."""
        return self.role in ("embedding", "head", "matrix")

    @property
    def is_norm(self) -> bool:
        return self.role == "norm"

    @property
    def is_vector(self) -> bool:
        """A float vector (a norm weight or a bias), not a matrix."""
        return self.role in ("norm", "bias")


def specs(config) -> list[TensorSpec]:
    """Every tensor of a model with this ModelConfig, in load order."""
    from ._native import core
    return [TensorSpec(**entry) for entry in core.tensor_schema(config.to_dict())]


def check_layer_count(config, present: int, where: str, field: str = "num_layers") -> None:
    """Refuse a layer count that the `present` tensors of a checkpoint cannot cover, before
    anything per layer is built: every layer needs its own tensors (9 for Llama), so a
    file claiming 10^9 layers fails here in microseconds instead of building a
    billion-entry name list first. Loaders call it right after reading the config."""
    import dataclasses
    # a BitLinear's input norm (kind "*_in_norm") may be absent from a checkpoint: not counted
    one = dataclasses.replace(config, num_layers=1, full_attention_layers=[], plain_linears=[])
    one_layer = [s for s in specs(one) if s.layer is not None and not s.kind.endswith("_in_norm")]
    need = config.num_layers * len(one_layer)
    if need > present:
        raise ValueError(f"{where}: {field} = {config.num_layers} needs at least {need} tensors "
                         f"({len(one_layer)} per layer), but the checkpoint holds {present}")


def by_name(config) -> dict:
    """canonical name -> TensorSpec"""
    return {s.name: s for s in specs(config)}


def by_hf_name(config) -> dict:
    """Hugging Face tensor key -> TensorSpec"""
    return {s.hf_name: s for s in specs(config)}


def by_gguf_name(config) -> dict:
    """GGUF tensor name -> TensorSpec"""
    return {s.gguf_name: s for s in specs(config)}
