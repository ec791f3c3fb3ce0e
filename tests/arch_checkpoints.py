"""Tiny random checkpoints of every Hugging Face class ternlm opens besides the Llama and
BitNet fixtures of conftest.py, float and BitNet-quantized, written as the real ones are.

Shapes: the published configs' shape family, scaled down (same ratios where they matter):
    qwen2    Qwen/Qwen2.5-0.5B-Instruct: q/k/v biases, GQA 7:1 (here 4:2), tied, rope_theta 1e6
    qwen3    Qwen/Qwen3-0.6B: per-head q/k RMSNorm, head_dim 128 with q width 2048 > hidden
             1024 (here head_dim 32, q width 128 > hidden 64), tied, rope_theta 1e6
    mistral  mistralai/Mistral-7B-v0.1: sliding_window 4096 of 32768 positions (here 24, so
             the tests' prompts exceed it), GQA 4:1, untied
    llama    HF1BitLLM/Llama3-8B-1.58-100B-tokens, tiiuae/Falcon3-*-1.58bit (Llama blocks,
             BitNet linears), and the onebitllms / Falcon-E layout (use_rms_norm)
Float folders are written by transformers' save_pretrained. BitNet folders: the float
model's state dict with every converted linear replaced the way transformers' BitNet
quantizer reads it (conftest.write_bitnet draws the three conventions): "offline" packed
uint8 [out/4, in] + weight_scale [1] (bitlinear: s_w = 1/mean|W|; autobitlinear: mean|W|),
"online" bf16 master weights; use_rms_norm adds <linear>.rms_norm.weight (or leaves it out:
transformers then keeps its initial ones). Tokenizers: Qwen's ChatML byte-level BPE (no
BOS, <|im_end|> ends a turn), Mistral's Metaspace BPE with <s> and [INST] turns.
"""
import json
import os

import numpy as np
from conftest import BITNET_LINEARS, CORPUS, _metaspace_tokenizer, _randomize, absmean_ternary

QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)

FAMILIES = {
    "qwen2": dict(config="Qwen2Config", model="Qwen2ForCausalLM", tokenizer="qwen",
                  shape=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, rope_theta=1000000.0, rms_norm_eps=1e-6,
                             tie_word_embeddings=True, max_position_embeddings=256)),
    "qwen3": dict(config="Qwen3Config", model="Qwen3ForCausalLM", tokenizer="qwen",
                  shape=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=32, rope_theta=1000000.0, rms_norm_eps=1e-6,
                             tie_word_embeddings=True, max_position_embeddings=256)),
    "mistral": dict(config="MistralConfig", model="MistralForCausalLM", tokenizer="mistral",
                    shape=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=1, sliding_window=24, rope_theta=10000.0, rms_norm_eps=1e-5,
                               tie_word_embeddings=False, max_position_embeddings=256)),
    # the window split over threads in decode (a window of more than 2 x 128 positions)
    "mistral_long": dict(config="MistralConfig", model="MistralForCausalLM", tokenizer="mistral",
                         shape=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=1, sliding_window=300, rope_theta=10000.0,
                                    rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=1024)),
    "llama": dict(config="LlamaConfig", model="LlamaForCausalLM", tokenizer="qwen",
                  shape=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5,
                             tie_word_embeddings=False, max_position_embeddings=256)),
}
# Layouts beside the published defaults: Llama's attention_bias (q/k/v/o) and mlp_bias,
# Qwen3's attention_bias, and Qwen2 / Qwen3 mixing sliding and full attention layers
# (max_window_layers, as Qwen2.5 configs carry it; layer_types, as transformers 5 saves it).
FAMILIES.update({
    "llama_bias": dict(FAMILIES["llama"], shape=dict(FAMILIES["llama"]["shape"], attention_bias=True,
                                                     mlp_bias=True)),
    "qwen3_bias": dict(FAMILIES["qwen3"], shape=dict(FAMILIES["qwen3"]["shape"], attention_bias=True)),
    "qwen2_mixed": dict(FAMILIES["qwen2"], shape=dict(FAMILIES["qwen2"]["shape"], num_hidden_layers=3,
                                                      use_sliding_window=True, sliding_window=24,
                                                      max_window_layers=1)),
    "qwen3_layer_types": dict(FAMILIES["qwen3"], shape=dict(
        FAMILIES["qwen3"]["shape"], num_hidden_layers=3, use_sliding_window=True, sliding_window=20,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
})
# GGUF's Q6_K and k-quant blocks are 256 weights wide: the same families 256 wide, with
# Qwen2's real pre-tokenizer (its split regex + NFC) for the GGUF tokenizer tests.
_WIDE = dict(hidden_size=256, intermediate_size=512)
FAMILIES.update({
    "qwen2_256": dict(FAMILIES["qwen2"], tokenizer="qwen2", shape=dict(FAMILIES["qwen2"]["shape"], **_WIDE)),
    "qwen3_256": dict(FAMILIES["qwen3"], tokenizer="qwen2", shape=dict(FAMILIES["qwen3"]["shape"], **_WIDE,
                                                                       head_dim=128)),
    "mistral_256": dict(FAMILIES["mistral"], shape=dict(FAMILIES["mistral"]["shape"], **_WIDE)),
})
# Qwen2's tokenizer.json pre-tokenizer split (Qwen/Qwen2.5-*): contractions, letters with
# one leading non-letter, single digits, punctuation runs, newlines, spaces.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _template_into_config(folder, fast):
    """transformers 5 saves the chat template as chat_template.jinja; Hub repos of these
    families keep it in tokenizer_config.json: write it there."""
    jinja = os.path.join(folder, "chat_template.jinja")
    if os.path.exists(jinja):
        os.remove(jinja)
    path = os.path.join(folder, "tokenizer_config.json")
    cfg = json.load(open(path))
    cfg["chat_template"] = fast.chat_template
    return path, cfg


def _qwen_tokenizer(folder, real_split=False):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if real_split:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = QWEN_CHAT_TEMPLATE
    fast.save_pretrained(folder)
    path, cfg = _template_into_config(folder, fast)
    cfg.update(tokenizer_class="Qwen2Tokenizer", bos_token=None, add_prefix_space=False)
    json.dump(cfg, open(path, "w"), indent=1)
    return fast, None, fast.convert_tokens_to_ids("<|im_end|>")


def _mistral_tokenizer(folder):
    from transformers import PreTrainedTokenizerFast
    tok, special = _metaspace_tokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, add_bos_token=True, **special)
    fast.chat_template = MISTRAL_CHAT_TEMPLATE
    fast.save_pretrained(folder)
    path, cfg = _template_into_config(folder, fast)
    cfg.update(tokenizer_class="LlamaTokenizerFast", legacy=False, add_bos_token=True)
    json.dump(cfg, open(path, "w"), indent=1)
    return fast, fast.bos_token_id, fast.eos_token_id


def _bitnet_state(model, quant, seed, rms_weights):
    """The float model's state dict as the BitNet quantizer reads it (module docstring)."""
    import torch
    skip = quant.get("modules_to_not_convert") or []
    # a given list that does not name lm_head converts the head too (transformers' quantizer)
    head = quant.get("modules_to_not_convert") is not None and "lm_head" not in skip
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 7)
    for key in list(state):
        parts = key.rsplit(".", 2)
        linear = parts[-2] in BITNET_LINEARS or (head and key == "lm_head.weight")
        if parts[-1] != "weight" or not linear or any(s in key for s in skip):
            continue
        module = key[:-len(".weight")]
        w = state[key]
        linear_class = quant.get("linear_class", "bitlinear")       # BitNetQuantConfig's defaults
        if quant.get("quantization_mode", "offline") == "offline" or linear_class == "bitlinear":
            t, s_w = absmean_ternary(w.float().numpy())
            from ternlm.io.hf import pack_bitnet_weight
            state[key] = torch.from_numpy(pack_bitnet_weight(t))
            ws = s_w if linear_class == "bitlinear" else np.float32(1.0) / s_w
            state[module + ".weight_scale"] = torch.tensor([ws], dtype=torch.bfloat16)
        if quant.get("use_rms_norm") and rms_weights:
            state[module + ".rms_norm.weight"] = (1.0 + 0.2 * torch.randn(w.shape[1], generator=g)).to(torch.bfloat16)
    return state


