"""ternlm's own folder format: a converted model that loads without conversion.

    folder/
      ternlm.json         {"format": "ternlm", "format_version": 1, "config": ModelConfig,
                           "matrices": {name: {"format", "shape", "group_size",
                                               "buffers": {key: safetensors tensor name}}},
                           "norms": [name, ...]}
      model.safetensors   every QuantizedMatrix's raw buffers (q.buffers(), e.g. packed
                          ternary bits + row multipliers, int4 nibbles + fp16 scale/min,
                          bf16 bits) under "<name>.<key>", and the f32 norm weights under
                          their canonical names
      tokenizer.json, tokenizer_config.json, ... copied from the source folder (or written
                          from the Tokenizer when the source was a GGUF file)

Loading memory-maps model.safetensors and hands each matrix's buffers to
QuantizedMatrix.from_buffers: no quantize, no repacking.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil

import numpy as np

from .. import schema
from ..config import Checkpoint, ModelConfig
from .jsonfile import parse_json
from .safetensors import SafetensorsFile, float32_to_bf16_bits, save_safetensors  # noqa: F401
from ..tokenizer import Tokenizer

HEADER_FILE = "ternlm.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")


def _is_ternlm_folder(folder) -> bool:
    return os.path.exists(os.path.join(folder, HEADER_FILE))


def check_save_folder(folder, force=False, source=None) -> None:
    """Raise unless `folder` may receive a saved model: it is new, an empty folder, or (with
    force) a ternlm folder, and it is not the folder `source` was loaded from. The CLI calls
    this before converting, so a refusal costs no conversion time.

    FileExistsError: a ternlm folder without force. ValueError: a file, a non-empty folder
    that is not a ternlm folder (never replaced, force or not: it may be anything of the
    user's), or the source folder (its weights are memory-mapped by the model being saved)."""
    folder = os.fspath(folder)
    if not os.path.lexists(folder):
        return
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: exists and is not a folder")
    if source and os.path.isdir(source) and os.path.samefile(folder, source):
        raise ValueError(f"{folder}: is the folder this model was loaded from (memory-mapped); "
                         "save to another folder")
    if not os.listdir(folder):
        return
    if not _is_ternlm_folder(folder):
        raise ValueError(f"{folder}: folder is not empty and is not a ternlm folder; "
                         "refusing to write into it (choose an empty or new folder)")
    if not force:
        raise FileExistsError(f"{folder}: already holds a ternlm model; replace it with force=True "
                              "(ternlm convert --force) or choose a new folder")


def save_model(model, folder, force=False):
    """Write `model` as a ternlm folder at `folder` (see check_save_folder for what may be
    there already). Everything is written into a fresh folder beside it, which then takes
    its place by rename:

        parent/.NAME.partial-<hex>/   written in full (weights, tokenizer, ternlm.json)
        parent/NAME                   absent or empty: the partial folder is renamed onto it;
                                      a ternlm folder (force): renamed aside to
                                      .NAME.old-<hex>, the new one renamed in, the old removed

    A failure or an interrupt while writing removes the partial folder and leaves `folder` as
    it was; only a kill between the two renames of a replacement can leave the old model in
    .NAME.old-<hex> with nothing at NAME."""
    folder = os.fspath(folder)
    if model._matrices is None:
        raise ValueError("this Model holds no weight objects to save (built without ternlm.load)")
    check_save_folder(folder, force, model.source)
    tmp = _sibling(folder, "partial", create=True)
    try:
        _write_folder(model, tmp)
        _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sibling(folder, tag, create):
    """An unused path .NAME.<tag>-<hex> in folder's parent (the same file system, so a
    rename is atomic), made as an empty folder when `create`."""
    parent, name = os.path.split(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    while True:
        path = os.path.join(parent, f".{name}.{tag}-{secrets.token_hex(4)}")
        if not create:
            if not os.path.lexists(path):
                return path
            continue
        try:
            os.mkdir(path)                 # the umask's permissions, as the final folder should have
            return path
        except FileExistsError:
            continue


def _move_into_place(tmp, folder):
    if not os.path.lexists(folder):
        os.rename(tmp, folder)
        return
    if not os.listdir(folder):             # empty: rename(2) replaces an empty folder on POSIX,
        os.rmdir(folder)                   # Windows needs it gone first
        os.rename(tmp, folder)
        return
    old = _sibling(folder, "old", create=False)
    os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    if os.path.islink(old):                # DST was a link: the folder it named is left alone
        os.unlink(old)
    else:
        shutil.rmtree(old, ignore_errors=True)  # a model loaded from it keeps its mapping


def _write_folder(model, folder):
    arrays, matrices, norms = {}, {}, []
    for spec in schema.specs(model.config):
        name = spec.name
        value = model._matrices[name]
        if spec.is_vector:
            arrays[name] = np.ascontiguousarray(value, dtype=np.float32)
            norms.append(name)
            continue
        bufs = value.buffers()
        entry = {"format": value.format, "shape": list(value.shape),
                 "group_size": int(getattr(value, "group_size", 0) or 0), "buffers": {}}
        for key, arr in bufs.items():
            tname = f"{name}.{key}"
            arrays[tname] = np.ascontiguousarray(arr)
            entry["buffers"][key] = tname
        matrices[name] = entry

    header = {"format": "ternlm", "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
              "context_hint": model.context, "matrices": matrices, "norms": norms}
    save_safetensors(os.path.join(folder, WEIGHTS_FILE), arrays,
                     metadata={"format": "ternlm", "format_version": str(FORMAT_VERSION)})
    _save_tokenizer(model, folder)
    with open(os.path.join(folder, HEADER_FILE), "w", encoding="utf-8") as f:
        json.dump(header, f, indent=1)


def _save_tokenizer(model, folder):
    src = model.source
    if src and os.path.isdir(src) and os.path.exists(os.path.join(src, "tokenizer.json")):
        for fname in TOKENIZER_FILES:
            p = os.path.join(src, fname)
            if os.path.exists(p):
                shutil.copyfile(p, os.path.join(folder, fname))
    else:
        model.tokenizer.save_to_folder(folder)


def _header_error(path, msg):
    return ValueError(f"{path}: {msg}")


def _matrix_entry(entry, name, hpath):
    """One "matrices" entry -> (format, (rows, cols), group_size, {buffer key: tensor name}),
    every field type-checked: a damaged ternlm.json gets a ValueError naming the field."""
    def bad(what):
        return _header_error(hpath, f"matrix {name!r}: {what}")
    if not isinstance(entry, dict):
        raise bad(f"entry must be an object, got {type(entry).__name__}")
    fmt, shape, bufs = entry.get("format"), entry.get("shape"), entry.get("buffers")
    group = entry.get("group_size") or 0
    if not isinstance(fmt, str):
        raise bad(f"format must be a string, got {fmt!r:.100}")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise bad(f"shape must be [rows, cols] of positive ints, got {shape!r:.100}")
    if not isinstance(group, int) or isinstance(group, bool) or not 0 <= group <= 1 << 16:
        raise bad(f"group_size must be a small int, got {group!r:.100}")
    if not isinstance(bufs, dict) or not all(isinstance(v, str) for v in bufs.values()):
        raise bad(f"buffers must map buffer names to tensor names, got {bufs!r:.200}")
    return fmt, tuple(shape), group, bufs


def load_own_folder(folder) -> Checkpoint:
    from ..formats import QuantizedMatrix
    folder = os.fspath(folder)
    hpath = os.path.join(folder, HEADER_FILE)
    with open(hpath, "rb") as f:
        header = parse_json(f.read(), hpath)
    if not isinstance(header, dict) or header.get("format") != "ternlm":
        raise _header_error(hpath, "not a ternlm header (missing \"format\": \"ternlm\")")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise _header_error(hpath, f"format_version {version!r:.100} is not supported by this ternlm "
                                   f"(reads version {FORMAT_VERSION})")
    for key, kind in (("config", dict), ("matrices", dict), ("norms", list)):
        if key not in header:
            raise _header_error(hpath, f"missing field {key!r}")
        if not isinstance(header[key], kind):
            raise _header_error(hpath, f"field {key!r} must be a JSON {'object' if kind is dict else 'array'}, "
                                       f"got {type(header[key]).__name__}")
    try:
        config = ModelConfig(**header["config"])
    except TypeError as e:
        raise _header_error(hpath, f"config does not describe a model ({e})") from e
    config.validate(f"{hpath}: config")
    st = SafetensorsFile(os.path.join(folder, WEIGHTS_FILE))
    schema.check_layer_count(config, len(st.keys()), hpath, "config.num_layers")
    tensors, stored = {}, {}
    matrices = header["matrices"]
    for spec in schema.specs(config):
        name = spec.name
        if spec.is_vector:
            if name not in st:
                raise _header_error(hpath, f"norm {name!r} is missing from {WEIGHTS_FILE}")
            if st.info(name).shape != tuple(spec.shape):
                raise _header_error(hpath, f"norm {name!r} has shape {list(st.info(name).shape)} in {WEIGHTS_FILE}, "
                                           f"the config implies {list(spec.shape)}")
            tensors[name] = st.raw(name)
            continue
        if name not in matrices:
            raise _header_error(hpath, f"matrix {name!r} is missing")
        fmt, shape, group, names = _matrix_entry(matrices[name], name, hpath)
        if shape != tuple(spec.shape):
            raise _header_error(hpath, f"matrix {name!r}: shape {list(shape)} does not match the config "
                                       f"(expected {list(spec.shape)})")
        try:
            bufs = {key: st.raw(tname) for key, tname in names.items()}
            tensors[name] = QuantizedMatrix.from_buffers(fmt, shape, group, bufs)
            del bufs
            for tname in names.values():  # copied: drop the mapped pages from RSS
                st.release(tname)
        except (KeyError, TypeError, ValueError) as e:
            raise _header_error(hpath, f"matrix {name!r}: {e}") from e
        stored[name] = fmt
    tok = Tokenizer.from_folder(folder)
    return Checkpoint(config=config, tensors=tensors, stored=stored, tokenizer=tok, source=folder)
