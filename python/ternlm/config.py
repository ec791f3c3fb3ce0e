"""ModelConfig: the one description of a model's shape that every loader produces
(Hugging Face folder, GGUF file, ternlm's own folder) and the C++ engine consumes
(cpp/model/config.cc parses its to_dict()). Checkpoint: what a loader returns.

The tensors a config implies (canonical names, shapes, roles, source names) are declared
in the tensor schema: python/ternlm/schema.py over cpp/model/schema.h.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

# No tensor of a real model has a dimension near this; anything larger in a config is a
# damaged or hostile file (and would overflow the C++ engine's size arithmetic).
MAX_DIM = 1 << 31


def config_int(value, field: str, where: str, minimum: int = 1) -> int:
    """An integer config field: an int, or a float with an integral value (some writers
    emit 4096.0); bools, strings, NaN/Inf and values outside [minimum, MAX_DIM] are a
    ValueError naming the file and field."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value, ok = int(value), True
    if not ok or not minimum <= value <= MAX_DIM:
        raise ValueError(f"{where}: {field} must be an integer in [{minimum}, {MAX_DIM}], got {value!r}")
    return value


def config_float(value, field: str, where: str, positive: bool = True) -> float:
    """A finite number (> 0 when positive); anything else is a ValueError naming the field."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        raise ValueError(f"{where}: {field} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return float(value)


def token_ids(value, field: str, where: str) -> list:
    """A token id field (None, an int or a list of ints) as a list of ints >= 0."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [config_int(i, field, where, minimum=0) for i in items]