def write_arch(folder, family, quant=None, seed=0, rms_weights=True):
    """A `family` folder (FAMILIES), float32 weights, or with quant (a quantization_config
    without quant_method) BitNet linears in that convention. Returns str(folder)."""
    import torch
    import transformers
    from safetensors.torch import save_file
    spec = FAMILIES[family]
    os.makedirs(folder, exist_ok=True)
    kind = spec["tokenizer"]
    fast, bos, eos = (_mistral_tokenizer(folder) if kind == "mistral" else
                      _qwen_tokenizer(folder, real_split=kind == "qwen2"))
    cfg = getattr(transformers, spec["config"])(vocab_size=len(fast), bos_token_id=bos, eos_token_id=eos,
                                                **spec["shape"])
    torch.manual_seed(seed)
    model = getattr(transformers, spec["model"])(cfg)
    _randomize(model, seed, scale=0.1 if quant else 0.08)
    if quant is None:
        model.save_pretrained(folder)
    else:
        state = _bitnet_state(model, quant, seed, rms_weights)
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)     # as save_pretrained writes a tied model
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        cfg.architectures = [spec["model"]]
        cfg.quantization_config = {"quant_method": "bitnet", **quant}
        cfg.dtype = torch.bfloat16
        cfg.save_pretrained(folder)
    transformers.GenerationConfig(bos_token_id=bos, eos_token_id=[eos]).save_pretrained(folder)
    return str(folder)


def random_ids(n, vocab, seed):
    """n token ids in [3, vocab) from seed (ids below 3 are the special tokens)."""
    import numpy as np
    return np.random.default_rng(seed).integers(3, vocab, n).tolist()


def assert_close(ours, ref, label, quantized, rel_tol=1e-4):
    """Logits ours vs transformers' ref: float models within rel_tol of max|logit|; quantized
    ones (int8 activation ties) within 2e-2 with argmax agreement >= 95%. -> True if they also
    agree to float precision."""
    import numpy as np
    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
    agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    print(f"{label}: max |diff| / max|logit| = {rel:.2e}, argmax agreement {agree:.3f}")
    if not quantized:
        assert rel < rel_tol
    else:
        assert rel < 2e-2 and agree >= 0.95
    return rel < 1e-5
