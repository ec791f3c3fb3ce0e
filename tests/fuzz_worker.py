"""The worker side of tests/fuzz_loaders.py: writes the seed models, then runs each input in
a forked child under a memory cap and a timeout.

Requests arrive as JSON lines on stdin; replies leave as JSON lines on the original stdout
(fd 1 itself is pointed at stderr, so nothing else can write into the replies). The worker
imports ternlm once and never builds a model itself: seeds are written and every input is
loaded in a fork, so no child inherits a half-copied C++ thread pool.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

# What a bad input may raise (any subclass too); everything else is a failure. Why:
# tests/BAD_INPUTS.md, "The fuzzer's rules".
ALLOWED = (ValueError, FileNotFoundError)
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<a>{% endif %}")


def target(path, weights):
    """What each input goes through: load, tokenize, then a two-token generation (through the
    chat template when there is one)."""
    import ternlm
    m = ternlm.load(path, weights=weights, context=64, threads=1, progress=False)
    tok = m.tokenizer
    tok.decode(tok.encode("Hi there, 12 \u00e9!"))
    if tok.chat_template:
        m.chat([{"role": "user", "content": "hi"}], max_new_tokens=2)
    else:
        m.generate("Hi", max_new_tokens=2)


def _inject(how):
    if how == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif how == "hang":
        time.sleep(3600)
    elif how == "keyerror":
        raise KeyError("injected")
    elif how == "memory":
        bytearray(1 << 44)


def _memory_cap(mem_mb):
    """RLIMIT_AS at what this process maps already plus mem_mb (the interpreter, numpy and the
    core map a few hundred MB before the input is opened)."""
    import resource
    base = 0
    try:
        with open("/proc/self/status") as f:
            base = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        pass
    cap = base + mem_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _has_asan() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return "asan" in os.environ.get("LD_PRELOAD", "")


def in_child(fn, timeout, errpath, mem_mb=0):
    """Run fn() in a fork; its stdout/stderr go to errpath. The outcome: {"outcome": "ok",
    "value": ...} | "exception" (type, allowed, message, traceback) | "crash" | "hang" |
    "no-result"."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child
        try:
            os.close(r)
            fd = os.open(errpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if mem_mb:
                _memory_cap(mem_mb)
            try:
                out = {"outcome": "ok", "value": fn()}
            except BaseException as e:           # noqa: B036 -- every escape is an outcome
                tb = traceback.extract_tb(e.__traceback__)
                # the deepest ternlm function (a comprehension counts as the function around it:
                # Python 3.12 inlines them)
                import ternlm
                package = os.path.dirname(ternlm.__file__) + os.sep
                ours = [f for f in tb if f.filename.startswith(package) and not f.name.startswith("<")] or tb[-1:]
                site = f"{os.path.basename(ours[-1].filename)}:{ours[-1].name}" if ours else "?"
                line = ours[-1].lineno if ours else 0
                out = {"outcome": "exception", "type": type(e).__name__, "site": site, "line": line,
                       "allowed": isinstance(e, ALLOWED),
                       "message": str(e)[:500], "traceback": traceback.format_exc()[-3000:]}
                if out["allowed"] and type(e) not in ALLOWED:
                    base = next(b for b in type(e).__mro__ if b in ALLOWED)
                    out["type"] = f"{type(e).__name__}({base.__name__})"
            data = json.dumps(out).encode()
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(0)
    os.close(w)
    deadline, nap, status = time.monotonic() + timeout, 0.001, None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return {"outcome": "hang", "detail": f"no result after {timeout:g} s (killed)"}
        time.sleep(nap)
        nap = min(nap * 2, 0.02)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {"outcome": "crash", "detail": f"killed by signal {sig} ({signal.Signals(sig).name})"}
    if not chunks:
        return {"outcome": "no-result", "detail": f"exit status {os.waitstatus_to_exitcode(status)}"}
    return json.loads(b"".join(chunks))


def _sanitizer_report(errpath):
    """The first line of an ASan / LSan / UBSan report in the child's stderr, or None."""
    try:
        if os.path.getsize(errpath) == 0:
            return None
        with open(errpath, errors="replace") as f:
            for line in f:
                if "ERROR: AddressSanitizer" in line or "ERROR: LeakSanitizer" in line or "runtime error:" in line:
                    return line.strip()[:300]
    except OSError:
        pass
    return None


def _stderr_excerpt(errpath):
    try:
        with open(errpath, errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    return text if len(text) <= 6000 else text[:4000] + "\n[...]\n" + text[-2000:]


# ---- seeds ---------------------------------------------------------------------------------------
def _llama_state(rng, h, f, heads, kv, vocab, layers, tied):
    import numpy as np
    hd = h // heads

    def w(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)
    state = {"model.embed_tokens.weight": w(vocab, h), "model.norm.weight": 1 + w(h)}
    if not tied:
        state["lm_head.weight"] = w(vocab, h)
    for i in range(layers):
        p = f"model.layers.{i}."
        state[p + "input_layernorm.weight"] = 1 + w(h)
        state[p + "post_attention_layernorm.weight"] = 1 + w(h)
        for name, shape in (("self_attn.q_proj", (heads * hd, h)), ("self_attn.k_proj", (kv * hd, h)),
                            ("self_attn.v_proj", (kv * hd, h)), ("self_attn.o_proj", (h, heads * hd)),
                            ("mlp.gate_proj", (f, h)), ("mlp.up_proj", (f, h)), ("mlp.down_proj", (h, f))):
            state[p + name + ".weight"] = w(*shape)
    return state


def _llama_config(h, f, heads, kv, vocab, layers, tied):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
            "intermediate_size": f, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 128,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
            "bos_token_id": 256, "eos_token_id": 257, "torch_dtype": "float32"}


def build_seeds(root):
    """Write the seed models under root; returns the targets: name, root folder, load path
    (relative; "" = the folder), files to mutate {name: [kind, header bytes]}."""
    import shutil

    import numpy as np

    import ternlm
    from ternlm.io.safetensors import float32_to_bf16_bits, save_safetensors
    from ternlm.synthetic import write_synthetic_bitnet
    targets = []

    def add(name, files, load=""):
        targets.append({"name": name, "root": os.path.join(root, name), "load": load,
                        "files": {f: [k, 0] for f, k in files.items()}})

    def copy_tokenizer(folder):
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(os.path.join(root, "hf_bitnet", f), os.path.join(folder, f))

    dims = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=260, max_position_embeddings=128)
    bitnet = write_synthetic_bitnet(os.path.join(root, "hf_bitnet"), dims, seed=1)
    tcfg_path = os.path.join(bitnet, "tokenizer_config.json")
    with open(tcfg_path) as fh:
        tcfg = json.load(fh)
    with open(tcfg_path, "w") as fh:
        json.dump({**tcfg, "chat_template": CHAT_TEMPLATE}, fh)
    add("hf_bitnet", {"config.json": "json", "generation_config.json": "json", "model.safetensors": "safetensors",
                      "tokenizer.json": "json", "tokenizer_config.json": "json"})

    rng = np.random.default_rng(2)
    shape = dict(h=32, f=64, heads=4, kv=2, vocab=258, layers=2)
    state = _llama_state(rng, tied=False, **shape)
    stored = {k: (("BF16", float32_to_bf16_bits(v)) if "mlp" in k else v.astype(np.float16) if "k_proj" in k
                  else v) for k, v in state.items()}
    folder = os.path.join(root, "hf_llama")
    os.makedirs(folder)
    save_safetensors(os.path.join(folder, "model.safetensors"), stored, {"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(_llama_config(tied=False, **shape), fh)
    copy_tokenizer(folder)
    add("hf_llama", {"config.json": "json", "model.safetensors": "safetensors"})

    tied = _llama_state(rng, tied=True, **shape)
    folder = os.path.join(root, "hf_sharded")
    os.makedirs(folder)
    names = list(tied)
    shards = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for fname, part in shards.items():
        save_safetensors(os.path.join(folder, fname), {k: tied[k] for k in part}, {"format": "pt"})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": sum(v.nbytes for v in tied.values())},
                   "weight_map": {k: f for f, part in shards.items() for k in part}}, fh)
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(_llama_config(tied=True, **shape), fh)
    copy_tokenizer(folder)
    add("hf_sharded", {"config.json": "json", "model.safetensors.index.json": "json",
                       "model-00001-of-00002.safetensors": "safetensors"})

    _gguf_seeds(root, state, shape, rng, add)
    for name, src, weights, head in (("own_int4", "hf_llama", "int4", None), ("own_bf16c", "hf_sharded", "bf16c", None),
                                     ("own_ternary", "hf_bitnet", None, None),
                                     ("own_heads", "hf_llama", "ternary", "q6"), ("own_int8", "hf_bitnet", None, "int8")):
        m = ternlm.load(os.path.join(root, src), weights=weights, head=head, context=64, threads=1, progress=False)
        m.save(os.path.join(root, name))
        add(name, {"ternlm.json": "json", "model.safetensors": "safetensors", "tokenizer_config.json": "json"})
    for t in targets:
        if t["load"].endswith(".gguf"):   # ternlm's reader: the gguf package's does not know I2_S
            from ternlm.io.gguf_reader import GGUFFile
            t["files"][t["load"]][1] = int(GGUFFile(os.path.join(t["root"], t["load"])).data_offset)
    return targets


