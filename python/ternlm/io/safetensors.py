"""Reading and writing the safetensors format, validated at the edge.

File layout (https://github.com/huggingface/safetensors):

    [8 bytes]  N, little-endian u64: length of the JSON header
    [N bytes]  JSON: {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}
    [rest]     the data block; offsets are relative to its start, little-endian, C order

The reader memory-maps the file and checks everything before handing out a single array:
the header length fits the file, the JSON is an object, every dtype is known, shapes are
lists of non-negative ints, dtype size x element count == end - begin, every range lies
inside the data block, and no two ranges overlap. Arrays are then zero-copy read-only
views of the mapping. BF16 has no numpy dtype: `raw()` returns it as uint16 bit patterns
and `to_float32()` widens it exactly (bf16 is the top half of an f32).

Every error is a SafetensorsError (a ValueError) naming the file and, where there is one,
the tensor.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from .jsonfile import parse_json

# safetensors dtype string -> numpy dtype of the stored bytes (BF16 kept as raw u16 bits).
DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}
_NUMPY_TO_DTYPE = {
    np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
    np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16",
    np.dtype("int8"): "I8", np.dtype("uint8"): "U8", np.dtype("uint16"): "U16",
    np.dtype("uint32"): "U32", np.dtype("uint64"): "U64", np.dtype("bool"): "BOOL",
}
MAX_HEADER_BYTES = 100 * 1024 * 1024   # same bound as the reference implementation
MAX_DIMS = 32                           # numpy's limit on an array's dimensions


class SafetensorsError(ValueError):
    """A malformed or inconsistent safetensors file; the message names file and tensor."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str          # safetensors dtype string, e.g. "BF16"
    shape: tuple
    begin: int          # byte offset inside the data block
    end: int


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns -> float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bf16 bit patterns, round to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    nan = np.isnan(x)
    out = rounded.astype(np.uint16)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return out


