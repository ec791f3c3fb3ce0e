"""ternlm.load: a checkpoint on disk -> its matrices in the chosen formats -> the C++
engine -> a Model (model.py).

    m = ternlm.load(path, weights=None, threads=None, context=4096, head=None, kv_dtype="f32",
                    max_sequences=None)

The steps, each usable alone (the CLI's convert and the tests use them):
    read_checkpoint(path)               Hugging Face folder / GGUF file / ternlm folder -> Checkpoint
    target_formats(ckpt, weights, head) matrix name -> format it will have
    convert_checkpoint(ckpt, formats)   name -> QuantizedMatrix in that format, or float32 norm
    build_engine(config, tensors, ...)  the C++ Transformer (moves the matrices' storage in)

Weight formats at load (`weights=`):
    None       every matrix as the checkpoint stores it (f32 / bf16 / packed ternary / int4);
               f16 checkpoints are kept as f32 (exact).
    "bf16"     every matrix bf16.
    "int4"     the layer matrices (q k v o gate up down) int4, group 32.
    "ternary"  the layer matrices ternary (absmean per tensor: cpp/formats/quantized_matrix.h,
               Quantize).
    "nano:<bits>"  the layer matrices as low-rank sign factors within <bits> per weight
               (0 < bits < 2; NanoQuant's 0.55, 0.8, 1.0), calibrated block by block on the
               model's own activations (python/ternlm/nano.py, cpp/formats/nano.h).
    "bf16c"    every matrix with bf16's values, bit for bit, stored in ~12 bits per weight
               (cpp/formats/bf16c.h: per 16-row tile a table of the 15 most frequent high
               bytes, a 4-bit code + the low byte per weight, the rare others kept exactly
               aside): 25% fewer bytes to read per token, logits equal to bf16's up to the
               f32 summation order.
Hybrid precision: with "int4", "ternary" and "nano" the token embedding and lm_head stay bf16 (they
are a small share of the weights of a real model but the most sensitive to quantization;
BitNet checkpoints never quantize lm_head either). `head="f32" | "bf16" | "bf16c" | "int8" |
"q6" | "int4"` overrides the format of embed and lm_head for any `weights`; "bf16c" keeps the
bf16 head's values and reads 25% fewer bytes (with a 2B ternary model the head is more than
half of the bytes decode reads per token); "int8" (8 bits, one scale per row,
cpp/formats/int8.h) and "q6" (~6.6 bits, GGUF Q6_K's numerics, cpp/formats/q6.h) are the
near-lossless small heads, "int4" (5 bits, group 32) the smallest. Which tensors are layer matrices and which are the
embedding / head is the tensor schema's role (ternlm/schema.py).

KV cache (`kv_dtype=`): "f32" (default; attention matches transformers' float32 forward) or
"f16" (IEEE half, rounded to nearest even, saturated at +-65504, as llama.cpp's default
cache): half the cache memory and half the bytes attention reads per token, which is what
decode spends beyond the weights at long context; it changes logits by about the f16
rounding of keys and values (tests/test_engine.py states the bound).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from . import schema
from .config import BF16Bits, Checkpoint, ModelConfig

WEIGHT_CHOICES = (None, "bf16", "bf16c", "int4", "ternary")
HEAD_CHOICES = (None, "f32", "bf16", "bf16c", "int8", "q6", "int4")

if TYPE_CHECKING:
    from .model import Model


def target_formats(ckpt: Checkpoint, weights, head) -> dict:
    """canonical matrix name -> format it will have after load (see module docstring);
    "nano:<bits>" names nano with its budget."""
    from .nano import parse as parse_nano
    try:
        is_nano = parse_nano(weights) is not None
    except ValueError as e:
        raise ValueError(f"weights={weights!r}: {e}") from None
    if weights not in WEIGHT_CHOICES and not is_nano:
        raise ValueError(f"weights={weights!r}: choose one of None (as stored), 'bf16', 'bf16c', 'int4', 'ternary', "
                         "'nano:<bits>' (e.g. 'nano:0.8')")
    if head not in HEAD_CHOICES:
        raise ValueError(f"head={head!r}: choose one of None, 'f32', 'bf16', 'bf16c', 'int8', 'q6', 'int4'")
    roles = {spec.name: spec.role for spec in schema.specs(ckpt.config)}
    out = {}
    for name, stored in ckpt.stored.items():
        is_head = roles.get(name) in ("embedding", "head")
        if is_head and head is not None:
            out[name] = head
        elif weights is None:
            out[name] = stored
        elif is_head:
            out[name] = "bf16c" if weights == "bf16c" else "bf16"
        else:
            out[name] = weights
    return out


def convert_checkpoint(ckpt: Checkpoint, formats: dict, progress=True, threads=None) -> dict:
    """Canonical name -> QuantizedMatrix in its target format, or float32 norm weights.
    Tensors are taken one at a time from the (lazy) checkpoint and released after use.
    progress: a bar where a person watches (ternlm.progress). threads: the pool a matrix's
    rows are quantized on (None: the process pool; ternlm.quantize)."""
    from . import formats as fm
    from .progress import progress_bar
    if any(isinstance(f, str) and f.startswith("nano:") for f in formats.values()):
        from .nano_calibrate import convert_checkpoint_nano
        return convert_checkpoint_nano(ckpt, formats, progress=progress)
    names = ckpt.config.tensor_names()
    out = {}
    bar = progress_bar(names, enabled=progress, delay=0.5, desc="loading weights", unit="tensor", leave=False)
    for name in bar:
        try:
            out[name] = _convert_one(ckpt.tensors[name], formats.get(name), fm, threads)
        except ValueError as e:
            # the codecs' value checks (NaN / Inf weights, scales, multipliers) name the
            # argument; say which file and tensor it came from
            msg = str(e)
            where = f"{ckpt.source}: " if ckpt.source and not msg.startswith(ckpt.source) else ""
            raise ValueError(f"{where}tensor {name!r}: {msg}") from e
    return out


def _convert_one(value, want, fm, threads=None):
    if want is None:                                  # norm weights
        value = np.ascontiguousarray(value, dtype=np.float32)
        if not np.all(np.isfinite(value)):
            raise ValueError("norm weight has a non-finite value (Inf or NaN)")
        return value
    if isinstance(value, BF16Bits):
        # bf16 / bf16c keep the bits; any other format is quantized from them a few rows at a
        # time over the pool (never a float32 copy of the matrix: cpp/formats/quantize.h)
        bits = np.ascontiguousarray(value.bits())
        out = (fm.from_bf16(bits, want) if want in ("bf16", "bf16c")
               else fm.quantize_bf16(bits, want, threads=threads))
        value.release()
        return out
    if isinstance(value, fm.QuantizedMatrix):
        if value.format == want:
            return value
        value = value.dequantize()
    if isinstance(value, np.ndarray) and value.dtype == np.float16:   # GGUF F16: widened row by row
        return fm.quantize(np.ascontiguousarray(value), want, threads=threads)
    return fm.quantize(np.ascontiguousarray(value, dtype=np.float32), want, threads=threads)


def read_checkpoint(path, revision=None) -> Checkpoint:
    """Any supported source -> Checkpoint (before format conversion). A Hugging Face Hub id
    ("org/name", "org/name/file.gguf"; revision: a branch, tag or commit) is resolved
    through huggingface_hub's cache first (ternlm.hub)."""
    from .hub import resolve
    path = resolve(path, revision=revision)
    if os.path.isdir(path):
        from .io.own_format import HEADER_FILE, load_own_folder
        if os.path.exists(os.path.join(path, HEADER_FILE)):
            return load_own_folder(path)
        if os.path.exists(os.path.join(path, "config.json")):
            from .io.hf import load_hf_folder
            return load_hf_folder(path)
        raise ValueError(f"{path}: neither a Hugging Face folder (config.json) nor a ternlm folder ({HEADER_FILE})")
    if path.endswith(".gguf"):
        from .io.gguf import load_gguf
        return load_gguf(path)
    raise ValueError(f"{path}: not a folder or a .gguf file")