def _gguf_seeds(root, state, shape, rng, add):
    """A Llama GGUF (F16 / Q8_0 / Q4_0 / Q4_1 / F32), a ternary one (TQ2_0 / TQ1_0, rows of
    256), a `qwen2` one (q/k/v biases, a sliding window key), written by tests/gguf_files.py
    with the gguf package's quantizers, and a `bitnet`
    one (I2_S, TQ2_0, a `.scale` tensor, a Q6_K output) through tests/gguf_files.py's encoders."""
    from gguf_files import hf_state_to_gguf_tensors, tokenizer_meta_from_fast, write_gguf
    with open(os.path.join(root, "hf_bitnet", "tokenizer.json"), encoding="utf-8") as fh:
        tok_json = json.load(fh)
    specials = {a["content"] for a in tok_json.get("added_tokens", [])}
    tokens, types, merges, _ = tokenizer_meta_from_fast(tok_json, "gpt2", specials)
    tok = {"model": "gpt2", "pre": "gpt-2", "tokens": tokens, "types": types, "merges": merges,
           "bos": 256, "eos": 257, "add_bos": True, "chat_template": CHAT_TEMPLATE}
    for name, st, sh, kinds in (
            ("gguf_llama", state, shape,
             {"embed": "F16", "lm_head": "Q8_0", "matrix": "Q4_0", "attn_k": "Q4_1", "ffn_down": "F32"}),
            ("gguf_ternary", None, dict(shape, h=256, f=256, layers=1),
             {"embed": "F16", "lm_head": "F16", "matrix": "TQ2_0", "attn_v": "TQ1_0"})):
        if st is None:
            st = _llama_state(rng, tied=False, **sh)
        cfg = {"hidden": sh["h"], "ffn": sh["f"], "layers": sh["layers"], "heads": sh["heads"],
               "kv_heads": sh["kv"], "ctx": 128, "eps": 1e-5, "theta": 10000.0}
        folder = os.path.join(root, name)
        os.makedirs(folder)
        write_gguf(os.path.join(folder, "model.gguf"), cfg,
                   hf_state_to_gguf_tensors(st, sh["heads"], sh["kv"], sh["layers"], kinds), tok)
        add(name, {"model.gguf": "gguf"}, load="model.gguf")
    # a `qwen2` file: q/k/v biases, and a sliding window key (llama.cpp's names)
    tensors = hf_state_to_gguf_tensors(state, shape["heads"], shape["kv"], shape["layers"],
                                       {"embed": "F16", "lm_head": "Q8_0", "matrix": "F16", "attn_q": "Q4_0"})
    hd = shape["h"] // shape["heads"]
    for i in range(shape["layers"]):
        for kind, rows in (("attn_q", shape["heads"] * hd), ("attn_k", shape["kv"] * hd),
                           ("attn_v", shape["kv"] * hd)):
            tensors[f"blk.{i}.{kind}.bias"] = ((rng.standard_normal(rows) * 0.1).astype("float32"), "F32")
    folder = os.path.join(root, "gguf_qwen2")
    os.makedirs(folder)
    cfg = {"hidden": shape["h"], "ffn": shape["f"], "layers": shape["layers"], "heads": shape["heads"],
           "kv_heads": shape["kv"], "ctx": 128, "eps": 1e-6, "theta": 1000000.0}
    write_gguf(os.path.join(folder, "model.gguf"), cfg, tensors, dict(tok, pre="qwen2"), arch="qwen2",
               extra={"qwen2.attention.sliding_window": 16})
    add("gguf_qwen2", {"model.gguf": "gguf"}, load="model.gguf")
    folder = os.path.join(root, "gguf_bitnet")
    os.makedirs(folder)
    sh = dict(shape, h=256, f=256, layers=1)
    cfg = {"hidden": sh["h"], "ffn": sh["f"], "layers": 1, "heads": sh["heads"], "kv_heads": sh["kv"], "ctx": 128,
           "eps": 1e-5, "theta": 10000.0}
    write_gguf(os.path.join(folder, "model.gguf"), cfg, _bitnet_gguf_tensors(rng, sh, len(tokens)), tok, arch="bitnet")
    add("gguf_bitnet", {"model.gguf": "gguf"}, load="model.gguf")


