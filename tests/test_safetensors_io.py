"""The safetensors reader/writer: agrees with the reference library, and rejects every kind of
malformed file with an error naming the file and the tensor."""
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file as ref_load
from safetensors.torch import save_file as ref_save_torch

from ternlm.io.safetensors import (SafetensorsError, SafetensorsFile, SafetensorsFolder,
                                   SafetensorsWriter, bf16_bits_to_float32, float32_to_bf16_bits,
                                   save_safetensors)


def _write_raw(path, header: dict, data: bytes):
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


def test_writer_output_is_read_by_reference_library_and_back(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"f32": rng.standard_normal((3, 5)).astype(np.float32),
               "f16": rng.standard_normal(7).astype(np.float16),
               "u8": rng.integers(0, 255, (4, 4), dtype=np.uint8),
               "i8": rng.integers(-128, 127, 9, dtype=np.int8),
               "i64": np.arange(3, dtype=np.int64), "empty": np.zeros((0, 4), np.float32)}
    p = tmp_path / "a.safetensors"
    save_safetensors(p, tensors, metadata={"format": "ternlm"})
    ref = ref_load(str(p))
    st = SafetensorsFile(p)
    assert st.metadata == {"format": "ternlm"}
    for k, v in tensors.items():
        np.testing.assert_array_equal(ref[k], v)
        np.testing.assert_array_equal(st.raw(k), v)
        assert st.raw(k).dtype == v.dtype


