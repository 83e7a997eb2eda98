"""EleutherAI GPT-NeoX (the seed's early-layout family `gptneox`; no conf file at HEAD; facts: HF config.json
of EleutherAI/gpt-neox-20b on the Hugging Face Hub)."""

from __future__ import annotations

from ...spec.arch import Activation, Attention, ModelArch, Norm, RoPE, Vocab

MODELS: list[ModelArch] = [
    # EleutherAI/gpt-neox-20b: 44 layers, 6144 hidden, 64 heads (MHA, head 96), LayerNorm, GeLU, biases on
    # every linear, RoPE on 25% of each head, 2048 context, 50432 embedding rows (50257 tokens padded).
    ModelArch(
        name="gpt-neox-20b",
        hf_id="EleutherAI/gpt-neox-20b",
        family="gptneox",
        aliases=("gptneox", "neox-20b"),
        num_layers=44, hidden_size=6144, ffn_hidden_size=24576,
        attention=Attention(num_heads=64),
        position=RoPE(base=10000, percent=0.25),
        norm=Norm(type="layernorm", epsilon=1e-5),
        activation=Activation(type="gelu_tanh"),  # hidden_act gelu_fast: the tanh approximation
        add_bias_linear=True,
        vocab=Vocab(size=50432, divisible_by=1),
        seq_length=2048, max_position_embeddings=2048,
        notes=(
            "no seed conf file; the early layout's `gptneox` family",
            ("GPT-NeoX adds attention and MLP in parallel (use_parallel_residual); Megatron-Core's GPT layer is "
             "sequential, so a Megatron model with these flags computes differently from the checkpoint"),
        ),
    ),
]
