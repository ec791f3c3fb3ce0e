"""Write a distilled student as a Hugging Face folder that transformers (its BitNet quantizer)
and ternlm.load both open; optionally also as a ternlm folder.

    out/
      config.json            the teacher's config.json (or, for a GGUF teacher, the Llama
                             config it describes) + quantization_config:
                               {"quant_method": "bitnet", "linear_class": "bitlinear",
                                "quantization_mode": "offline", "modules_to_not_convert": ["lm_head"]}
      generation_config.json
      model.safetensors      per layer linear (q k v o gate up down), Hugging Face names:
                               <module>.weight        uint8 [ceil(out/4), in], 2 bits per weight
                               <module>.weight_scale  float32 [1] = s_w = 1 / mean|W|
                             transformers' BitLinear computes y = (q . T) / (s_x * weight_scale);
                             embedding, lm_head (absent when tied) and norms in bf16 (or f32)
      tokenizer.json, tokenizer_config.json, ...   copied from the teacher's folder, or
                             written from its tokenizer (GGUF)

Packed layout (transformers/integrations/bitnet.py), P = ceil(out/4) packed rows:

    packed[p, j] = (T[p, j] + 1) | (T[P + p, j] + 1) << 2 | (T[2P + p, j] + 1) << 4 | (T[3P + p, j] + 1) << 6

transformers sizes its packed buffers out // 4 rows, so it opens exports whose layer widths
are multiples of 4 (every released Llama); ternlm opens any.

The folder is written under a temporary name beside `out` and renamed into place at the end,
so `out` either does not exist or is complete.

A student of any other QuantSpec (quest.py: 4-bit weights / activations, rotated inputs)
has no Hugging Face quantization_config that runs it; it is written as a ternlm folder
(io/own_format.py, what ternlm.load maps without conversion):

    out/ternlm.json   config = the teacher's ModelConfig + the fields that make the engine
                      run the student's layer inputs as trained:
                        rotate_inputs     "qkv,o,gate_up,down" (the rotated sites; their
                                          weights below are stored rotated, W·H)
                        activation_bits   4 (per-token 4-bit grid) or 8
                        activation_clip   "gaussian" | "absmax"
    layer matrices    int4 weights: the int4 format (w = scale·q + min, q = k in 0..15)
                      with group = the largest of 128 / 64 / 32 dividing the width, every
                      group of a row holding the row's scale = step and min = -7.5·step
                      (both exact in fp16: quest.weight_step), so w = (k - 7.5)·step exactly
                      and the per-row grid needs no new format (a per-row variant would only
                      save the repeated fp16 pairs: 0.25-1 bit per weight).
                      ternary weights: the ternary format, row multiplier 1 / s_w.
    embed, lm_head    bf16 (or f32), norms float32; the teacher's tokenizer.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

QUANTIZATION_CONFIG = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline",
                       "modules_to_not_convert": ["lm_head"]}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "generation_config.json")
LAYER_MATRICES = ("q", "k", "v", "o", "gate", "up", "down")


def pack_ternary_rows(t: np.ndarray) -> np.ndarray:
    """int8 {-1, 0, 1} [out, in] -> uint8 [ceil(out/4), in] (layout in the module docstring)."""
    t = np.asarray(t)
    rows = t.shape[0]
    p = (rows + 3) // 4
    padded = np.ones((4 * p, t.shape[1]), dtype=np.uint8)          # padding rows hold 0 (code 1)
    padded[:rows] = (t + 1).astype(np.uint8)
    packed = np.zeros((p, t.shape[1]), dtype=np.uint8)
    for i in range(4):
        packed |= padded[i * p:(i + 1) * p] << (2 * i)
    return packed


def check_output_folder(path, what="out") -> None:
    """`path` must be new or an empty folder, in a writable folder. Raises before anything is written."""
    path = os.fspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise FileExistsError(f"{what} {path}: exists and is not a folder")
        if os.listdir(path):
            raise FileExistsError(f"{what} {path}: folder is not empty; choose a new or empty folder")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{what} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: cannot write in {parent}")


def hf_config(config, source_config: dict | None, float_dtype: str) -> dict:
    """config.json: the teacher's own (a Hugging Face teacher) or the one its ModelConfig implies."""
    if source_config is not None:
        cfg = dict(source_config)
    else:
        if config.arch != "llama":
            raise ValueError(f"cannot write a config.json for a {config.arch} model without the teacher's own")
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
               "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
               "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
               "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim,
               "hidden_act": config.hidden_act, "max_position_embeddings": config.max_position_embeddings,
               "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
               "rope_scaling": config.rope_scaling, "attention_bias": False, "mlp_bias": False,
               "tie_word_embeddings": config.tie_word_embeddings, "bos_token_id": config.bos_token_id,
               "eos_token_id": (config.eos_token_ids[0] if len(config.eos_token_ids) == 1
                                else list(config.eos_token_ids) or None)}
    cfg.pop("torch_dtype", None)
    cfg["dtype"] = float_dtype
    cfg["quantization_config"] = dict(QUANTIZATION_CONFIG)
    return cfg


def _tensors(config, ternary: dict, floats: dict, float_dtype: str) -> dict:
    from .. import schema
    from ..io.safetensors import float32_to_bf16_bits
    out = {}
    for spec in schema.specs(config):
        name, key = spec.name, spec.hf_name
        if name in ternary:
            t, s_w = ternary[name]
            out[key] = pack_ternary_rows(t)
            out[key.removesuffix(".weight") + ".weight_scale"] = np.asarray([s_w], dtype=np.float32)
        else:
            a = np.ascontiguousarray(floats[name], dtype=np.float32)
            out[key] = ("BF16", float32_to_bf16_bits(a)) if float_dtype == "bfloat16" else a
    return out


