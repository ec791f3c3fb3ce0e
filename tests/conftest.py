"""Shared fixtures: tiny random checkpoints written the way real ones are.

Every checkpoint folder holds config.json (+ generation_config.json), safetensors written
by transformers' save_pretrained (or, for packed BitNet, the same layout transformers reads
with its BitNet quantizer), and a tokenizer.json / tokenizer_config.json with a chat
template, saved by PreTrainedTokenizerFast.save_pretrained.

Fixtures are session-scoped and cached in a pytest tmp dir; `hf_reference(folder)` loads the
transformers model in float32 for comparisons.
"""
import os

# transformers' BitNet layers are decorated with torch.compile; on a CPU test machine that
# means minutes of inductor compilation for nothing. Plain eager mode computes the same.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No test reaches the network: Hub ids resolve from local caches (tests/test_hub.py builds them).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


class _SkipTorch:
    """Under the sanitizer build (tests/sanitize_env.sh sets TERNLM_SANITIZE=1) torch and
    transformers are not imported: they are not instrumented, check nothing of the C++
    core and are slow under ASan. A test that imports them is skipped instead."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "transformers"):
            pytest.skip(f"needs {name}, not imported under the sanitizer build", allow_module_level=True)
        return None


if os.environ.get("TERNLM_SANITIZE") == "1":
    sys.meta_path.insert(0, _SkipTorch())

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] | trim }}\n"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}{{ eos_token }}\n"
    "{% else %}{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I'm fine, thanks.",
    "def forward(self, x):\n    return self.linear(x) + 1",
    "Ternary weights are -1, 0 or +1; int8 activations, int32 sums.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3068\u4e2d\u6587\u53e5\u5b50",
    "Numbers 12345 67890 3.14159 2.71828 and emoji \U0001F600\U0001F680",
    "Once upon a time there was a small language model that ran on a CPU.",
] * 20


def _bytelevel_tokenizer():
    """GPT-2 / Llama-3 style: ByteLevel BPE (multi-byte characters split over tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|begin|>", "<|end|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin|> $A", pair="<|begin|> $A <|begin|> $B",
        special_tokens=[("<|begin|>", tok.token_to_id("<|begin|>"))])
    return tok, {"bos_token": "<|begin|>", "eos_token": "<|end|>", "pad_token": "<|pad|>"}


def _metaspace_tokenizer():
    """Llama-2 / TinyLlama style: Metaspace BPE with byte fallback (<0xNN> tokens)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    base.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    vocab = base.get_vocab()
    merges = json.loads(base.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    return tok, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def save_tokenizer(folder, kind="bytelevel", add_bos_token=None, chat_template=CHAT_TEMPLATE,
                   tokenizer_class=None, extra_config=None):
    """Write tokenizer.json + tokenizer_config.json through transformers' own save_pretrained;
    tokenizer_class / extra_config then edit tokenizer_config.json as Hub repos have it
    (e.g. "LlamaTokenizer" with "legacy": false, like TinyLlama)."""
    from transformers import PreTrainedTokenizerFast
    tok, special = (_bytelevel_tokenizer if kind == "bytelevel" else _metaspace_tokenizer)()
    kwargs = dict(special)
    if add_bos_token is not None:
        kwargs["add_bos_token"] = add_bos_token
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    fast.chat_template = chat_template
    fast.save_pretrained(folder)
    if tokenizer_class or extra_config:
        path = os.path.join(folder, "tokenizer_config.json")
        cfg = json.load(open(path))
        if tokenizer_class:
            cfg["tokenizer_class"] = tokenizer_class
        cfg.update(extra_config or {})
        json.dump(cfg, open(path, "w"), indent=1)
    return fast


# name -> (kind, add_bos_token, tokenizer_class, extra tokenizer_config entries)
TOKENIZER_VARIANTS = {
    "bytelevel": ("bytelevel", None, None, None),
    "metaspace": ("metaspace", None, None, None),
    "metaspace_bos": ("metaspace", True, None, None),
    # transformers rebuilds these classes' pipelines (Llama 2 / TinyLlama, SmolLM2)
    "llama_class": ("metaspace", True, "LlamaTokenizerFast", {"legacy": False}),
    "llama_class_legacy": ("metaspace", True, "LlamaTokenizer", {"legacy": True}),
    "gpt2_class": ("bytelevel", None, "GPT2Tokenizer", {"add_prefix_space": False, "unk_token": "<|end|>"}),
    # tokenizer_config says add_bos_token, tokenizer.json's post-processor does not add it
    "bos_flag_ignored": ("metaspace", None, None, {"add_bos_token": True}),
}


@pytest.fixture(scope="session")
def tokenizer_folders(tmp_path_factory):
    """TOKENIZER_VARIANTS name -> folder holding only the tokenizer files."""
    out = {}
    for name, (kind, bos, cls, extra) in TOKENIZER_VARIANTS.items():
        d = tmp_path_factory.mktemp(f"tok_{name}")
        save_tokenizer(d, kind, add_bos_token=bos, tokenizer_class=cls, extra_config=extra)
        out[name] = str(d)
    return out


# ---- Llama checkpoints -----------------------------------------------------------------------
LLAMA_VARIANTS = {
    # GQA (4 query heads on 2 KV heads), untied, stored f32
    "gqa_f32": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, dtype="float32"),
    # multi-head, tied embeddings, stored bf16
    "tied_bf16": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True, dtype="bfloat16"),
    # Llama 3: rope_scaling llama3, explicit head_dim (q width 128 != hidden 64), sharded files
    "llama3_sharded": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=32, tie_word_embeddings=False,
                           dtype="float32", rope_theta=500000.0, shard="40KB",
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
}


def _randomize(model, seed, scale=0.08):
    """Weights with enough spread that logits are far from uniform (greedy is then meaningful)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:   # norm weights: around 1, not exactly 1
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g) * (3.0 if "embed" in name else 1.0))


