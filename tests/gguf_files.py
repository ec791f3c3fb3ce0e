"""Writers for small GGUF files, the way llama.cpp's converter lays them out (used by the
GGUF tests): llama metadata, q/k rows permuted for interleaved RoPE, tensors quantized with
the gguf package's own quantizers, and a tokenizer in `tokenizer.ggml.*` form."""
import json

import numpy as np

QUANT_BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q8_0": 32, "TQ1_0": 256, "TQ2_0": 256}


def llamacpp_permute(w, n_head):
    """convert_hf_to_gguf.py's permutation of q/k rows (HF rotate-half -> interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


I2S_TYPE_ID = 36      # bitnet.cpp's fork of ggml (the gguf package has no I2_S)


def q6k_bytes(u, sc, d):
    """GGUF Q6_K blocks [rows, cols/256 * 210] from u uint8 [rows, cols] in 0..63, sc int8
    [rows, cols/16], d float16 [rows, cols/256] (ggml's block_q6_K: ql[128], qh[64],
    scales[16], d). gguf.quants can decode Q6_K but not encode it; the tests check this
    encoder against its decoder."""
    rows, cols = u.shape
    nb = cols // 256
    u = u.reshape(rows, nb, 2, 4, 32).astype(np.uint8)          # [half][quarter][l]
    ql = np.concatenate([u[..., 0, :] & 15 | (u[..., 2, :] & 15) << 4,
                         u[..., 1, :] & 15 | (u[..., 3, :] & 15) << 4], axis=-1)   # [half][64]
    qh = (u[..., 0, :] >> 4) | (u[..., 1, :] >> 4) << 2 | (u[..., 2, :] >> 4) << 4 | (u[..., 3, :] >> 4) << 6
    blocks = np.concatenate([ql.reshape(rows, nb, 128), qh.reshape(rows, nb, 64),
                             sc.astype(np.int8).view(np.uint8).reshape(rows, nb, 16),
                             d.astype(np.float16).view(np.uint8).reshape(rows, nb, 2)], axis=-1)
    return np.ascontiguousarray(blocks.reshape(rows, nb * 210))


def i2s_bytes(t, scale):
    """bitnet.cpp's I2_S bytes of a ternary matrix t int8 [rows, cols] with its f32 scale:
    the flattened weights in blocks of 128, weight j of a block in byte j % 32 at bits
    6 - 2 (j / 32), as t + 1; then a 32-byte tail holding the scale in its first 4 bytes."""
    codes = (np.asarray(t, np.int16).reshape(-1, 4, 32) + 1).astype(np.uint8)
    packed = codes[:, 0] << 6 | codes[:, 1] << 4 | codes[:, 2] << 2 | codes[:, 3]
    tail = np.zeros(32, np.uint8)
    tail[:4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    return np.concatenate([packed.reshape(-1), tail])


def tensor_bytes(arr, kind):
    """(data, raw_dtype or None) for GGUFWriter.add_tensor: float arrays for F32/F16, the
    gguf package's quantized bytes otherwise; kind "Q6_K" takes arr = (u, sc, d) and "I2_S"
    arr = (t, scale) (encoded above)."""
    import gguf
    if kind == "Q6_K":
        return q6k_bytes(*arr), gguf.GGMLQuantizationType.Q6_K
    if kind == "I2_S":
        return i2s_bytes(*arr), I2S_TYPE_ID
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if kind == "F32":
        return arr, None
    if kind == "F16":
        return arr.astype(np.float16), None
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    return gguf.quants.quantize(arr, qtype), qtype


def tokenizer_meta_from_fast(tok_json: dict, kind: str, specials=()):
    """tokens / token types / merges / scores from a tokenizer.json dict.
    kind "gpt2" (byte-level) or "llama" (SentencePiece, <0xNN> byte tokens)."""
    vocab = tok_json["model"]["vocab"]
    for added in tok_json.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    tokens = [None] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    types = []
    for t in tokens:
        if t in specials:
            types.append(3)
        elif kind == "llama" and t.startswith("<0x") and t.endswith(">") and len(t) == 6:
            types.append(6)
        else:
            types.append(1)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"].get("merges", [])]
    scores = [-float(i) for i in range(len(tokens))]
    return tokens, types, merges, scores


def write_gguf(path, cfg, tensors, tok, arch="llama", extra=None):
    """cfg: hidden, ffn, layers, heads, kv_heads, ctx, eps, theta. tensors: GGUF name ->
    (float array [rows, cols] in HF orientation, type name). tok: dict with model, pre,
    tokens, types, merges (optional), scores (optional), bos, eos, add_bos, chat_template."""
    import gguf
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg["ctx"])
    w.add_embedding_length(cfg["hidden"])
    w.add_block_count(cfg["layers"])
    w.add_feed_forward_length(cfg["ffn"])
    w.add_head_count(cfg["heads"])
    w.add_head_count_kv(cfg["kv_heads"])
    w.add_layer_norm_rms_eps(cfg["eps"])
    w.add_rope_freq_base(cfg["theta"])
    w.add_rope_dimension_count(cfg["hidden"] // cfg["heads"])
    w.add_vocab_size(len(tok["tokens"]))
    w.add_tokenizer_model(tok["model"])
    if tok.get("pre"):
        w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    if tok.get("merges") is not None:
        w.add_token_merges(tok["merges"])
    if tok.get("scores") is not None:
        w.add_token_scores(tok["scores"])
    w.add_bos_token_id(tok["bos"])
    w.add_eos_token_id(tok["eos"])
    if tok.get("unk") is not None:
        w.add_unk_token_id(tok["unk"])
    if tok.get("add_bos") is not None:
        w.add_add_bos_token(tok["add_bos"])
    if tok.get("add_space_prefix") is not None:
        w.add_add_space_prefix(tok["add_space_prefix"])
    if tok.get("chat_template"):
        w.add_chat_template(tok["chat_template"])
    for key, value in (extra or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    for name, (arr, kind) in tensors.items():
        data, raw = tensor_bytes(arr, kind)
        if raw is None:
            w.add_tensor(name, data)
        elif raw == I2S_TYPE_ID:
            # declared as I8 bytes of the right count, then given I2_S's type id and shape
            w.add_tensor(name, data.view(np.int8))
            w.tensors[-1][name].dtype = I2S_TYPE_ID
            w.tensors[-1][name].shape = tuple(np.asarray(arr[0]).shape)
        else:
            w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def hf_state_to_gguf_tensors(state, n_head, n_kv, layers, types):
    """HF state dict (numpy float32) -> GGUF tensors; types: canonical-suffix -> type name
    (keys "embed", "lm_head", "matrix"; norms are always F32)."""
    out = {"token_embd.weight": (state["model.embed_tokens.weight"], types["embed"]),
           "output_norm.weight": (state["model.norm.weight"], "F32")}
    if "lm_head.weight" in state:
        out["output.weight"] = (state["lm_head.weight"], types["lm_head"])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(layers):
        p = f"model.layers.{i}."
        out[f"blk.{i}.attn_norm.weight"] = (state[p + "input_layernorm.weight"], "F32")
        out[f"blk.{i}.ffn_norm.weight"] = (state[p + "post_attention_layernorm.weight"], "F32")
        for hf, gg in names.items():
            wgt = state[p + hf + ".weight"]
            if gg == "attn_q":
                wgt = llamacpp_permute(wgt, n_head)
            elif gg == "attn_k":
                wgt = llamacpp_permute(wgt, n_kv)
            out[f"blk.{i}.{gg}.weight"] = (wgt, types.get(gg, types["matrix"]))
    return out


def gguf_from_hf_folder(folder, path, types, tok_kind="gpt2", pre="gpt-2"):
    """Write the HF checkpoint in `folder` (config.json, safetensors, tokenizer.json) as GGUF."""
    import os

    from safetensors.numpy import load_file
    cfg = json.load(open(os.path.join(folder, "config.json")))
    state = {k: v.astype(np.float32) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()} \
        if os.path.exists(os.path.join(folder, "model.safetensors")) else None
    tok_json = json.load(open(os.path.join(folder, "tokenizer.json"), encoding="utf-8"))
    tcfg = json.load(open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8"))
    specials = {a["content"] for a in tok_json.get("added_tokens", []) if a.get("special")}
    tokens, ttypes, merges, scores = tokenizer_meta_from_fast(tok_json, tok_kind, specials)
    tok = {"model": tok_kind, "pre": pre if tok_kind == "gpt2" else None, "tokens": tokens, "types": ttypes,
           "merges": merges, "scores": scores if tok_kind == "llama" else None,
           "bos": cfg["bos_token_id"], "eos": cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], int)
           else cfg["eos_token_id"][0], "add_bos": True, "chat_template": tcfg.get("chat_template")}
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    gcfg = {"hidden": cfg["hidden_size"], "ffn": cfg["intermediate_size"], "layers": cfg["num_hidden_layers"],
            "heads": heads, "kv_heads": kv, "ctx": cfg["max_position_embeddings"], "eps": cfg["rms_norm_eps"],
            "theta": cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))}
    tensors = hf_state_to_gguf_tensors(state, heads, kv, cfg["num_hidden_layers"], types)
    return write_gguf(path, gcfg, tensors, tok)


# llama.cpp's tensor names of a decoder layer: HF module suffix -> GGUF name (its TensorNameMap)
_LAYER_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
                "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down"}


def _as_type(w, kind):
    """(data, raw type) of a float matrix in GGUF type `kind` (Q6_K through ternlm's q6,
    whose numerics are Q6_K's: gguf.quants cannot encode it)."""
    if kind == "Q6_K":
        import ternlm
        from head_reference import q6_fields
        u, sc, d = q6_fields(ternlm.quantize(np.ascontiguousarray(w, np.float32), "q6"))
        return tensor_bytes((u[:, :w.shape[1]].astype(np.uint8), sc[:, :w.shape[1] // 16], d), "Q6_K")
    return tensor_bytes(w, kind)


def gguf_from_arch_folder(folder, path, types, sliding_window=None, window_pattern=None):
    """A Qwen2 / Qwen3 / Mistral HF folder (tests/arch_checkpoints.py) as llama.cpp's
    convert_hf_to_gguf.py writes it: Qwen2ForCausalLM -> arch `qwen2`, Qwen3ForCausalLM ->
    `qwen3` (both NEOX RoPE: q/k as they are), MistralForCausalLM -> `llama` (q/k rows
    permuted, `llama.vocab_size` and `rope.dimension_count`, no sliding-window key unless
    sliding_window is given). Metadata: the base converter's keys (context, embedding, ffn,
    block count, heads, kv heads, rope.freq_base, rms eps, key/value_length when config.json
    has head_dim). Tensors: llama.cpp's names; norms and biases F32; types: {"embed", "lm_head",
    "matrix"} -> GGUF type name. Tokenizer: byte-level BPE with pre `qwen2` (Qwen) or
    SentencePiece-style "llama" tokens with their merges (Mistral)."""
    import os

    import gguf
    from safetensors.numpy import load_file
    cfg = json.load(open(os.path.join(folder, "config.json")))
    mtype = cfg["model_type"]
    arch = {"qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama"}[mtype]
    state = {k: v.astype(np.float32) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if cfg.get("head_dim") is not None:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    if arch == "llama":
        w.add_vocab_size(cfg["vocab_size"])
        w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    if sliding_window is not None:
        w.add_sliding_window(sliding_window)
    if window_pattern is not None:
        w.add_sliding_window_pattern(window_pattern)
    tok_json = json.load(open(os.path.join(folder, "tokenizer.json"), encoding="utf-8"))
    tcfg = json.load(open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8"))
    specials = {a["content"] for a in tok_json.get("added_tokens", []) if a.get("special")}
    kind = "llama" if arch == "llama" else "gpt2"
    tokens, ttypes, merges, scores = tokenizer_meta_from_fast(tok_json, kind, specials)
    w.add_tokenizer_model(kind)
    if kind == "gpt2":
        w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(ttypes)
    w.add_token_merges(merges)
    if kind == "llama":
        w.add_token_scores(scores)
    gen = json.load(open(os.path.join(folder, "generation_config.json")))
    if cfg.get("bos_token_id") is not None:
        w.add_bos_token_id(cfg["bos_token_id"])
    eos = cfg.get("eos_token_id", gen.get("eos_token_id"))
    w.add_eos_token_id(eos[0] if isinstance(eos, list) else eos)
    w.add_add_bos_token(kind == "llama")
    if tcfg.get("chat_template"):
        w.add_chat_template(tcfg["chat_template"])

    def put(name, arr, kind):
        data, raw = _as_type(arr, kind) if arr.ndim == 2 else tensor_bytes(arr, "F32")
        w.add_tensor(name, data, raw_dtype=raw) if raw is not None else w.add_tensor(name, data)

    put("token_embd.weight", state["model.embed_tokens.weight"], types["embed"])
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in _LAYER_NAMES.items():
            for suffix in ("weight", "bias"):
                key = f"model.layers.{i}.{hf}.{suffix}"
                if key not in state:
                    continue
                a = state[key]
                if arch == "llama" and gg in ("attn_q", "attn_k"):
                    a = llamacpp_permute(a, heads if gg == "attn_q" else kv)
                put(f"blk.{i}.{gg}.{suffix}", a, types.get(gg, types["matrix"]))
    put("output_norm.weight", state["model.norm.weight"], "F32")
    if "lm_head.weight" in state and not cfg.get("tie_word_embeddings"):
        put("output.weight", state["lm_head.weight"], types["lm_head"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)
