"""A Hugging Face config.json (+ generation_config.json) -> ModelConfig and the BitNet
quantization dict, for every architecture ternlm runs. The classes and what sets them apart
from Llama's blocks (each difference is a ModelConfig flag, and its tensors are rows of the
tensor schema, cpp/model/schema.cc):

    LlamaForCausalLM     Llama 2/3 (rope_scaling "llama3"), SmolLM2, TinyLlama, Falcon3;
                         attention_bias (q, k, v and o biases), mlp_bias (gate, up, down)
    BitNetForCausalLM    squared-ReLU MLP, attention / MLP sub-norms (arch "bitnet"); attention_bias
    Qwen2ForCausalLM     q, k, v biases (attention_bias); sliding windows per layer_types
    Qwen3ForCausalLM     per-head RMSNorm of q and k before RoPE (qk_norm); attention_bias
                         (q, k, v, o); sliding windows per layer_types
    MistralForCausalLM   sliding-window attention over the last sliding_window positions

rope parameters come either as rope_theta + rope_scaling (older files, key "type" or
"rope_type") or as rope_parameters (transformers >= 5).

quantization_config with quant_method "bitnet" (transformers' BitNetQuantConfig,
utils/quantization_config.py) turns the layer linears of any of these classes into BitNet
linears (integrations/bitnet.py): linear_class "bitlinear" | "autobitlinear",
quantization_mode "offline" | "online", modules_to_not_convert, and use_rms_norm +
rms_norm_eps (each BitLinear RMS-normalizes its input with its own weight first:
ModelConfig.linear_norm). io/hf.py reads the weights in each convention.
"""
from __future__ import annotations

from ..config import ModelConfig, config_float, config_int
from .jsonfile import id_list
from .module_names import ModulePatterns

# class -> (ModelConfig.arch, its model_type)
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", "llama"),
    "BitNetForCausalLM": ("bitnet", "bitnet"),
    "Qwen2ForCausalLM": ("llama", "qwen2"),
    "Qwen3ForCausalLM": ("llama", "qwen3"),
    "MistralForCausalLM": ("llama", "mistral"),
}
# No model has more layers; a config that claims more with per-layer windows is damaged.
MAX_WINDOW_LAYERS = 1 << 16
# transformers' config defaults where config.json may omit a field: (rope_theta, rms_norm_eps)
_DEFAULTS = {"llama": (10000.0, 1e-6), "bitnet": (500000.0, 1e-5), "qwen2": (10000.0, 1e-6),
             "qwen3": (10000.0, 1e-6), "mistral": (10000.0, 1e-6)}


def _get(d: dict, key, default):
    """d[key], or default when the key is absent or null."""
    v = d.get(key)
    return default if v is None else v


def _flag(d: dict, key, where) -> bool:
    """A true/false field (absent or null: false)."""
    v = d.get(key)
    if v is not None and not isinstance(v, bool):
        raise ValueError(f"{where}: {key} must be true or false, got {v!r:.100}")
    return bool(v)


def _object(d: dict, key, where) -> dict:
    """A field that must be a JSON object (or absent / null: {})."""
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError(f"{where}: {key} must be an object or null, got {v!r:.200}")
    return v


def _rope(cfg: dict, default_theta: float, where: str):
    """(rope_theta, rope_scaling or None) from either config.json dialect."""
    params = _object(cfg, "rope_parameters", where)
    scaling = _object(cfg, "rope_scaling", where)
    theta = config_float(_get(params, "rope_theta", _get(cfg, "rope_theta", default_theta)), "rope_theta", where)
    src = params if params.get("rope_type") else scaling
    rtype = src.get("rope_type") or src.get("type") or "default"
    if rtype == "default":
        return theta, None
    if rtype == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [k for k in keys if k not in src]
        if missing:
            raise ValueError(f"{where}: rope scaling 'llama3' lacks {', '.join(missing)}")
        out = {"rope_type": "llama3", **{k: config_float(src[k], f"rope_scaling.{k}", where) for k in keys[:3]}}
        out[keys[3]] = config_int(src[keys[3]], f"rope_scaling.{keys[3]}", where)
        return theta, out
    raise ValueError(f"{where}: rope scaling type {rtype!r:.100} is not supported (supported: default, llama3)")