def write_llama(folder, tok_folder_kind="bytelevel", seed=0, **variant):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    variant = dict(variant)
    dtype = variant.pop("dtype", "float32")
    shard = variant.pop("shard", None)
    fast = save_tokenizer(folder, tok_folder_kind)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      max_position_embeddings=256, rms_norm_eps=1e-5,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, **variant)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    _randomize(model, seed)
    model = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    GenerationConfig(bos_token_id=fast.bos_token_id, eos_token_id=[fast.eos_token_id]).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def llama_folders(tmp_path_factory):
    return {name: write_llama(tmp_path_factory.mktemp(f"llama_{name}"), seed=i, **v)
            for i, (name, v) in enumerate(LLAMA_VARIANTS.items())}


# ---- BitNet checkpoints ----------------------------------------------------------------------
BITNET_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def absmean_ternary(w):
    """BitNet weight quantization (transformers' WeightQuant): T and s_w = 1/mean|W|."""
    w = np.asarray(w, dtype=np.float32)
    s_w = np.float32(1.0) / max(np.float32(np.abs(w).mean(dtype=np.float32)), np.float32(1e-5))
    return np.clip(np.round(w * s_w), -1, 1).astype(np.int8), np.float32(s_w)


BITNET_VARIANTS = {
    "bitlinear": {"linear_class": "bitlinear", "quantization_mode": "offline"},
    "autobitlinear_offline": {"linear_class": "autobitlinear", "quantization_mode": "offline"},
    "autobitlinear_online": {"linear_class": "autobitlinear", "quantization_mode": "online"},
}


def write_bitnet(folder, quant, seed=0, tie=False, hidden=64, ffn=128):
    """A BitNetForCausalLM folder in the given quantization_config convention.

    offline: linear weights packed uint8 + bf16 weight_scale [1] (bitlinear: s_w = 1/mean|W|;
    autobitlinear: mean|W|, the dequantization multiplier). online: bf16 master weights."""
    import torch
    from safetensors.torch import save_file
    from transformers import BitNetConfig, BitNetForCausalLM, GenerationConfig
    from ternlm.io.hf import pack_bitnet_weight
    fast = save_tokenizer(folder, "bytelevel")
    cfg = BitNetConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       tie_word_embeddings=tie, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    torch.manual_seed(seed)
    model = BitNetForCausalLM(cfg)
    _randomize(model, seed, scale=0.1)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    if tie:
        state.pop("lm_head.weight", None)
    if quant["quantization_mode"] == "offline":
        for key in list(state):
            if key.rsplit(".", 2)[-2] in BITNET_LINEARS:
                t, s_w = absmean_ternary(state[key].float().numpy())
                state[key] = torch.from_numpy(pack_bitnet_weight(t))
                ws = s_w if quant["linear_class"] == "bitlinear" else np.float32(1.0) / s_w
                state[key[:-len("weight")] + "weight_scale"] = torch.tensor([ws], dtype=torch.bfloat16)
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    cfg.architectures = ["BitNetForCausalLM"]
    cfg.quantization_config = {"quant_method": "bitnet", **quant}
    cfg.dtype = torch.bfloat16
    cfg.save_pretrained(folder)
    GenerationConfig(bos_token_id=fast.bos_token_id, eos_token_id=[fast.eos_token_id]).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def bitnet_folders(tmp_path_factory):
    return {name: write_bitnet(tmp_path_factory.mktemp(f"bitnet_{name}"), q, seed=10 + i)
            for i, (name, q) in enumerate(BITNET_VARIANTS.items())}


_HF_CACHE = {}


def hf_reference(folder):
    """transformers' model for `folder`, float32, eager attention, eval mode (cached)."""
    if folder not in _HF_CACHE:
        import torch
        from transformers import AutoModelForCausalLM
        torch.set_num_threads(2)
        m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        # the BitNet offline path leaves unquantized weights (embeddings) in the checkpoint's
        # bf16 despite dtype=float32 (and .float() is refused for quantized models): cast
        # float tensors in place; packed uint8 weights stay.
        with torch.no_grad():
            for t in list(m.parameters()) + list(m.buffers()):
                if t.is_floating_point():
                    t.data = t.data.float()
        _HF_CACHE[folder] = m.eval()
    return _HF_CACHE[folder]


def hf_logits(folder, ids):
    import torch
    with torch.no_grad():
        return hf_reference(folder)(torch.tensor([ids])).logits[0].float().numpy()


def copy_folder(src, dst):
    """A copy of a model folder to damage, so the fixture's files stay intact."""
    shutil.copytree(src, dst)
    return dst


def edit_json(path, edit):
    """Rewrite a JSON file after edit(data) changed the parsed object in place."""
    data = json.loads(open(path).read())
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def default_sigint():
    """In the child before exec: SIGINT to its default action. A test run started in the
    background by a non-interactive shell inherits SIGINT ignored, and Python installs its
    KeyboardInterrupt handler only where SIGINT was not ignored at startup; a user's
    terminal leaves it at the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def incremental_logits(m, ids, prefill=12):
    """Logits of ids through the engine's KV cache: a forward of the first `prefill` tokens,
    then one token at a time (compared with one full forward by the model tests)."""
    eng = m._engine
    eng.reset()
    rows = [np.asarray(eng.forward(np.asarray(ids[:prefill], np.int32), logits="all")).reshape(prefill, -1)]
    for t in ids[prefill:]:
        rows.append(np.asarray(eng.forward(np.asarray([t], np.int32), logits="last")).reshape(1, -1))
    return np.concatenate(rows)
