"""Hostile and damaged model files (issue 18, items 5, 6, 8 and the loader half of 10):
each bad file is built here from a tiny valid one, and each must fail fast with a
ValueError / TypeError / FileNotFoundError naming the file and the field -- no hang, no
allocation sized by the file's claims, no traceback of another type, no foreign file's
bytes in a message. The catalogue is tests/BAD_INPUTS.md."""
import json
import os
import struct
import time
import tracemalloc

import numpy as np
import pytest

import ternlm
from conftest import copy_folder as _copy, edit_json as _edit_json
from ternlm.io.hf import _converted_by_bitnet, config_from_hf
from ternlm.io.module_names import ModulePatterns
from ternlm.io.safetensors import SafetensorsError, SafetensorsFile, SafetensorsFolder, save_safetensors
from ternlm.loading import read_checkpoint

from test_hf_loader import TINYLLAMA


def _raises_fast(exc, match, fn, seconds=1.0):
    """fn() raises exc matching `match` within `seconds`, with bounded Python memory."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(exc, match=match) as info:
            fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < seconds
    assert peak < 64 << 20, f"peak Python memory {peak >> 20} MiB"
    return info.value


@pytest.mark.parametrize("value", [[1], {}, 7])
def test_a_model_type_that_is_not_a_string_is_named(llama_folders, tmp_path, value):
    """Found by the fuzzer: a list model_type reached a set lookup (TypeError: unhashable)."""
    d = _copy(llama_folders["gqa_f32"], tmp_path / "m")
    _edit_json(d / "config.json", lambda c: c.update(model_type=value))
    with pytest.raises(ValueError, match=r"config\.json: model_type must be a string"):
        read_checkpoint(d)

# ---- 5: layer counts and sizes the tensors present cannot back --------------------------------------
def test_huge_num_hidden_layers_fails_before_any_per_layer_list(llama_folders, tmp_path):
    d = _copy(llama_folders["gqa_f32"], tmp_path / "m")
    _edit_json(d / "config.json", lambda c: c.update(num_hidden_layers=10**9))
    _raises_fast(ValueError, r"config\.json: num_hidden_layers = 1000000000 needs at least 9000000000 tensors",
                 lambda: read_checkpoint(d))


def test_huge_saved_num_layers_fails_fast(saved_int4, tmp_path):
    d = _copy(saved_int4, tmp_path / "s")
    _edit_json(d / "ternlm.json", lambda h: h["config"].update(num_layers=10**9))
    _raises_fast(ValueError, r"ternlm\.json: config\.num_layers = 1000000000 needs", lambda: read_checkpoint(d))


def test_huge_gguf_block_count_fails_fast(tmp_path):
    path = _gguf(tmp_path / "m.gguf", layers=10**9)
    _raises_fast(ValueError, r"m\.gguf: llama\.block_count = 1000000000 needs", lambda: read_checkpoint(path))


@pytest.mark.parametrize("field, value, message", [
    ("vocab_size", 10**12, r"vocab_size must be an integer in \[1, 2147483648\], got 1000000000000"),
    ("vocab_size", 2**31 - 1, r"model.embed_tokens.weight.*does not match config\.json"),
    ("hidden_size", 2**31 - 64, r"does not match config\.json"),
    ("intermediate_size", 2**30, r"does not match config\.json"),
])
def test_sizes_the_tensors_cannot_match(llama_folders, tmp_path, field, value, message):
    d = _copy(llama_folders["gqa_f32"], tmp_path / "m")
    _edit_json(d / "config.json", lambda c: c.update({field: value}))
    _raises_fast(ValueError, message, lambda: read_checkpoint(d))


def test_gguf_head_dim_is_checked_against_rope_freqs_before_use(tmp_path):
    # key_length 2^30 once sized a 4 GiB frequency table before any shape was compared
    w = _gguf_weights()
    w["rope_freqs.weight"] = (np.ones(32, np.float32), "F32")
    path = _gguf(tmp_path / "m.gguf", weights=w, extra={"llama.attention.key_length": 2**30})
    _raises_fast(ValueError, r"m\.gguf: rope_freqs is F32 with 32 entries \(expected F32 or F16 with 536870912",
                 lambda: read_checkpoint(path))


# ---- 6: modules_to_not_convert is matched, never run as a regex -------------------------------------
def _bitnet_config(skip):
    cfg = {**TINYLLAMA, "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "relu2",
           "quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear",
                                   "modules_to_not_convert": skip}}
    return config_from_hf(cfg, where="m/config.json")


@pytest.mark.parametrize("pattern", ["(", "(a*)*b", "a{2,}", "x(?=y)", r"\1", "[a-", "a**"])
def test_regex_syntax_outside_module_patterns_is_a_clear_error(pattern):
    with pytest.raises(ValueError, match=r"m/config\.json: quantization_config\.modules_to_not_convert entry"):
        _bitnet_config([pattern])


def test_backtracking_pattern_cannot_hang_the_load(bitnet_folders, tmp_path):
    # Python's re needs ~n^12 steps for this against a module name; the automaton is linear
    d = _copy(bitnet_folders["bitlinear"], tmp_path / "m")
    _edit_json(d / "config.json", lambda c: c["quantization_config"].update(
        modules_to_not_convert=["lm_head", ".*" * 12 + "x"]))
    t0 = time.perf_counter()
    ck = read_checkpoint(d)
    assert time.perf_counter() - t0 < 5
    assert set(ck.stored.values()) >= {"ternary"}


def test_module_patterns_match_like_transformers():
    import inspect

    from transformers.quantizers.quantizers_utils import should_convert_module
    if "boundary" not in inspect.getsource(should_convert_module):
        # Older transformers (e.g. 5.17) matched a plain prefix ("layer.1" also skipped
        # "layer.11"); ternlm follows the module-boundary rule of the current one.
        pytest.skip("this transformers predates the module-boundary rule ternlm follows")
    layers = [f"model.layers.{i}.{m}" for i in (0, 1, 2, 10, 11, 12)
              for m in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")]
    patterns = ["lm_head", "model.layers.1", "model.layers.1.mlp", "model.layers.*.mlp", "layers.*.mlp",
                "mlp.gate", "down_proj", "model.layers.[0-2].self_attn", r"model.layers.\d+.mlp.down_proj",
                r"model\.layers\.1\d", "^model.layers.2$", "q_proj|o_proj", ".*", "model.layers.1.+", "",
                "model.layers.[^0-5]", "model.*?mlp", "model.layers.1?1", "[.]", r"model.layers.\w+.mlp", "."]
    for p in patterns:
        ours = ModulePatterns([p], "x")
        for name in layers:
            assert (not ours.matches(name)) == should_convert_module(name, [p]), (p, name)
    assert not _converted_by_bitnet("lm_head", _bitnet_config([])[1])
    quant = _bitnet_config(["model.layers.1.mlp"])[1]
    assert not _converted_by_bitnet("model.layers.1.mlp.up_proj", quant)
    assert _converted_by_bitnet("model.layers.11.mlp.up_proj", quant)


# ---- 8: shards stay inside the model folder ---------------------------------------------------------------
SECRET = b"SECRET!!" + bytes(64)


def _sharded(tmp_path, shard_name):
    d = tmp_path / "model"
    d.mkdir()
    save_safetensors(d / "s1.safetensors", {"a": np.ones(2, np.float32)})
    index = {"weight_map": {"a": "s1.safetensors", "b": shard_name}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


@pytest.mark.parametrize("name", ["../foreign.bin", "/etc/passwd", "sub/../../foreign.bin", "", "a\0b"])
def test_index_naming_a_path_outside_the_folder_is_refused_unread(tmp_path, name):
    (tmp_path / "foreign.bin").write_bytes(SECRET)
    d = _sharded(tmp_path, name)
    e = _raises_fast(SafetensorsError, r"model\.safetensors\.index\.json: shard .* (is not a file name inside|"
                     r"resolves to .* outside the model folder)", lambda: SafetensorsFolder(d))
    assert "SECRET" not in str(e) and str(struct.unpack("<Q", SECRET[:8])[0]) not in str(e)


def test_shard_symlinked_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "foreign.bin").write_bytes(SECRET)
    d = _sharded(tmp_path, "s2.safetensors")
    os.symlink(tmp_path / "foreign.bin", d / "s2.safetensors")
    with pytest.raises(SafetensorsError, match="resolves to .*foreign.bin, outside the model folder") as info:
        SafetensorsFolder(d)
    assert "SECRET" not in str(info.value)
    os.remove(d / "model.safetensors.index.json")            # also without an index
    with pytest.raises(SafetensorsError, match="outside the model folder"):
        SafetensorsFolder(d)


def test_hugging_face_cache_snapshot_symlinks_are_followed(tmp_path):
    # <repo>/snapshots/<rev>/model.safetensors -> ../../blobs/<hash>, as huggingface_hub lays it out
    blobs, snap = tmp_path / "repo" / "blobs", tmp_path / "repo" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    save_safetensors(blobs / "f00d", {"a": np.arange(3, dtype=np.float32)})
    os.symlink("../../blobs/f00d", snap / "model.safetensors")
    np.testing.assert_array_equal(SafetensorsFolder(snap).to_float32("a"), np.arange(3, dtype=np.float32))


# ---- 10: values of the wrong type become ValueError naming the field -------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"num_attention_heads": 0}, r"num_attention_heads must be an integer in \[1, "),
    ({"num_key_value_heads": 0}, r"num_key_value_heads must be an integer"),
    ({"hidden_size": "2048"}, r"hidden_size must be an integer"),
    ({"num_hidden_layers": 2.5}, r"num_hidden_layers must be an integer"),
    ({"rope_scaling": "linear"}, r"rope_scaling must be an object or null, got 'linear'"),
    ({"rope_theta": float("nan")}, r"rope_theta must be a finite number > 0"),
    ({"rms_norm_eps": -1}, r"rms_norm_eps must be a finite number > 0"),
    ({"eos_token_id": [2, 1.5]}, r"eos_token_id must be an integer"),
    ({"architectures": [{"x": 1}]}, r"architectures must be a list of names"),
    ({"quantization_config": ["bitnet"]}, r"quantization_config must be an object"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": float("inf")}},
     r"rope_scaling\.original_max_position_embeddings must be an integer .* got inf"),
])
def test_config_values_of_the_wrong_type_are_named(change, message):
    with pytest.raises(ValueError, match=r"x/config\.json: " + message):
        config_from_hf({**TINYLLAMA, **change}, where="x/config.json")


def test_infinity_in_config_json_file(llama_folders, tmp_path):
    d = _copy(llama_folders["llama3_sharded"], tmp_path / "m")
    text = (d / "config.json").read_text().replace('"original_max_position_embeddings": 16',
                                                    '"original_max_position_embeddings": Infinity')
    (d / "config.json").write_text(text)
    with pytest.raises(ValueError, match=r"config\.json: rope_scaling\.original_max_position_embeddings"):
        read_checkpoint(d)


def _raw_safetensors(path, header_bytes):
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)) + header_bytes)


def test_safetensors_shape_beyond_int64_and_deep_nesting(tmp_path):
    p = tmp_path / "a.safetensors"
    _raw_safetensors(p, json.dumps({"a": {"dtype": "F32", "shape": [2**64], "data_offsets": [0, 4]}}).encode())
    with pytest.raises(SafetensorsError, match=r"'a': F32 \[18446744073709551616\] needs 73786976294838206464 bytes"):
        SafetensorsFile(p)
    _raw_safetensors(p, b"[" * 200000 + b"]" * 200000)
    with pytest.raises(SafetensorsError, match="a.safetensors: header JSON is nested too deeply"):
        SafetensorsFile(p)
    _raw_safetensors(p, b'{"a": {"dtype": "F32", "shape": [1' + b"0" * 5000 + b'], "data_offsets": [0, 4]}}')
    with pytest.raises(SafetensorsError, match="a.safetensors: header is not valid"):
        SafetensorsFile(p)


def test_deeply_nested_config_and_index_json(llama_folders, tmp_path):
    d = _copy(llama_folders["gqa_f32"], tmp_path / "m")
    (d / "config.json").write_text("[" * 200000 + "]" * 200000)
    with pytest.raises(ValueError, match=r"config\.json: JSON nested too deeply"):
        read_checkpoint(d)
    d2 = _sharded(tmp_path, "s1.safetensors")
    (d2 / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * 200000 + "]" * 200000 + "}")
    with pytest.raises(ValueError, match=r"index\.json: JSON nested too deeply"):
        SafetensorsFolder(d2)


def test_gguf_nested_arrays_and_bad_metadata_types(tmp_path):
    def kv_file(key, value_bytes):
        k = key.encode()
        return (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(k)) + k + value_bytes)
    nested = struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 100000 + struct.pack("<IQ", 4, 0)
    p = tmp_path / "n.gguf"
    p.write_bytes(kv_file("x", nested))
    with pytest.raises(ValueError, match=r"n\.gguf.*metadata 'x': arrays nested more than 8 deep"):
        read_checkpoint(p)
    for i, (cfg, extra, message) in enumerate([
            ({}, {"general.alignment": "x"}, r"general\.alignment 'x' is not a power of two"),
            ({"eps": float("nan")}, None, "layer_norm_rms_epsilon must be a finite number")]):
        path = _gguf(tmp_path / f"b{i}.gguf", cfg=cfg, extra=extra)
        with pytest.raises(ValueError, match=rf"b{i}\.gguf: .*" + message):
            read_checkpoint(path)
    # head_count 0 (the writer cannot write it: patch the u32 value in place)
    path = _gguf(tmp_path / "h.gguf")
    key = b"llama.attention.head_count"
    field = struct.pack("<Q", len(key)) + key + struct.pack("<II", 4, GGUF_CFG["heads"])
    data = open(path, "rb").read()
    assert data.count(field) == 1
    open(path, "wb").write(data.replace(field, field[:-4] + struct.pack("<I", 0)))
    with pytest.raises(ValueError, match=r"h\.gguf: metadata key llama\.attention\.head_count must be an integer"):
        read_checkpoint(path)


def test_saved_header_fields_of_the_wrong_type(saved_int4, tmp_path):
    def broken(edit, message, exc=ValueError):
        d = tmp_path / f"s{len(os.listdir(tmp_path))}"
        _copy(saved_int4, d)
        _edit_json(d / "ternlm.json", edit)
        with pytest.raises(exc, match=r"ternlm\.json: " + message):
            read_checkpoint(d)
    broken(lambda h: h.update(matrices=list(h["matrices"])), "field 'matrices' must be a JSON object, got list")
    broken(lambda h: h.update(norms={}), "field 'norms' must be a JSON array")
    broken(lambda h: h["matrices"]["layers.0.q"].update(shape=[128, "64"]),
           r"matrix 'layers.0.q': shape must be \[rows, cols\] of positive ints, got \[128, '64'\]")
    broken(lambda h: h["matrices"]["layers.0.q"].update(shape=[128, 64.0]), r"matrix 'layers.0.q': shape must be")
    broken(lambda h: h["matrices"]["layers.0.q"].update(buffers=["q4"]), r"matrix 'layers.0.q': buffers must map")
    broken(lambda h: h["config"].update(num_heads=0), r"config: num_heads must be an integer")
    broken(lambda h: h["config"].update(rope_scaling="linear"), r"config: rope_scaling must be null or a llama3")


def test_tokenizer_config_values_of_the_wrong_type(tokenizer_folders, tmp_path):
    from ternlm.tokenizer import Tokenizer

    def broken(name, edit, message, gen=None):
        d = _copy(tokenizer_folders["bytelevel"], tmp_path / name)
        _edit_json(d / "tokenizer_config.json", edit)
        if gen is not None:
            (d / "generation_config.json").write_text(json.dumps(gen))
        with pytest.raises(ValueError, match=message):
            Tokenizer.from_folder(d)
    broken("eos", lambda c: c.update(eos_token=5), r"tokenizer_config\.json: eos_token must be a string")
    broken("cls", lambda c: c.update(tokenizer_class=5), r"tokenizer_config\.json: tokenizer_class must be a string")
    broken("bos", lambda c: c.pop("bos_token"), r"generation_config\.json: bos_token_id must be an integer",
           gen={"bos_token_id": "x"})
    broken("ids", lambda c: None, r"generation_config\.json: eos_token_id must be an integer",
           gen={"eos_token_id": [1.5]})


def test_from_buffers_shape_entries_must_be_ints():
    q = ternlm.quantize(np.ones((4, 64), np.float32), "f32")
    for bad in [(4.0, 64), ("4", 64), (True, 64)]:
        with pytest.raises(TypeError, match=r"from_buffers: shape\[0\] must be an int"):
            ternlm.QuantizedMatrix.from_buffers("f32", bad, 0, q.buffers())
    with pytest.raises(ValueError, match="too large"):
        ternlm.QuantizedMatrix.from_buffers("f32", (2**70, 64), 0, q.buffers())
    assert ternlm.QuantizedMatrix.from_buffers("f32", (np.int64(4), 64), 0, q.buffers()).shape == (4, 64)


# ---- fixtures -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_int4(llama_folders, tmp_path_factory):
    """A saved ternlm folder with int4 layer matrices and a bf16 embedding / head."""
    d = tmp_path_factory.mktemp("saved") / "s"
    ternlm.load(llama_folders["gqa_f32"], weights="int4", context=32, progress=False).save(d)
    return d


GGUF_CFG = {"hidden": 64, "ffn": 128, "layers": 1, "heads": 2, "kv_heads": 1, "ctx": 64, "eps": 1e-5,
            "theta": 10000.0}
GGUF_TOK = {"model": "gpt2", "pre": "gpt-2", "tokens": [chr(0x21 + i) for i in range(64)],
            "types": [3, 3] + [1] * 62, "merges": [], "bos": 0, "eos": 1, "add_bos": True}


def _gguf_weights(seed=0, kind="F32"):
    """GGUF tensors for GGUF_CFG, layer matrices of type `kind`."""
    rng = np.random.default_rng(seed)
    h, f = GGUF_CFG["hidden"], GGUF_CFG["ffn"]
    hd = h // GGUF_CFG["heads"]
    shapes = {"attn_q": (h, h), "attn_k": (hd, h), "attn_v": (hd, h), "attn_output": (h, h),
              "ffn_gate": (f, h), "ffn_up": (f, h), "ffn_down": (h, f)}
    out = {"token_embd.weight": (rng.standard_normal((64, h)).astype(np.float32), "F32"),
           "output_norm.weight": (np.ones(h, np.float32), "F32"),
           "blk.0.attn_norm.weight": (np.ones(h, np.float32), "F32"),
           "blk.0.ffn_norm.weight": (np.ones(h, np.float32), "F32")}
    for name, shape in shapes.items():
        out[f"blk.0.{name}.weight"] = ((0.05 * rng.standard_normal(shape)).astype(np.float32), kind)
    return out


def _gguf(path, layers=1, weights=None, extra=None, cfg=None):
    pytest.importorskip("gguf")
    from gguf_files import write_gguf
    cfg = dict(GGUF_CFG, layers=layers, **(cfg or {}))
    return write_gguf(path, cfg, weights or _gguf_weights(), GGUF_TOK, extra=extra)