def write_hf_folder(out, config, ternary: dict, floats: dict, tokenizer, source: str = "",
                    float_dtype: str = "bfloat16") -> str:
    """Write the folder (module docstring). ternary: canonical name -> (T int8 [out, in], s_w)
    for every layer matrix; floats: canonical name -> float32 array for the rest; tokenizer:
    the teacher's ternlm Tokenizer; source: the teacher's path (its tokenizer files and
    config.json are copied when it is a Hugging Face folder)."""
    from ..io.safetensors import save_safetensors
    if float_dtype not in ("bfloat16", "float32"):
        raise ValueError(f"float_dtype must be 'bfloat16' or 'float32', got {float_dtype!r}")
    out = os.path.abspath(os.fspath(out))
    check_output_folder(out)
    hf_source = bool(source) and os.path.isfile(os.path.join(source, "config.json"))
    source_config = None
    if hf_source:
        with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
            source_config = json.load(f)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=os.path.dirname(out))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)               # mkdtemp's 0700 would outlive the rename
    try:
        save_safetensors(os.path.join(tmp, "model.safetensors"), _tensors(config, ternary, floats, float_dtype),
                         metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config(config, source_config, float_dtype), f, indent=2)
        copied = False
        if hf_source and os.path.exists(os.path.join(source, "tokenizer.json")):
            for fname in TOKENIZER_FILES:
                if os.path.exists(os.path.join(source, fname)):
                    shutil.copyfile(os.path.join(source, fname), os.path.join(tmp, fname))
            copied = True
        if not copied:
            tokenizer.save_to_folder(tmp)
        if not os.path.exists(os.path.join(tmp, "generation_config.json")):
            gen = {"bos_token_id": config.bos_token_id, "eos_token_id": list(config.eos_token_ids)}
            with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
                json.dump(gen, f, indent=2)
        if os.path.isdir(out):
            os.rmdir(out)                       # empty (checked above)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def int4_group(cols: int) -> int:
    for g in (128, 64, 32):
        if cols % g == 0:
            return g
    raise ValueError(f"int4 export: width {cols} is not a multiple of 32")


def write_quantized_folder(out, config, spec, quantized: dict, floats: dict, tokenizer, source: str = "",
                           float_dtype: str = "bfloat16") -> str:
    """Write a spec'd student as a ternlm folder (module docstring). quantized: canonical name
    -> Transformer.quantized_weights() entries; floats: the rest (float32)."""
    import dataclasses

    from .. import formats as fm
    from ..io.safetensors import float32_to_bf16_bits
    from ..model import Model
    if float_dtype not in ("bfloat16", "float32"):
        raise ValueError(f"float_dtype must be 'bfloat16' or 'float32', got {float_dtype!r}")
    check_output_folder(out)
    cfg = dataclasses.replace(config, **spec.config_fields()).validate(f"{out}: config")
    tensors, formats = {}, {}
    for name in cfg.tensor_names():
        if name in quantized:
            codes, unit = quantized[name]
            if spec.weights == "int4":
                step = (2 * unit).astype(np.float16)[:, None]
                g = int4_group(codes.shape[1])
                ng = codes.shape[1] // g
                scale = np.ascontiguousarray(np.repeat(step, ng, axis=1))
                low = np.ascontiguousarray(np.repeat((-7.5 * step.astype(np.float32)).astype(np.float16), ng, axis=1))
                if not np.array_equal(low.astype(np.float32), -7.5 * scale.astype(np.float32)):
                    raise ValueError(f"{name}: a row step is not exact in fp16 (quest.weight_step)")
                tensors[name], formats[name] = fm.from_int4(np.ascontiguousarray(codes), scale, low, g), "int4"
            else:
                mult = np.full(codes.shape[0], unit, dtype=np.float32)
                tensors[name], formats[name] = fm.from_ternary(np.ascontiguousarray(codes), mult), "ternary"
        elif name in ("embed", "lm_head"):
            a = np.ascontiguousarray(floats[name], dtype=np.float32)
            if float_dtype == "bfloat16":
                tensors[name], formats[name] = fm.from_bf16(float32_to_bf16_bits(a)), "bf16"
            else:
                tensors[name], formats[name] = fm.quantize(a, "f32"), "f32"
        else:
            tensors[name] = np.ascontiguousarray(floats[name], dtype=np.float32)
    Model(None, tokenizer, cfg, formats, 4096, source=source, matrices=tensors).save(out)
    return os.fspath(out)


def write_ternlm_folder(hf_folder, out) -> str:
    """The exported Hugging Face folder converted to ternlm's own folder format (as stored:
    ternary layers, bf16 embedding/head), which ternlm.load maps without conversion."""
    from ..loading import convert_checkpoint, read_checkpoint, target_formats
    from ..model import Model
    check_output_folder(out, "ternlm_out")
    ckpt = read_checkpoint(hf_folder)
    formats = target_formats(ckpt, None, None)
    tensors = convert_checkpoint(ckpt, formats, progress=False)
    Model(None, ckpt.tokenizer, ckpt.config, formats, 4096, source=ckpt.source, matrices=tensors).save(out)
    return os.fspath(out)
