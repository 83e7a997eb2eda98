"""Qwen2.5 and Qwen3, dense and MoE (seed: conf/Qwen/*.sh; facts: each model's
config.json on the Hugging Face Hub). All use RMSNorm eps 1e-6, SwiGLU and rope_theta 1e6."""

from __future__ import annotations

from ...spec.arch import Attention, ModelArch, MoE, Norm, RoPE, Vocab
from ._seed import HF_MODEL_CKPT, TOKENIZER_MODEL, dev, norm_eps, seeded

_EPS = Norm(epsilon=1e-6)
_ROPE = RoPE(base=1_000_000)

MODELS: list[ModelArch] = [
    # Qwen/Qwen2.5-0.5B-Instruct: 24 layers, 896 hidden, GQA 14/2 (head 64), QKV bias, tied embeddings.
    seeded(
        ModelArch(
            name="qwen2.5-0.5b-instruct",
            hf_id="Qwen/Qwen2.5-0.5B-Instruct",
            family="qwen",
            num_layers=24, hidden_size=896, ffn_hidden_size=4864,
            attention=Attention(num_heads=14, num_query_groups=2, kv_channels=64, qkv_bias=True),
            position=_ROPE, norm=_EPS, tie_embeddings=True,
            vocab=Vocab(size=151936, padded_size=151936, divisible_by=1),
            seq_length=4096, max_position_embeddings=32768,
        ),
        "Qwen/Qwen2.5-0.5B-Instruct",
        dev(HF_MODEL_CKPT, "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct",
            "the seed's Instruct file defaults to the base checkpoint"),
        dev(TOKENIZER_MODEL, "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct",
            "the Instruct tokenizer carries the chat template"),
        norm_eps("1e-06"),
    ),
    # Qwen/Qwen2.5-7B-Instruct: 28 layers, 3584 hidden, GQA 28/4 (head 128), QKV bias, untied.
    seeded(
        ModelArch(
            name="qwen2.5-7b-instruct",
            hf_id="Qwen/Qwen2.5-7B-Instruct",
            family="qwen",
            num_layers=28, hidden_size=3584, ffn_hidden_size=18944,
            attention=Attention(num_heads=28, num_query_groups=4, kv_channels=128, qkv_bias=True),
            position=_ROPE, norm=_EPS,
            vocab=Vocab(size=152064, padded_size=152064, divisible_by=1),
            seq_length=4096, max_position_embeddings=32768,
        ),
        "Qwen/Qwen2.5-7B-Instruct",
        norm_eps("1e-06"),
    ),
    # Qwen/Qwen3-0.6B: 28 layers, 1024 hidden, GQA 16/8 with head_dim 128 (not 1024/16), QK norm, tied.
    # Vocab 151936 = 1187 * 128, hence the seed's odd --make-vocab-size-divisible-by 1187.
    seeded(
        ModelArch(
            name="qwen3-0.6b",
            hf_id="Qwen/Qwen3-0.6B",
            family="qwen",
            num_layers=28, hidden_size=1024, ffn_hidden_size=3072,
            attention=Attention(num_heads=16, num_query_groups=8, kv_channels=128, qk_layernorm=True),
            position=_ROPE, norm=_EPS, tie_embeddings=True,
            vocab=Vocab(size=151936, divisible_by=1187),
            seq_length=4096, max_position_embeddings=40960,
        ),
        "Qwen/Qwen3-0.6B",
        norm_eps("1e-06"),
    ),
    # Qwen/Qwen3-8B: 36 layers, 4096 hidden, GQA 32/8 (head 128), QK norm, untied.
    seeded(
        ModelArch(
            name="qwen3-8b",
            hf_id="Qwen/Qwen3-8B",
            family="qwen",
            num_layers=36, hidden_size=4096, ffn_hidden_size=12288,
            attention=Attention(num_heads=32, num_query_groups=8, kv_channels=128, qk_layernorm=True),
            position=_ROPE, norm=_EPS,
            vocab=Vocab(size=151936, divisible_by=1187),
            seq_length=4096, max_position_embeddings=40960,
        ),
        "Qwen/Qwen3-8B",
        norm_eps("1e-06"),
    ),
    # Qwen/Qwen3-30B-A3B: 48 layers, 2048 hidden, GQA 32/4 (head 128), every layer MoE: 128 experts,
    # top-8, expert 768. ffn_hidden_size 6144 mirrors HF intermediate_size, which no layer uses.
    seeded(
        ModelArch(
            name="qwen3-30b-a3b",
            hf_id="Qwen/Qwen3-30B-A3B",
            family="qwen",
            num_layers=48, hidden_size=2048, ffn_hidden_size=6144,
            attention=Attention(num_heads=32, num_query_groups=4, kv_channels=128, qk_layernorm=True),
            moe=MoE(num_experts=128, router_topk=8, ffn_hidden_size=768, router_dtype="fp32"),
            position=_ROPE, norm=_EPS,
            vocab=Vocab(size=151936, divisible_by=1187),
            seq_length=4096, max_position_embeddings=40960,
        ),
        "Qwen/Qwen3-30B-A3B",
        norm_eps("1e-06"),
    ),
    # Qwen/Qwen3-235B-A22B: 94 layers, 4096 hidden, GQA 64/4 (head 128), 128 experts, top-8, expert 1536.
    seeded(
        ModelArch(
            name="qwen3-235b-a22b",
            hf_id="Qwen/Qwen3-235B-A22B",
            family="qwen",
            num_layers=94, hidden_size=4096, ffn_hidden_size=12288,
            attention=Attention(num_heads=64, num_query_groups=4, kv_channels=128, qk_layernorm=True),
            moe=MoE(num_experts=128, router_topk=8, ffn_hidden_size=1536, router_dtype="fp32"),
            position=_ROPE, norm=_EPS,
            vocab=Vocab(size=151936, divisible_by=1187),
            seq_length=4096, max_position_embeddings=40960,
        ),
        "Qwen/Qwen3-235B-A22B",
        norm_eps("1e-06"),
    ),
]