def test_bf16_round_trip_matches_torch(tmp_path):
    import torch
    w = torch.randn(17, 9) * 3
    ref_save_torch({"w": w.bfloat16()}, str(tmp_path / "b.safetensors"))
    st = SafetensorsFile(tmp_path / "b.safetensors")
    assert st.info("w").dtype == "BF16"
    np.testing.assert_array_equal(st.to_float32("w"), w.bfloat16().float().numpy())
    # our f32 -> bf16 rounding is torch's (round to nearest even)
    bits = float32_to_bf16_bits(w.numpy())
    np.testing.assert_array_equal(bits, w.bfloat16().view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(bf16_bits_to_float32(bits), w.bfloat16().float().numpy())


def test_views_are_zero_copy_and_read_only(tmp_path):
    save_safetensors(tmp_path / "c.safetensors", {"x": np.arange(64, dtype=np.float32)})
    a = SafetensorsFile(tmp_path / "c.safetensors").raw("x")
    assert not a.flags.writeable and not a.flags.owndata


def test_truncated_file_names_file_and_tensor(tmp_path):
    p = tmp_path / "t.safetensors"
    save_safetensors(p, {"a": np.ones(4, np.float32), "big": np.ones((8, 8), np.float32)})
    data = p.read_bytes()
    p.write_bytes(data[:-10])
    with pytest.raises(SafetensorsError, match=r"t\.safetensors.*'big'.*truncated"):
        SafetensorsFile(p)


def test_too_short_and_bad_header_length(tmp_path):
    p = tmp_path / "s.safetensors"
    p.write_bytes(b"\x01\x02")
    with pytest.raises(SafetensorsError, match="too short"):
        SafetensorsFile(p)
    p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(SafetensorsError, match="header length"):
        SafetensorsFile(p)
    p.write_bytes(struct.pack("<Q", 4) + b"[1]x")
    with pytest.raises(SafetensorsError, match="not valid UTF-8 JSON|JSON list"):
        SafetensorsFile(p)


def test_dtype_shape_mismatch_is_named(tmp_path):
    p = tmp_path / "m.safetensors"
    _write_raw(p, {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, bytes(16))
    with pytest.raises(SafetensorsError, match=r"m\.safetensors: tensor 'w': F32 \[2, 3\] needs 24 bytes"):
        SafetensorsFile(p)


def test_unknown_dtype_and_bad_shape(tmp_path):
    p = tmp_path / "d.safetensors"
    _write_raw(p, {"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, bytes(2))
    with pytest.raises(SafetensorsError, match="'w'.*unsupported dtype 'F8_E4M3'"):
        SafetensorsFile(p)
    _write_raw(p, {"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 2]}}, bytes(2))
    with pytest.raises(SafetensorsError, match="'w'.*shape"):
        SafetensorsFile(p)


def test_offsets_outside_file_or_overlapping(tmp_path):
    p = tmp_path / "o.safetensors"
    _write_raw(p, {"a": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}, bytes(8))
    with pytest.raises(SafetensorsError, match="'a'.*end past the data block of 8 bytes"):
        SafetensorsFile(p)
    _write_raw(p, {"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
                   "b": {"dtype": "U8", "shape": [4], "data_offsets": [6, 10]}}, bytes(12))
    with pytest.raises(SafetensorsError, match="'a'.*'b'.*overlap"):
        SafetensorsFile(p)
    _write_raw(p, {"a": {"dtype": "U8", "shape": [2], "data_offsets": [5, 3]}}, bytes(8))
    with pytest.raises(SafetensorsError, match="'a'.*data_offsets"):
        SafetensorsFile(p)


def test_sharded_folder_and_missing_shard(tmp_path):
    save_safetensors(tmp_path / "s1.safetensors", {"a": np.ones(2, np.float32)})
    save_safetensors(tmp_path / "s2.safetensors", {"b": np.zeros(3, np.float16)})
    index = {"metadata": {}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    folder = SafetensorsFolder(tmp_path)
    assert sorted(folder.keys()) == ["a", "b"]
    np.testing.assert_array_equal(folder.to_float32("b"), np.zeros(3, np.float32))
    index["weight_map"]["c"] = "s3.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="s3.safetensors.*'c'"):
        SafetensorsFolder(tmp_path)
    index["weight_map"] = {"a": "s1.safetensors", "zz": "s1.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SafetensorsError, match="'zz'.*s1.safetensors"):
        SafetensorsFolder(tmp_path)


def test_streaming_writer_takes_tensors_whole_or_in_row_blocks(tmp_path):
    emb = np.arange(40, dtype=np.uint16).reshape(10, 4)
    p = tmp_path / "s.safetensors"
    with SafetensorsWriter(p, [("emb", "BF16", (10, 4)), ("w", "U8", (2, 3)), ("none", "F32", (0,))],
                           metadata={"format": "pt"}) as w:
        for begin in range(0, 10, 4):                  # blocks of 4, 4, 2 rows
            w.write("emb", emb[begin:begin + 4])
        w.write("w", np.ones((2, 3), np.uint8))
        w.write("none", np.zeros(0, np.float32))
    f = SafetensorsFile(p)
    assert f.metadata == {"format": "pt"} and f.keys() == ["emb", "w", "none"]
    np.testing.assert_array_equal(f.raw("emb"), emb)
    import torch
    from safetensors.torch import load_file
    ref = load_file(str(p))                            # the reference library reads it too
    np.testing.assert_array_equal(ref["emb"].view(torch.int16).numpy().view(np.uint16), emb)
    np.testing.assert_array_equal(ref["w"].numpy(), np.ones((2, 3), np.uint8))


def test_streaming_writer_refuses_out_of_order_wrong_shape_and_missing_tensors(tmp_path):
    entries = [("a", "F32", (4, 2)), ("b", "F32", (3,))]
    with pytest.raises(ValueError, match="expected .* tensor 'a'"):
        with SafetensorsWriter(tmp_path / "1.safetensors", entries) as w:
            w.write("b", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="'a' F32 \\[4, 2\\]"):
        with SafetensorsWriter(tmp_path / "2.safetensors", entries) as w:
            w.write("a", np.zeros((2, 3), np.float32))       # not a block of [*, 2] rows
    with pytest.raises(ValueError, match="'a' F32 \\[4, 2\\]"):
        with SafetensorsWriter(tmp_path / "3.safetensors", entries) as w:
            w.write("a", np.zeros((5, 2), np.float32))       # more rows than declared
    with pytest.raises(ValueError, match="'b' and those after it were declared but not written"):
        with SafetensorsWriter(tmp_path / "4.safetensors", entries) as w:
            w.write("a", np.zeros((4, 2), np.float32))