class SafetensorsFile:
    """One memory-mapped, validated .safetensors file."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
        except OSError as e:
            raise FileNotFoundError(f"{self.path}: cannot open safetensors file ({e.strerror})") from e
        if size < 8:
            raise SafetensorsError(f"{self.path}: file is {size} bytes, too short for the 8-byte header length")
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise SafetensorsError(
                    f"{self.path}: header length {n} does not fit in a file of {size} bytes")
            raw_header = f.read(n)
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 8 + n else None
        self._data_start = 8 + n
        self._data_size = size - 8 - n
        try:
            header = json.loads(raw_header.decode("utf-8"))
        except RecursionError:
            raise SafetensorsError(f"{self.path}: header JSON is nested too deeply to parse") from None
        except ValueError as e:     # JSONDecodeError, UnicodeDecodeError, int digit limit
            raise SafetensorsError(f"{self.path}: header is not valid UTF-8 JSON ({e})") from e
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: header is a JSON {type(header).__name__}, expected an object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise SafetensorsError(f"{self.path}: __metadata__ must map strings to strings")
        self.metadata: dict = meta
        self._infos = {name: self._check_entry(name, entry) for name, entry in header.items()}
        self._check_no_overlap()

    def _check_entry(self, name, entry) -> TensorInfo:
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise SafetensorsError(f"{where}: entry needs dtype, shape and data_offsets, got {entry!r:.200}")
        dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise SafetensorsError(f"{where}: unsupported dtype {dtype!r:.100} (known: {', '.join(DTYPES)})")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise SafetensorsError(f"{where}: shape {shape!r:.200} is not a list of at most {MAX_DIMS} "
                                   "non-negative ints")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) for o in offs) or not 0 <= offs[0] <= offs[1]):
            raise SafetensorsError(f"{where}: data_offsets {offs!r:.200} must be [begin, end] with 0 <= begin <= end")
        # Python ints: a shape like [2**64] must not overflow, it must fail the size check.
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if offs[1] - offs[0] != expected:
            raise SafetensorsError(
                f"{where}: {dtype} {shape} needs {expected} bytes but data_offsets {offs} span {offs[1] - offs[0]}")
        if offs[1] > self._data_size:
            raise SafetensorsError(
                f"{where}: data_offsets {offs} end past the data block of {self._data_size} bytes "
                "(file truncated?)")
        return TensorInfo(name, dtype, tuple(shape), offs[0], offs[1])

    def _check_no_overlap(self):
        spans = sorted((i.begin, i.end, i.name) for i in self._infos.values() if i.end > i.begin)
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise SafetensorsError(
                    f"{self.path}: tensors {n0!r} [{b0}, {e0}) and {n1!r} [{b1}, {e1}) overlap")

    # ---- access (SafetensorsFolder offers the same names, so readers take either) -----
    def keys(self) -> list:
        return list(self._infos)

    def __contains__(self, name) -> bool:
        return name in self._infos

    def info(self, name) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def raw(self, name) -> np.ndarray:
        """Zero-copy read-only view in the stored dtype (BF16 as uint16 bits)."""
        i = self.info(name)
        dt = DTYPES[i.dtype]
        count = (i.end - i.begin) // dt.itemsize
        if count == 0:
            return np.zeros(i.shape, dtype=dt)
        arr = np.frombuffer(self._mm, dtype=dt, count=count, offset=self._data_start + i.begin)
        return arr.reshape(i.shape)

    def release(self, name) -> None:
        """Drop the pages of tensor `name` from this process's resident set once it has been
        copied out (madvise MADV_DONTNEED on the read-only file mapping: the file is not
        touched, and a later read of those bytes faults them back in from the page cache).
        Loading tensor by tensor with release keeps at most one tensor's mapped pages
        resident besides the copies, instead of the whole file. No-op where unsupported."""
        i = self.info(name)
        if self._mm is None or i.end <= i.begin or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = (self._data_start + i.begin) // page * page
        end = min(len(self._mm), -(-(self._data_start + i.end) // page) * page)
        try:
            self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            pass

    def to_float32(self, name) -> np.ndarray:
        """The tensor as float32 (view for F32, exact widening copy for F16/BF16)."""
        i = self.info(name)
        a = self.raw(name)
        if i.dtype == "F32":
            return a
        if i.dtype == "BF16":
            return bf16_bits_to_float32(a)
        if i.dtype in ("F16", "F64"):
            return a.astype(np.float32)
        raise SafetensorsError(f"{self.path}: tensor {name!r} is {i.dtype}, expected a float dtype")


def _within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def shard_path(folder: str, name: str, where: str) -> str:
    """folder/name for a weights file the folder names (an index's weight_map entry, or a
    *.safetensors file listed in it), refused unless it is a relative path that stays inside
    the folder and, symlinks resolved, still lies inside it: an index naming /etc/passwd or
    ../../secret, or a shard symlinked out of the folder, is an error before the file is
    opened, so no message can show a foreign file's bytes. One exception keeps the Hugging
    Face hub cache working: its snapshot folders (<repo>/snapshots/<revision>/) hold
    symlinks into the same repository's <repo>/blobs/, which are followed."""
    if (not name or "\0" in name or os.path.isabs(name)
            or os.pardir in os.path.normpath(name).split(os.sep)):
        raise SafetensorsError(f"{where}: shard {name!r:.200} is not a file name inside {folder}")
    path = os.path.join(folder, name)
    root, real = os.path.realpath(folder), os.path.realpath(path)
    parent = os.path.dirname(root)
    blobs = (os.path.join(os.path.dirname(parent), "blobs")
             if os.path.basename(parent) == "snapshots" else None)
    if not (_within(real, root) or (blobs is not None and _within(real, blobs))):
        raise SafetensorsError(f"{where}: shard {name!r:.200} resolves to {real}, outside the model "
                               f"folder {root}; refusing to read it")
    return path


class SafetensorsFolder:
    """All tensors of a checkpoint folder: model.safetensors, or the shards named in
    model.safetensors.index.json (its weight_map says which file holds which tensor)."""

    INDEX = "model.safetensors.index.json"

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        index_path = os.path.join(self.folder, self.INDEX)
        self._where: dict[str, SafetensorsFile] = {}
        if os.path.exists(index_path):
            with open(index_path, "rb") as f:
                index = parse_json(f.read(), index_path)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise SafetensorsError(f"{index_path}: not a safetensors index with a weight_map "
                                       "(an object of tensor name -> shard file name)")
            files = {}
            for name, fname in weight_map.items():
                if fname not in files:
                    p = shard_path(self.folder, fname, index_path)
                    if not os.path.exists(p):
                        raise FileNotFoundError(f"{index_path}: shard {fname!r} (holding {name!r}) is missing")
                    files[fname] = SafetensorsFile(p)
                if name not in files[fname]:
                    raise SafetensorsError(f"{index_path}: weight_map puts {name!r} in {fname!r}, which lacks it")
                self._where[name] = files[fname]
        else:
            single = os.path.join(self.folder, "model.safetensors")
            if os.path.exists(single):
                paths = [shard_path(self.folder, "model.safetensors", self.folder)]
            else:
                paths = sorted(shard_path(self.folder, p, self.folder) for p in os.listdir(self.folder)
                               if p.endswith(".safetensors"))
            if not paths:
                hint = (" (only PyTorch .bin weights found: convert them to safetensors first)"
                        if any(p.endswith(".bin") for p in os.listdir(self.folder)) else "")
                raise FileNotFoundError(f"{self.folder}: no model.safetensors, {self.INDEX} or *.safetensors{hint}")
            for p in paths:
                st = SafetensorsFile(p)
                for name in st.keys():
                    if name in self._where:
                        raise SafetensorsError(f"{self.folder}: tensor {name!r} is in both "
                                               f"{self._where[name].path} and {p}")
                    self._where[name] = st

    def keys(self) -> list:
        return list(self._where)

    def __contains__(self, name) -> bool:
        return name in self._where

    def file_of(self, name) -> SafetensorsFile:
        try:
            return self._where[name]
        except KeyError:
            raise KeyError(f"{self.folder}: no tensor named {name!r}") from None

    def info(self, name) -> TensorInfo:
        return self.file_of(name).info(name)

    def raw(self, name) -> np.ndarray:
        return self.file_of(name).raw(name)

    def release(self, name) -> None:
        self.file_of(name).release(name)

    def to_float32(self, name) -> np.ndarray:
        return self.file_of(name).to_float32(name)