def build_engine(config: ModelConfig, tensors: dict, context: int, threads, kv_dtype="f32",
                 max_sequences=None):
    """The C++ Transformer. It moves the storage out of every QuantizedMatrix in `tensors`
    (the Python objects are left empty), so a loaded model holds its weights once.
    max_sequences: KV-cache slots (None: as many as fit in memory, up to 8)."""
    from ._native import core
    return core.Transformer(config.to_dict(), tensors, int(context), threads, kv_dtype, max_sequences)


class EngineWeights(Mapping):
    """name -> weights of a loaded model: a copy of the matrix from the engine (which owns
    the storage; taken one at a time, e.g. by Model.save) or the float32 norm weights."""

    def __init__(self, engine, config: ModelConfig, norms: dict):
        self._engine = engine
        self._names = config.tensor_names()
        self._norms = norms

    def __getitem__(self, name):
        if name in self._norms:
            return self._norms[name]
        if name not in self._names:
            raise KeyError(name)
        return self._engine.matrix(name)

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)


DEFAULT_CONTEXT = 4096


MAX_SEQUENCES = 64      # Transformer::kMaxSequences: a decode step of all of them is one chunk


def load(path, weights=None, threads=None, context=DEFAULT_CONTEXT, head=None, progress=True,
         kv_dtype="f32", max_sequences=None, revision=None) -> Model:
    """Load a model from a Hugging Face folder, a GGUF file, a folder written by
    Model.save, or a Hugging Face Hub id ("org/name", or "org/name/file.gguf" for one GGUF
    file of a repository; revision= a branch, tag or commit): only the files ternlm reads
    are downloaded, into huggingface_hub's cache (HF_HOME, HF_HUB_OFFLINE respected; see
    ternlm/hub.py). Its matrices are converted to `weights` (see the module docstring for the
    formats and the hybrid embed/lm_head policy). threads=None uses all cores (more
    threads than cores is a TernlmWarning: they would share cores and run slower).
    context: the KV-cache length in tokens (default 4096); None = 4096 or the model's
    max_position_embeddings if that is smaller; a larger context than the model was
    trained for is allowed with a TernlmWarning. kv_dtype "f32" | "f16": the KV cache's
    element type. progress: a bar over the tensors where a person watches. max_sequences:
    how many generations run at once, each with a KV cache of `context` tokens (1..64;
    None: 8, or fewer when 8 caches of `context` tokens would not fit in physical memory;
    a larger number than fits is a ValueError naming the bytes). Caches are reserved, not
    committed: an idle slot costs address space, not memory."""
    from .hints import warn_context, warn_threads
    if context is not None and (not isinstance(context, (int, np.integer)) or context < 2):
        raise ValueError(f"context must be None or an int >= 2, got {context!r}")
    if kv_dtype not in ("f32", "f16"):
        raise ValueError(f"kv_dtype must be 'f32' or 'f16', got {kv_dtype!r}")
    if max_sequences is not None and (not isinstance(max_sequences, (int, np.integer)) or isinstance(max_sequences, bool)
                                      or not 1 <= max_sequences <= MAX_SEQUENCES):
        raise ValueError(f"max_sequences must be None or an int in [1, {MAX_SEQUENCES}], got {max_sequences!r}")
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"threads must be None or an int >= 1, got {threads!r}")
    warn_threads(threads)
    ckpt = read_checkpoint(path, revision=revision)
    trained = int(ckpt.config.max_position_embeddings or 0)
    if context is None:
        context = min(DEFAULT_CONTEXT, trained) if trained >= 2 else DEFAULT_CONTEXT
    else:
        warn_context(int(context), trained)
    formats = target_formats(ckpt, weights, head)
    tensors = convert_checkpoint(ckpt, formats, progress=progress, threads=threads)
    engine = build_engine(ckpt.config, tensors, context, threads, kv_dtype,
                          None if max_sequences is None else int(max_sequences))
    norms = {k: v for k, v in tensors.items() if k not in formats}
    from .model import Model  # model.py re-exports load: import it here, not at the top
    return Model(engine, ckpt.tokenizer, ckpt.config, formats, context, source=ckpt.source,
                 matrices=EngineWeights(engine, ckpt.config, norms))