def _quantization(quant, arch_name: str, where: str):
    """config.json's quantization_config -> the BitNet dict load_hf_folder uses, or None."""
    if quant is None:
        return None
    if not isinstance(quant, dict):
        raise ValueError(f"{where}: quantization_config must be an object, got {quant!r:.200}")
    method = quant.get("quant_method")
    if method != "bitnet":            # on any class: its layer linears become BitNet linears
        raise ValueError(f"{where}: quantization_config quant_method {method!r:.100} is not supported "
                         f"for {arch_name} (ternlm reads BitNet's 'bitnet' method)")
    given = quant.get("modules_to_not_convert")
    skip = given or []
    if not isinstance(skip, list) or not all(isinstance(k, str) for k in skip):
        raise ValueError(f"{where}: quantization_config.modules_to_not_convert must be a list of "
                         f"module names, got {skip!r:.200}")
    use_rms_norm = quant.get("use_rms_norm", False)
    if not isinstance(use_rms_norm, bool):
        raise ValueError(f"{where}: quantization_config.use_rms_norm must be true or false, got {use_rms_norm!r:.100}")
    out = {"linear_class": quant.get("linear_class", "bitlinear"),
           "quantization_mode": quant.get("quantization_mode", "offline"),
           "modules_to_not_convert": skip,
           "not_converted": ModulePatterns(skip, where),
           "use_rms_norm": use_rms_norm}
    # transformers skips the output head by default only when modules_to_not_convert is
    # null (get_keys_to_not_convert); a given list that does not name it converts lm_head too
    out["head_converted"] = given is not None and not out["not_converted"].matches("lm_head")
    if out["linear_class"] not in ("bitlinear", "autobitlinear"):
        raise ValueError(f"{where}: quantization_config.linear_class {out['linear_class']!r:.100} is unknown "
                         f"(transformers knows 'bitlinear' and 'autobitlinear')")
    if out["quantization_mode"] not in ("online", "offline"):
        raise ValueError(f"{where}: quantization_config.quantization_mode {out['quantization_mode']!r:.100} "
                         f"is unknown (transformers knows 'online' and 'offline')")
    if use_rms_norm:
        # BitNetQuantConfig's default; null would reach LlamaRMSNorm as eps=None, which
        # transformers cannot run either
        eps = quant.get("rms_norm_eps", 1e-6)
        out["rms_norm_eps"] = config_float(eps, "quantization_config.rms_norm_eps", where)
    return out


def _sliding_window(cfg: dict, model_type: str, layers: int, where: str):
    """(window, full-attention layers): the window sliding layers attend over (0: none) and
    the layers that see every position. Mistral applies sliding_window to every layer.
    Qwen2 / Qwen3 (their configuration's __post_init__): the window is sliding_window when
    use_sliding_window, else none; layer_types, when absent, marks layer i
    "sliding_attention" when there is a window and i >= max_window_layers; a layer marked
    sliding without a window is an error in transformers too."""
    if model_type == "mistral":
        w = cfg.get("sliding_window")
        return (0 if w is None else config_int(w, "sliding_window", where)), []
    if model_type not in ("qwen2", "qwen3"):
        return 0, []
    w = cfg.get("sliding_window") if cfg.get("use_sliding_window") else None
    w = None if w is None else config_int(w, "sliding_window", where)
    types = cfg.get("layer_types")
    if types is None:
        first = config_int(_get(cfg, "max_window_layers", 28), "max_window_layers", where, minimum=0)
        if w is None or first >= layers:
            return 0, []
        if layers > MAX_WINDOW_LAYERS:    # before a list per layer (a damaged or hostile file)
            raise ValueError(f"{where}: num_hidden_layers = {layers} with sliding windows from max_window_layers: "
                             f"more than {MAX_WINDOW_LAYERS} layers")
        return w, list(range(first))
    kinds = ("full_attention", "sliding_attention")
    if not isinstance(types, list) or len(types) != layers or not all(t in kinds for t in types):
        raise ValueError(f"{where}: layer_types must list {layers} entries (num_hidden_layers), each "
                         f"'full_attention' or 'sliding_attention', got {types!r:.200}")
    if "sliding_attention" not in types:
        return 0, []
    if w is None:
        raise ValueError(f"{where}: layer_types marks sliding_attention layers, but there is no window "
                         f"(use_sliding_window is false or sliding_window is null)")
    return w, [i for i, t in enumerate(types) if t == "full_attention"]


