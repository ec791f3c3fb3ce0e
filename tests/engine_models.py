"""Tiny random transformers models built in memory for the engine tests, and their
state_dict mapped to ternlm's canonical tensor names (ternlm/schema.py), independently
of the schema's own Hugging Face names."""
import numpy as np

from ternlm.config import ModelConfig

HF_TO_CANONICAL = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
    "self_attn.attn_sub_norm": "attn_sub_norm",
    "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down", "mlp.ffn_sub_norm": "ffn_sub_norm",
}

LLAMA_VARIANTS = {
    "gqa_untied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "mha_tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    # Llama 3 rope scaling, explicit head_dim (q width 128 != hidden 64), one KV head
    "llama3_scaled": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=32, tie_word_embeddings=False,
                          rope_theta=500000.0,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    # sizes that are no multiple of any vector width: every SIMD tail path runs
    "odd_sizes": dict(hidden_size=72, intermediate_size=100, num_attention_heads=3, num_key_value_heads=1,
                      head_dim=10, tie_word_embeddings=False),
}
BITNET_VARIANTS = {
    "bitnet_untied": dict(tie_word_embeddings=False),
    "bitnet_tied": dict(tie_word_embeddings=True),
}
VOCAB = 97


def _randomize(model, seed, scale=0.08):
    """Spread-out weights so logits are far from uniform and greedy decoding is meaningful."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g) * (3.0 if "embed" in name else 1.0))


def build_hf(name, seed=0):
    """(float32 transformers model in eval mode, ternlm ModelConfig)."""
    import torch
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    if name in LLAMA_VARIANTS:
        from transformers import LlamaConfig, LlamaForCausalLM
        kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                      attn_implementation="eager")
        kwargs.update(LLAMA_VARIANTS[name])
        cfg = LlamaConfig(**kwargs)
        model = LlamaForCausalLM(cfg)
        arch, act = "llama", "silu"
    else:
        from transformers import BitNetConfig, BitNetForCausalLM
        cfg = BitNetConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           bos_token_id=1, eos_token_id=2, attn_implementation="eager", **BITNET_VARIANTS[name])
        model = BitNetForCausalLM(cfg)
        arch, act = "bitnet", "relu2"
    _randomize(model, seed, scale=0.1 if arch == "bitnet" else 0.08)
    model = model.float().eval()
    heads = cfg.num_attention_heads
    rope = LLAMA_VARIANTS.get(name, {}).get("rope_scaling")
    mc = ModelConfig(arch=arch, vocab_size=VOCAB, hidden_size=cfg.hidden_size,
                     intermediate_size=cfg.intermediate_size, num_layers=cfg.num_hidden_layers,
                     num_heads=heads, num_kv_heads=cfg.num_key_value_heads,
                     head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
                     rms_norm_eps=cfg.rms_norm_eps,
                     rope_theta=LLAMA_VARIANTS.get(name, {}).get("rope_theta", 10000.0 if arch == "llama" else 500000.0),
                     rope_scaling=dict(rope) if rope else None, max_position_embeddings=512, hidden_act=act,
                     tie_word_embeddings=cfg.tie_word_embeddings, bos_token_id=1, eos_token_ids=[2])
    return model, mc


def canonical_arrays(model, mc: ModelConfig) -> dict:
    """state_dict -> canonical name -> float32 numpy array."""
    out = {}
    for key, value in model.state_dict().items():
        a = value.detach().float().numpy().copy()
        if key == "model.embed_tokens.weight":
            out["embed"] = a
        elif key == "model.norm.weight":
            out["norm"] = a
        elif key == "lm_head.weight":
            if not mc.tie_word_embeddings:
                out["lm_head"] = a
        elif key.startswith("model.layers."):
            rest = key[len("model.layers."):]
            i, sub = rest.split(".", 1)
            sub = sub[:-len(".weight")]
            out[f"layers.{i}.{HF_TO_CANONICAL[sub]}"] = a
        else:
            raise KeyError(key)
    assert sorted(out) == sorted(mc.tensor_names())
    return out


def engine_tensors(arrays: dict, fmt="f32", formats=None) -> dict:
    """Canonical arrays -> what _core.Transformer takes (matrices quantized, norms float32)."""
    import ternlm
    formats = formats or {}
    return {name: (ternlm.quantize(a, formats.get(name, fmt)) if a.ndim == 2 else a.astype(np.float32))
            for name, a in arrays.items()}
