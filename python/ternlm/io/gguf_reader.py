"""A validating reader of the GGUF container (header, metadata, tensor table), with tensor
data memory-mapped.

The `gguf` package's GGUFReader builds a numpy view per metadata element; for a vocabulary
of 49k tokens + 49k merges that takes seconds. This reader parses the header from bytes
in one pass (~0.1 s) and keeps using the `gguf` package for type constants and
dequantization.

Layout (little-endian, GGUF v2/v3):
    "GGUF" u32 version, u64 n_tensors, u64 n_kv
    n_kv x   [string key][u32 value type][value]         string = u64 length + UTF-8 bytes
             array value = [u32 element type][u64 count][elements]
    n_tensors x [string name][u32 n_dims][u64 ne[n_dims]][u32 ggml type][u64 offset]
    padding to `general.alignment` (default 32), then tensor data; offsets are relative
    to the start of the data section. ne[0] is the fastest-moving (column) dimension.

GGML type ids that the `gguf` package does not know, or knows under another meaning, in the
files of bitnet.cpp (microsoft/BitNet's llama.cpp fork): 36 I2_S (a ternary matrix in
rows * cols / 4 bytes, then a 32-byte tail holding its f32 scale; decoded in
gguf_tensors.py), 37 I8_S (its activation type, never a stored weight), 38 TL1 and, in files of
its architectures, 39 TL2 (ggml's MXFP4 elsewhere): lookup-table layouts generated per model
and kernel configuration and not recorded in the file, refused with a message naming them.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import numpy as np

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
       7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
STRING, ARRAY = 8, 9
MAX_ARRAY_NESTING = 8        # llama.cpp writes flat arrays; deeper nesting is a damaged file
MAX_TENSOR_ELEMENTS = 1 << 48
BITNET_CPP_ARCHS = ("bitnet", "bitnet-25", "bitnet-b1.58")


@dataclass(frozen=True)
class BitnetCppType:
    """A GGML type of bitnet.cpp's fork (the `gguf` package's enum lacks it); has .name like
    gguf.GGMLQuantizationType."""
    name: str
    value: int


I2_S = BitnetCppType("I2_S", 36)
_TABLE_TYPES = {37: "I8_S", 38: "TL1", 39: "TL2"}


@dataclass
class GGUFTensor:
    name: str
    tensor_type: object          # gguf.GGMLQuantizationType, or I2_S
    shape: tuple                 # ggml ne: (cols, rows, ...)
    data: np.ndarray             # rows x bytes-per-row uint8 (quantized/BF16), typed [rows, cols] (F32/F16),
                                 # or for I2_S the tensor's bytes (packed weights + 32-byte tail)


class GGUFFile:
    """fields: metadata key -> Python value (int, float, bool, str, or list); tensors: list of
    GGUFTensor in file order. Raises ValueError naming the file and what is wrong."""

    def __init__(self, path):
        import gguf
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        buf = memoryview(self._mm)
        self._buf, self._pos, self._size = buf, 0, size
        if size < 24 or bytes(buf[:4]) != b"GGUF":
            raise ValueError(f"{self.path}: not a GGUF file (magic {bytes(buf[:4])!r})")
        self._pos = 4
        version = self._scalar(4)
        if version not in (2, 3):
            raise ValueError(f"{self.path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = self._scalar(10), self._scalar(10)
        if n_tensors > size // 8 or n_kv > size // 8:
            raise ValueError(f"{self.path}: header claims {n_tensors} tensors and {n_kv} metadata keys")
        self.fields = {}
        for _ in range(n_kv):
            key = self._string()
            vtype = self._scalar(4)
            self.fields[key] = self._value(vtype, key)
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar(4)
            if not 1 <= n_dims <= 4:
                raise ValueError(f"{self.path}: tensor {name} has {n_dims} dimensions")
            ne = tuple(self._scalar(10) for _ in range(n_dims))
            ttype, offset = self._scalar(4), self._scalar(10)
            infos.append((name, ne, ttype, offset))
        align = self.fields.get("general.alignment", 32)
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise ValueError(f"{self.path}: general.alignment {align!r:.100} is not a power of two")
        data_start = (self._pos + align - 1) // align * align
        self.data_offset = data_start
        self.tensors, seen = [], set()
        bitnet_cpp = self.fields.get("general.architecture") in BITNET_CPP_ARCHS
        for name, ne, ttype, offset in infos:
            if name in seen:
                raise ValueError(f"{self.path}: tensor {name} appears twice")
            seen.add(name)
            qtype = self._tensor_type(name, ttype, bitnet_cpp)
            if 0 in ne or math.prod(ne) > MAX_TENSOR_ELEMENTS:
                raise ValueError(f"{self.path}: tensor {name} has shape {list(ne)} (every dimension must be "
                                 f"at least 1, at most 2^48 elements)")
            rows = math.prod(ne[1:])
            if qtype is I2_S:
                if ne[0] % 4:
                    raise ValueError(f"{self.path}: tensor {name}: I2_S row length {ne[0]} is not a multiple of 4")
                row_bytes, nbytes = None, rows * ne[0] // 4 + 32
            else:
                block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
                if ne[0] % block:
                    raise ValueError(f"{self.path}: tensor {name}: row length {ne[0]} is not a multiple of "
                                     f"the {qtype.name} block size {block}")
                row_bytes = ne[0] // block * block_bytes
                nbytes = rows * row_bytes
            start = data_start + offset
            if offset % align or start + nbytes > size:
                raise ValueError(f"{self.path}: tensor {name} ({qtype.name} {list(ne)}) at offset {offset} "
                                 f"does not fit in the file ({size} bytes)")
            raw = self._mm[start:start + nbytes]
            if row_bytes is None:
                data = raw
            elif qtype.name in ("F32", "F16"):
                data = raw.view(np.float32 if qtype.name == "F32" else np.float16).reshape(rows, ne[0])
            else:
                data = raw.reshape(rows, row_bytes)
            self.tensors.append(GGUFTensor(name, qtype, ne, data))
        self._buf = None

    def _tensor_type(self, name, ttype, bitnet_cpp):
        import gguf
        if ttype == I2_S.value:
            return I2_S
        if ttype in _TABLE_TYPES and (ttype != 39 or bitnet_cpp):
            kind = _TABLE_TYPES[ttype]
            if kind == "I8_S":
                raise ValueError(f"{self.path}: tensor {name} has bitnet.cpp's type I8_S (GGML type id 37), its "
                                 f"activation type, which a model file does not hold")
            raise ValueError(f"{self.path}: tensor {name} has bitnet.cpp's type {kind} (GGML type id {ttype}): "
                             f"a lookup-table layout generated per model and kernel configuration "
                             f"(bitnet.cpp's codegen_{kind.lower()}.py), not recorded in the file, so ternlm "
                             f"cannot read it; use the I2_S file of the model (ggml-model-i2_s.gguf) or its "
                             f"Hugging Face checkpoint")
        try:
            return gguf.GGMLQuantizationType(ttype)
        except ValueError:
            raise ValueError(f"{self.path}: tensor {name} has unknown GGML type id {ttype}") from None

    # ---- primitive reads, bounds-checked -------------------------------------------------------
    def _take(self, n):
        if n < 0 or self._pos + n > self._size:
            raise ValueError(f"{self.path}: truncated GGUF header (needs {n} bytes at offset {self._pos})")
        b = self._buf[self._pos:self._pos + n]
        self._pos += n
        return b

    def _scalar(self, vtype):
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _string(self):
        n = self._scalar(10)
        try:
            return bytes(self._take(n)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: metadata string at offset {self._pos - n} is not UTF-8 ({e})") from e

    def _value(self, vtype, key, depth=0):
        if vtype in _SCALARS:
            return self._scalar(vtype)
        if vtype == STRING:
            return self._string()
        if vtype == ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise ValueError(f"{self.path}: metadata {key!r}: arrays nested more than "
                                 f"{MAX_ARRAY_NESTING} deep")
            etype, count = self._scalar(4), self._scalar(10)
            if etype in _NP:
                item = np.dtype(_NP[etype]).itemsize
                arr = np.frombuffer(self._take(count * item), dtype=np.dtype(_NP[etype]).newbyteorder("<"))
                return arr.tolist()
            if etype == STRING:
                return [self._string() for _ in range(count)]
            if etype == ARRAY:
                return [self._value(ARRAY, key, depth + 1) for _ in range(count)]
            vtype = etype
        raise ValueError(f"{self.path}: metadata {key!r:.100} has unknown value type {vtype}")