def config_from_hf(cfg: dict, gen: dict | None = None, where: str = "config.json",
                   gen_where: str = "generation_config.json"):
    """config.json (+ generation_config.json) -> (ModelConfig, BitNet quantization dict or None).
    Every field is type- and range-checked (ModelConfig.validate): a bad value is a
    ValueError naming the file and the field."""
    gen = gen or {}
    archs = cfg.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ValueError(f"{where}: architectures must be a list of names, got {archs!r:.200}")
    arch_name = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch_name is None:
        model_type = cfg.get("model_type")
        by_type = {t: name for name, (_, t) in SUPPORTED_ARCHITECTURES.items()}
        if archs or not isinstance(model_type, str) or model_type not in by_type:
            raise ValueError(f"{where}: architecture {archs or model_type!r:.200} is not supported "
                             f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        arch_name = by_type[model_type]
    arch, model_type = SUPPORTED_ARCHITECTURES[arch_name]

    def need(key):
        if key not in cfg or cfg[key] is None:
            raise ValueError(f"{where}: missing required field {key!r} for {arch_name}")
        return config_int(cfg[key], key, where)

    hidden, heads = need("hidden_size"), need("num_attention_heads")
    kv_heads = config_int(_get(cfg, "num_key_value_heads", heads), "num_key_value_heads", where)
    head_dim = config_int(_get(cfg, "head_dim", hidden // heads), "head_dim", where)
    if heads % kv_heads:
        raise ValueError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    # attention_bias: q/k/v and o biases on Llama, BitNet and Qwen3; Qwen2 has q/k/v biases
    # whatever it says, Mistral none. mlp_bias: Llama's MLP only (the other classes ignore it).
    all_biases = model_type in ("llama", "bitnet", "qwen3") and _flag(cfg, "attention_bias", where)
    mlp_bias = model_type == "llama" and _flag(cfg, "mlp_bias", where)
    act = cfg.get("hidden_act", "relu2" if arch == "bitnet" else "silu")
    if act != ("relu2" if arch == "bitnet" else "silu"):
        raise ValueError(f"{where}: hidden_act {act!r:.100} is not supported for {arch_name}")
    default_theta, default_eps = _DEFAULTS[model_type]
    theta, scaling = _rope(cfg, default_theta, where)
    quant = _quantization(cfg.get("quantization_config"), arch_name, where)
    layers = need("num_hidden_layers")

    window, full_layers = _sliding_window(cfg, model_type, layers, where)
    eos = []
    for v in (id_list(cfg.get("eos_token_id"), "eos_token_id", where),
              id_list(gen.get("eos_token_id"), "eos_token_id", gen_where)):
        eos += [i for i in v if i not in eos]
    bos = cfg.get("bos_token_id", gen.get("bos_token_id"))
    mc = ModelConfig(
        arch=arch, vocab_size=need("vocab_size"), hidden_size=hidden,
        intermediate_size=need("intermediate_size"), num_layers=layers,
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=config_float(_get(cfg, "rms_norm_eps", default_eps), "rms_norm_eps", where),
        rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=config_int(_get(cfg, "max_position_embeddings", 4096), "max_position_embeddings",
                                           where),
        hidden_act=act, tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=None if bos is None else config_int(bos, "bos_token_id", where, minimum=0), eos_token_ids=eos,
        attention_bias=model_type == "qwen2" or all_biases, o_bias=all_biases, mlp_bias=mlp_bias,
        qk_norm=model_type == "qwen3", sliding_window=window, full_attention_layers=full_layers,
        linear_norm=bool(quant and quant["use_rms_norm"]),
        linear_norm_eps=quant["rms_norm_eps"] if quant and quant["use_rms_norm"] else 1e-6)
    return mc.validate(where), quant
