"""Meta Llama 3.x and 4 (seed: conf/meta-llama/*.sh; facts: HF config.json)."""

from __future__ import annotations

from ...spec.arch import Attention, Llama3Scaling, ModelArch, RoPE, Vocab

MODELS: list[ModelArch] = [
    # meta-llama/Llama-3.1-8B-Instruct: 32 layers, 4096 hidden, GQA 32/8, rope 500000 with llama3 scaling 8.
    ModelArch(
        name="llama-3.1-8b-instruct",
        hf_id="meta-llama/Llama-3.1-8B-Instruct",
        family="llama",
        num_layers=32,
        hidden_size=4096,
        ffn_hidden_size=14336,
        attention=Attention(num_heads=32, num_query_groups=8),
        position=RoPE(base=500000, scaling=Llama3Scaling(factor=8.0)),
        vocab=Vocab(size=128256, divisible_by=1),
        seq_length=4096,
        max_position_embeddings=8192,
        notes=("tokenizer: the checkpoint's own (the seed falls back to nvidia/Llama-3.1-70B-Instruct-FP8)",),
    ),
]