class SafetensorsWriter:
    """A safetensors file written tensor by tensor, for files larger than memory: the header
    is fixed up front from (name, dtype, shape) entries, then each tensor's data is appended
    in that order, whole or as consecutive slices along its first axis (a [vocab, hidden]
    embedding can come a block of rows at a time). close() checks that every byte came.

        with SafetensorsWriter(path, [("w", "U8", (2, 8)), ("s", "BF16", (1,))]) as w:
            w.write("w", packed)
            w.write("s", scale_bits)

    The layout is save_safetensors's: tensors contiguous in declaration order, the header
    space-padded to a multiple of 8."""

    def __init__(self, path, entries: list, metadata: dict | None = None):
        self.path = os.fspath(path)
        header, self._entries, offset = {}, [], 0
        if metadata:
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
                raise ValueError(f"{self.path}: safetensors metadata must map str to str")
            header["__metadata__"] = metadata
        for name, dtype, shape in entries:
            if dtype not in DTYPES:
                raise ValueError(f"{self.path}: tensor {name!r}: unknown safetensors dtype {dtype!r}")
            shape = tuple(int(d) for d in shape)
            nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._entries.append((name, dtype, shape, nbytes))
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)
        self._next, self._done = 0, 0       # entry being written, its bytes written so far
        self._f = open(self.path, "wb")
        self._f.write(struct.pack("<Q", len(blob)))
        self._f.write(blob)

    def write(self, name: str, arr: np.ndarray) -> None:
        """Append `arr` (the whole of tensor `name`, or its next slice along axis 0)."""
        if self._next >= len(self._entries):
            raise ValueError(f"{self.path}: tensor {name!r} written after all declared tensors")
        want, dtype, shape, nbytes = self._entries[self._next]
        arr = np.ascontiguousarray(arr)
        whole = tuple(arr.shape) == shape
        piece = len(shape) > 0 and arr.ndim == len(shape) and tuple(arr.shape[1:]) == shape[1:]
        if (name != want or arr.dtype.itemsize != DTYPES[dtype].itemsize or not (whole or piece)
                or self._done + arr.nbytes > nbytes):
            raise ValueError(f"{self.path}: expected (the next rows of) tensor {want!r} {dtype} {list(shape)}, "
                             f"got {name!r} {arr.dtype} {list(arr.shape)}")
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        self._f.write(memoryview(arr.reshape(-1)).cast("B"))
        self._done += arr.nbytes
        if self._done == nbytes:
            self._next, self._done = self._next + 1, 0

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.close()
        if self._next < len(self._entries):
            raise ValueError(f"{self.path}: tensor {self._entries[self._next][0]!r} and those after it "
                             f"were declared but not written ({self._next} of {len(self._entries)} complete)")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self._f.close()                 # keep the original error, not the incomplete-file one


def save_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Write tensors to `path`. Values are numpy arrays, or ("BF16", uint16 array) pairs for
    bf16 bit patterns. Tensors are laid out contiguously in the given order, as the
    reference implementation requires; the header is space-padded to a multiple of 8."""
    entries, arrays = [], []
    for name, value in tensors.items():
        if isinstance(value, tuple):
            dtype, arr = value
            arr = np.asarray(arr)
            if DTYPES.get(dtype) is None or arr.dtype.itemsize != DTYPES[dtype].itemsize:
                raise ValueError(f"{path}: tensor {name!r}: array {arr.dtype} cannot be stored as {dtype}")
        else:
            arr = np.asarray(value)
            dtype = _NUMPY_TO_DTYPE.get(arr.dtype)
            if dtype is None:
                raise ValueError(f"{path}: tensor {name!r}: numpy dtype {arr.dtype} has no safetensors dtype")
        entries.append((name, dtype, arr.shape))
        arrays.append((name, arr))
    with SafetensorsWriter(path, entries, metadata) as w:
        for name, arr in arrays:
            w.write(name, arr)