@dataclass
class ModelConfig:
    arch: str                      # "llama" (Llama, Qwen2, Qwen3, Mistral) | "bitnet"
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
    # Beyond Llama's blocks (each adds tensors to the schema, cpp/model/schema.cc):
    attention_bias: bool = False   # q, k, v projections have biases (Qwen2)
    qk_norm: bool = False          # per-head RMSNorm of q and k before RoPE (Qwen3)
    sliding_window: int = 0        # attend to the last sliding_window positions only (Mistral); 0: all
    # with sliding_window: the layers that attend to every position (Qwen2 / Qwen3 layer_types)
    full_attention_layers: list = field(default_factory=list)
    o_bias: bool = False           # the o projection has a bias (attention_bias on Llama, Qwen3, BitNet)
    mlp_bias: bool = False         # gate, up and down have biases (Llama's mlp_bias)
    # transformers' BitNet quantizer with use_rms_norm: each layer linear RMS-normalizes its
    # input first, with its own weight and this eps.
    linear_norm: bool = False
    linear_norm_eps: float = 1e-6
    # with linear_norm: layer linears ("layers.3.o") left float by modules_to_not_convert,
    # which take their input as it is
    plain_linears: list = field(default_factory=list)
    # Models trained with rotated / 4-bit activations (QuEST; ternlm distill --mode quest4):
    # rotate_inputs names the layer-linear inputs rotated online by a Hadamard matrix
    # ("qkv", "o", "gate_up", "down", comma-separated; their weights are stored rotated:
    # cpp/kernels/hadamard.h); activation_bits 4 quantizes every layer linear's input per
    # token to 16 levels clipped at max|x| ("absmax") or 2.5139 x RMS ("gaussian")
    # (cpp/kernels/activations.h). 8: each format's own int8 activations.
    rotate_inputs: str = ""
    activation_bits: int = 8
    activation_clip: str = "absmax"

    def validate(self, where: str) -> "ModelConfig":
        """Check every field (the C++ engine's checks, cpp/model/config.cc, plus types)
        with messages naming `where`, so a bad file fails here, before any tensor is read
        or any per-layer list is built. Returns self."""
        if self.arch not in ("llama", "bitnet"):
            raise ValueError(f"{where}: arch {self.arch!r} is not 'llama' or 'bitnet'")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            setattr(self, name, config_int(getattr(self, name), name, where))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{where}: num_heads {self.num_heads} is not a multiple of "
                             f"num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"{where}: head_dim must be even (rotate-half RoPE), got {self.head_dim}")
        self.rms_norm_eps = config_float(self.rms_norm_eps, "rms_norm_eps", where)
        self.rope_theta = config_float(self.rope_theta, "rope_theta", where)
        if self.rope_scaling is not None:
            s = self.rope_scaling
            if not isinstance(s, dict) or s.get("rope_type") != "llama3":
                raise ValueError(f"{where}: rope_scaling must be null or a llama3 rope_scaling object, got {s!r:.200}")
            for key in ("factor", "low_freq_factor", "high_freq_factor"):
                s[key] = config_float(s.get(key), f"rope_scaling.{key}", where)
            key = "original_max_position_embeddings"
            s[key] = config_int(s.get(key), f"rope_scaling.{key}", where)
            if not s["high_freq_factor"] > s["low_freq_factor"]:
                raise ValueError(f"{where}: rope_scaling.high_freq_factor must be > low_freq_factor")
        if self.hidden_act not in ("silu", "relu2"):
            raise ValueError(f"{where}: hidden_act {self.hidden_act!r} is not 'silu' or 'relu2'")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"{where}: tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}")
        for name in ("attention_bias", "qk_norm", "linear_norm", "o_bias", "mlp_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{where}: {name} must be true or false, got {getattr(self, name)!r}")
        if self.sliding_window is None:
            self.sliding_window = 0
        if self.sliding_window:
            self.sliding_window = config_int(self.sliding_window, "sliding_window", where)
        self.linear_norm_eps = config_float(self.linear_norm_eps, "linear_norm_eps", where)
        layers = self.full_attention_layers
        if not isinstance(layers, (list, tuple)):
            raise ValueError(f"{where}: full_attention_layers must be a list of layer numbers, got {layers!r:.100}")
        self.full_attention_layers = sorted({config_int(i, "full_attention_layers", where, minimum=0) for i in layers})
        if self.full_attention_layers and self.full_attention_layers[-1] >= self.num_layers:
            raise ValueError(f"{where}: full_attention_layers holds layer {self.full_attention_layers[-1]}, "
                             f"but the model has {self.num_layers}")
        plain = self.plain_linears
        kinds = ("q", "k", "v", "o", "gate", "up", "down")
        ok = isinstance(plain, (list, tuple)) and all(
            isinstance(n, str) and len(n.split(".")) == 3 and n.split(".")[0] == "layers"
            and n.split(".")[1].isdigit() and int(n.split(".")[1]) < self.num_layers and n.split(".")[2] in kinds
            for n in plain)
        if not ok:
            raise ValueError(f"{where}: plain_linears must be a list of layer linears like 'layers.0.o' "
                             f"(layers < {self.num_layers}), got {plain!r:.200}")
        self.plain_linears = sorted(set(plain))
        self._validate_activations(where)
        if self.bos_token_id is not None:
            self.bos_token_id = config_int(self.bos_token_id, "bos_token_id", where, minimum=0)
        self.eos_token_ids = token_ids(self.eos_token_ids, "eos_token_ids", where)
        return self

    def _validate_activations(self, where: str) -> None:
        sites = self.rotate_inputs
        if sites is None:
            sites = ""
        if isinstance(sites, (list, tuple)):
            sites = ",".join(sites)
        if not isinstance(sites, str):
            raise ValueError(f"{where}: rotate_inputs must be a list of names or a comma-separated string, got {sites!r:.100}")
        names = [s for s in sites.split(",") if s]
        widths = {"qkv": self.hidden_size, "o": self.num_heads * self.head_dim, "gate_up": self.hidden_size,
                  "down": self.intermediate_size}
        for name in names:
            if name not in widths:
                raise ValueError(f"{where}: rotate_inputs: {name!r} is not one of qkv, o, gate_up, down")
            if widths[name] % 16:
                raise ValueError(f"{where}: rotate_inputs: the input of {name} has {widths[name]} values, not a multiple "
                                 f"of 16 (the Hadamard rotation needs n = m * 2^k with 2^k >= 16)")
        if names and self.linear_norm:
            raise ValueError(f"{where}: rotate_inputs cannot be combined with linear_norm")
        self.rotate_inputs = ",".join(n for n in widths if n in names)
        if self.activation_bits not in (4, 8) or isinstance(self.activation_bits, bool):
            raise ValueError(f"{where}: activation_bits must be 8 or 4, got {self.activation_bits!r}")
        if self.activation_clip not in ("absmax", "gaussian") or (self.activation_bits == 8
                                                                  and self.activation_clip != "absmax"):
            raise ValueError(f"{where}: activation_clip must be 'absmax' or (with activation_bits 4) 'gaussian', "
                             f"got {self.activation_clip!r}")

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
    (ternlm.from_bf16 keeps them as bf16 / bf16c; ternlm.quantize_bf16 makes any other format
    from them a few rows at a time, never through a float32 copy of the matrix) and then
    calls release();
    anything else reads it as float32 with np.asarray (exact). Loaders subclass it."""

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

    tensors[name] is either a numpy float array (f32 or f16, possibly a memmap view; f16
    is widened by the converter a few rows at a time) still to be put into a format, a
    BF16Bits (a checkpoint's BF16 tensor,
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