def _bitnet_gguf_tensors(rng, sh, vocab):
    import numpy as np
    h, f, hd = sh["h"], sh["f"], sh["h"] // sh["heads"]

    def tern(rows, cols):
        return rng.integers(-1, 2, (rows, cols)).astype(np.int8)
    out = {"token_embd.weight": (rng.standard_normal((vocab, h)).astype(np.float32), "F16"),
           "output_norm.weight": (np.ones(h, np.float32), "F32"),
           "output.weight": ((rng.integers(0, 64, (vocab, h)).astype(np.uint8),
                              rng.integers(-128, 128, (vocab, h // 16)).astype(np.int8),
                              (rng.random((vocab, h // 256)) * 1e-2).astype(np.float16)), "Q6_K")}
    shapes = {"attn_q": (h, h), "attn_k": (sh["kv"] * hd, h), "attn_v": (sh["kv"] * hd, h), "attn_output": (h, h),
              "ffn_gate": (f, h), "ffn_up": (f, h), "ffn_down": (h, f)}
    for name, (rows, cols) in shapes.items():
        t = tern(rows, cols)
        if name == "attn_v":
            out[f"blk.0.{name}.weight"] = (t.astype(np.float32) * np.float32(0.25), "TQ2_0")
        elif name == "ffn_up":
            out[f"blk.0.{name}.weight"] = (t.astype(np.float32), "TQ1_0")
            out[f"blk.0.{name}.scale"] = (np.array([0.3], np.float32), "F32")
        else:
            out[f"blk.0.{name}.weight"] = ((t, np.float32(0.05)), "I2_S")
    for name, n in (("attn_norm", h), ("ffn_norm", h), ("attn_sub_norm", h), ("ffn_sub_norm", f)):
        out[f"blk.0.{name}.weight"] = (np.ones(n, np.float32), "F32")
    return out


# ---- the request loop ---------------------------------------------------------------------------
def worker_main() -> int:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import gguf  # noqa: F401  -- imported once here, so that each child starts warm

    import ternlm  # noqa: F401
    import ternlm.io.gguf  # noqa: F401
    import ternlm.io.hf  # noqa: F401
    import ternlm.io.own_format  # noqa: F401
    import ternlm.model  # noqa: F401
    asan = _has_asan()
    errpath = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ternlm-fuzz-stderr-{os.getpid()}")
    try:
        for line in sys.stdin:
            req = json.loads(line)
            if req["cmd"] == "seeds":
                out = in_child(lambda: build_seeds(req["dir"]), 600, errpath)
                if out["outcome"] != "ok":
                    raise RuntimeError(f"writing the fuzz seeds failed: {out}\n{_stderr_excerpt(errpath)}")
                for t in out["value"]:              # every seed must load: else nothing is tested
                    check = in_child(lambda: target(os.path.join(t["root"], t["load"]), None), 120, errpath)
                    if check["outcome"] != "ok":
                        raise RuntimeError(f"seed {t['name']} does not load: {check}\n{_stderr_excerpt(errpath)}")
                out = {"targets": out["value"]}
            else:
                def fn(req=req):
                    if req.get("inject"):
                        _inject(req["inject"])
                    target(req["path"], req["weights"])
                out = in_child(fn, req.get("timeout", 20), errpath, 0 if asan else req.get("mem_mb", 2048))
                report = _sanitizer_report(errpath)
                if report:                          # UBSan may report and go on; ASan exits 1
                    out = {"outcome": "sanitizer", "detail": report}
                if out["outcome"] != "ok" and not out.get("allowed"):
                    out["stderr"] = _stderr_excerpt(errpath)
            replies.write(json.dumps(out) + "\n")
    finally:
        if os.path.exists(errpath):
            os.unlink(errpath)
    return 0
