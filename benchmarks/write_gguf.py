"""GGUF files for the side-by-side benchmark (gguf package; no llama.cpp tools needed).

1. The random BitNet model of ternlm.synthetic, llama.cpp architecture "bitnet", with the
   layer matrices W = s * T in one of TQ2_0, TQ1_0, Q4_0, F16, BF16. The token embedding
   (tied: also the output head) is F16 for every format but BF16 (where it is BF16), the
   same bytes per head row as ternlm's bf16 head. Norms are F32. No `.scale` tensors: the
   per-tensor scale is folded into the weights (a TQ block scale is then exactly s), so
   llama.cpp multiplies the same matrices as ternlm reads from write_synthetic_bitnet's
   folder with the same shape and seed.
2. A dequantized copy of an existing GGUF (e.g. the default SmolLM2 Q4_1 file) with every
   quantized matrix turned into F16 or BF16 and all metadata kept.

    python benchmarks/write_gguf.py bitnet OUT.gguf --format TQ2_0 [--shape bitnet-2b] [--layers N] [--seed 0]
    python benchmarks/write_gguf.py dequantize IN.gguf OUT.gguf --format F16

llama.cpp needs a vocabulary; the bitnet files carry a SentencePiece-style ("llama") one:
<unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, then t{i} up to the vocab size
(the benchmark feeds token ids, so only its size matters).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from gguf.quants import quantize, dequantize

from ternlm import schema
from ternlm.synthetic import SHAPES, embedding_rows, model_config, ternary_matrix

LAYER_FORMATS = {"TQ2_0": QT.TQ2_0, "TQ1_0": QT.TQ1_0, "Q4_0": QT.Q4_0, "F16": QT.F16, "BF16": QT.BF16}
# llama_ftype numbers for general.file_type (llama.h)
FILE_TYPES = {"F16": 1, "Q4_0": 2, "BF16": 32, "TQ1_0": 36, "TQ2_0": 37}


def _encode(arr: np.ndarray, qtype: QT) -> np.ndarray:
    """float32 [rows, cols] -> the array GGUFWriter stores (f16 for F16, uint8 bytes else)."""
    if qtype == QT.F16:
        return arr.astype(np.float16)
    if qtype == QT.F32:
        return arr.astype(np.float32)
    return quantize(arr, qtype)


def _tensor_info(writer, name: str, shape: tuple, qtype: QT):
    """Declare a tensor of logical numpy shape [rows, cols] stored as qtype."""
    if qtype in (QT.F32, QT.F16):
        dtype = np.float32 if qtype == QT.F32 else np.float16
        writer.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
        return
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        raise ValueError(f"{name}: row length {shape[-1]} is not a multiple of the {qtype.name} block ({block})")
    byte_shape = (*shape[:-1], shape[-1] // block * type_size)
    writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)


def _add_spm_vocab(writer, vocab: int):
    if vocab < 3 + 256 + 1:
        raise ValueError(f"vocab {vocab} is too small for the benchmark's SentencePiece vocabulary (needs >= 260)")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256            # unknown, control, control, byte
    tokens += [f"t{i}" for i in range(len(tokens), vocab)]
    types += [1] * (vocab - len(types))      # normal
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(vocab - 259)])
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)


def write_bitnet_gguf(path: str, shape, fmt: str, seed: int = 0) -> str:
    """The ternlm.synthetic random BitNet model of `shape` (a name in SHAPES or a dict like
    its values) and `seed` as one GGUF file with layer matrices in `fmt`."""
    if fmt not in LAYER_FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(LAYER_FORMATS)}")
    qtype = LAYER_FORMATS[fmt]
    embed_type = QT.BF16 if fmt == "BF16" else QT.F16
    cfg = model_config(shape)
    tmp = path + ".part"
    w = gguf.GGUFWriter(tmp, "bitnet")
    w.add_name(f"ternlm-synthetic-bitnet-h{cfg.hidden_size}-{cfg.num_layers}l-seed{seed}-{fmt}")
    w.add_file_type(FILE_TYPES[fmt])
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    _add_spm_vocab(w, cfg.vocab_size)

    # Declare every tensor first (header + tensor infos), then stream the data in that order.
    # Names and shapes from ternlm's tensor schema (llama.cpp's "bitnet" names).
    plan = [(t, embed_type if t.role == "embedding" else QT.F32 if t.is_norm else qtype)
            for t in schema.specs(cfg)]
    for t, qt in plan:
        _tensor_info(w, t.gguf_name, t.shape, qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t, qt in plan:
        if t.role == "embedding":
            data = _encode(embedding_rows(cfg, seed, 0, cfg.vocab_size), qt)
        elif t.is_norm:
            data = np.ones(t.shape, dtype=np.float32)
        else:
            tern, s = ternary_matrix(t, seed)
            data = _encode(tern.astype(np.float32) * np.float32(s), qt)
        w.write_tensor_data(data)
    w.close()
    os.replace(tmp, path)
    return path


def write_dequantized_gguf(src: str, dst: str, fmt: str = "F16") -> str:
    """Copy `src` with every quantized tensor dequantized to F16 or BF16 (F32/F16/BF16
    tensors and all metadata kept as they are)."""
    if fmt not in ("F16", "BF16"):
        raise ValueError(f"format {fmt!r}: choose F16 or BF16")
    target = QT.F16 if fmt == "F16" else QT.BF16
    reader = gguf.GGUFReader(src)
    arch = reader.get_field("general.architecture")
    if arch is None:
        raise ValueError(f"{src}: no general.architecture")
    arch_name = arch.contents()
    tmp = dst + ".part"
    w = gguf.GGUFWriter(tmp, arch_name)
    skip = {"general.architecture", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.file_type"}
    for field in reader.fields.values():
        if field.name in skip:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    w.add_file_type(FILE_TYPES[fmt])

    plan = []
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))       # numpy order [rows, cols]
        keep = t.tensor_type in (QT.F32, QT.F16, QT.BF16)
        plan.append((t, shape, t.tensor_type if keep else target))
        _tensor_info(w, t.name, shape, t.tensor_type if keep else target)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t, shape, qt in plan:
        if qt == t.tensor_type:
            data = np.asarray(t.data)
        else:
            data = _encode(dequantize(np.asarray(t.data), t.tensor_type).reshape(shape), qt)
        w.write_tensor_data(data)
    w.close()
    os.replace(tmp, dst)
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bitnet", help="the random BitNet benchmark model")
    b.add_argument("out")
    b.add_argument("--format", default="TQ2_0", choices=list(LAYER_FORMATS))
    b.add_argument("--shape", default="bitnet-2b", choices=list(SHAPES))
    b.add_argument("--layers", type=int, default=None)
    b.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("dequantize", help="a GGUF file with its quantized matrices in F16/BF16")
    d.add_argument("src")
    d.add_argument("out")
    d.add_argument("--format", default="F16", choices=["F16", "BF16"])
    args = ap.parse_args(argv)
    if args.cmd == "bitnet":
        shape = dict(SHAPES[args.shape], num_hidden_layers=args.layers) if args.layers else args.shape
        write_bitnet_gguf(args.out, shape, args.format, args.seed)
    else:
        write_dequantized_gguf(args.src, args.out, args.format)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
