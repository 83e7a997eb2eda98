"""OpenAI gpt-oss (seed: conf/openai/*.sh; facts: each model's config.json on the Hugging Face Hub).

Alternating sliding-window (128 incl. self = Megatron window (127, 0)) and full attention, attention sinks
(learnable softmax offset), biases on every linear, MoE with clamped quick-GeGLU experts, YaRN RoPE
(factor 32, original 4096, beta 32/1)."""

from __future__ import annotations

import attrs

from ...spec.arch import Activation, Attention, ModelArch, MoE, Quirks, RoPE, Vocab, YarnScaling
from ._seed import HF_MODEL_CKPT, TOKENIZER_MODEL, dev, seeded

_GPT_OSS_20B = ModelArch(
    name="gpt-oss-20b",
    hf_id="openai/gpt-oss-20b",
    family="gpt-oss",
    num_layers=24, hidden_size=2880, ffn_hidden_size=2880,
    attention=Attention(
        num_heads=64, num_query_groups=8, kv_channels=64, softmax_type="learnable",
        window_size=(127, 0), window_attn_skip_freq=2,
    ),
    moe=MoE(num_experts=32, router_topk=4, ffn_hidden_size=2880, router_dtype="fp32"),
    position=RoPE(
        base=150000,
        scaling=YarnScaling(factor=32, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1),
    ),
    activation=Activation(type="quick_geglu", glu_linear_offset=1.0, clamp_value=7.0),
    add_bias_linear=True,
    vocab=Vocab(size=201088, padded_size=201088, divisible_by=128),
    seq_length=4096, max_position_embeddings=40960,
    quirks=Quirks(gpt_oss=True, export_force_local_attention=True),
    notes=(
        ("YaRN original_max_position_embeddings=4096 (HF): the seed's --enable-gpt-oss builder sets 131072 and no "
         "flag overrides it (bridges.megatron_flags.unexpressible lists it)"),
        "max_position_embeddings keeps the seed's 40960 (HF 131072)",
    ),
)

MODELS: list[ModelArch] = [
    # openai/gpt-oss-20b: 24 layers, 2880 hidden, GQA 64/8 (head 64), 32 experts, top-4, expert 2880.
    seeded(_GPT_OSS_20B, "openai/gpt-oss-20b"),
    # openai/gpt-oss-120b: 36 layers, 128 experts, otherwise as 20b.
    seeded(
        attrs.evolve(
            _GPT_OSS_20B,
            name="gpt-oss-120b",
            hf_id="openai/gpt-oss-120b",
            num_layers=36,
            moe=attrs.evolve(_GPT_OSS_20B.moe, num_experts=128) if _GPT_OSS_20B.moe is not None else None,
        ),
        "openai/gpt-oss-120b",
        dev(HF_MODEL_CKPT, "openai/gpt-oss-20b", "openai/gpt-oss-120b",
            "copy-paste bug in the seed: the 120b file loads the 20b checkpoint"),
        dev(TOKENIZER_MODEL, "openai/gpt-oss-20b", "openai/gpt-oss-120b", "follows the checkpoint"),
    ),
]
