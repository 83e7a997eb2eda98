"""Mistral Mixtral (the seed's early-layout family `mixtral`; no conf file at HEAD; facts: HF config.json
of mistralai/Mixtral-8x7B-v0.1 on the Hugging Face Hub)."""

from __future__ import annotations

from ...spec.arch import Attention, ModelArch, MoE, RoPE, Vocab

MODELS: list[ModelArch] = [
    # mistralai/Mixtral-8x7B-v0.1: 32 layers, 4096 hidden, GQA 32/8, 8 experts of 14336, top-2 softmax,
    # rope_theta 1e6, vocab 32000, untied.
    ModelArch(
        name="mixtral-8x7b-v0.1",
        hf_id="mistralai/Mixtral-8x7B-v0.1",
        family="mixtral",
        aliases=("mixtral", "mixtral-8x7b"),
        num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
        attention=Attention(num_heads=32, num_query_groups=8),
        moe=MoE(num_experts=8, router_topk=2, ffn_hidden_size=14336),
        position=RoPE(base=1_000_000),
        vocab=Vocab(size=32000),
        seq_length=4096, max_position_embeddings=32768,
        notes=("no seed conf file; the early layout's `mixtral` family",),
    ),
]
