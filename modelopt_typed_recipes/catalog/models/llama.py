"""Meta Llama 3.x and Llama 4 (seed: conf/meta-llama/*.sh; facts: each
model's config.json on the Hugging Face Hub)."""

from __future__ import annotations

from ...spec.arch import Attention, Llama3Scaling, ModelArch, MoE, Quirks, RoPE, Vocab
from ._seed import PRE_SCALING, TOKENIZER_MODEL, Deviation, dev, max_positions_note, seeded

_TOKENIZER_PROXY = "nvidia/Llama-3.1-70B-Instruct-FP8"


def _own_tokenizer(hf_id: str) -> Deviation:
    return dev(
        TOKENIZER_MODEL, _TOKENIZER_PROXY, hf_id,
        "the seed borrows another model's (ungated) tokenizer; the checkpoint's own is the right one",
    )


MODELS: list[ModelArch] = [
    # meta-llama/Llama-3.1-8B-Instruct: 32 layers, 4096 hidden, GQA 32/8, rope 500000, llama3 scaling 8
    # (low 1, high 4, original 8192). max_position_embeddings keeps Megatron's pre-scaling 8192.
    seeded(
        ModelArch(
            name="llama-3.1-8b-instruct",
            hf_id="meta-llama/Llama-3.1-8B-Instruct",
            family="llama",
            aliases=("llama3.1-8b",),
            num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
            attention=Attention(num_heads=32, num_query_groups=8),
            position=RoPE(base=500000, scaling=Llama3Scaling(factor=8.0)),
            vocab=Vocab(size=128256, divisible_by=1),
            seq_length=4096, max_position_embeddings=8192,
            notes=(max_positions_note(8192, 131072, PRE_SCALING),),
        ),
        "meta-llama/Llama-3.1-8B-Instruct",
        _own_tokenizer("meta-llama/Llama-3.1-8B-Instruct"),
    ),
    # meta-llama/Llama-3.2-1B-Instruct: 16 layers, 2048 hidden, GQA 32/8 (head 64), tied embeddings,
    # llama3 scaling factor 32 (HF rope_scaling.factor).
    seeded(
        ModelArch(
            name="llama-3.2-1b-instruct",
            hf_id="meta-llama/Llama-3.2-1B-Instruct",
            family="llama",
            aliases=("llama3.2-1b",),
            num_layers=16, hidden_size=2048, ffn_hidden_size=8192,
            attention=Attention(num_heads=32, num_query_groups=8),
            position=RoPE(base=500000, scaling=Llama3Scaling(factor=32.0)),
            tie_embeddings=True,
            vocab=Vocab(size=128256, divisible_by=1),
            seq_length=4096, max_position_embeddings=8192,
            notes=(max_positions_note(8192, 131072, PRE_SCALING),),
        ),
        "meta-llama/Llama-3.2-1B-Instruct",
        _own_tokenizer("meta-llama/Llama-3.2-1B-Instruct"),
        dev("--rope-scaling-factor", None, "32.0",
            "HF rope_scaling.factor is 32; the seed's bare --use-rope-scaling gets Megatron's default 8"),
    ),
    # meta-llama/Llama-3.1-405B-Instruct: in the seed's support matrix without a conf file. 126 layers,
    # 16384 hidden, 53248 ffn, GQA 128/8, llama3 scaling 8 (values from the base 405B config.json).
    ModelArch(
        name="llama-3.1-405b-instruct",
        hf_id="meta-llama/Llama-3.1-405B-Instruct",
        family="llama",
        aliases=("llama3.1-405b",),
        num_layers=126, hidden_size=16384, ffn_hidden_size=53248,
        attention=Attention(num_heads=128, num_query_groups=8),
        position=RoPE(base=500000, scaling=Llama3Scaling(factor=8.0)),
        vocab=Vocab(size=128256, divisible_by=1),
        seq_length=4096, max_position_embeddings=8192,
        notes=(
            "no seed conf file; architecture from the Meta-Llama-3.1-405B config.json (same shape)",
            max_positions_note(8192, 131072, "as the other Llama-3.1 entries: " + PRE_SCALING),
        ),
    ),
    # meta-llama/Meta-Llama-3-8B (family name `llama3` of the seed's early layout): the 3.1-8B shape with
    # an 8192-token context and no rope scaling.
    ModelArch(
        name="meta-llama-3-8b",
        hf_id="meta-llama/Meta-Llama-3-8B",
        family="llama",
        aliases=("llama3", "llama-3-8b"),
        num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
        attention=Attention(num_heads=32, num_query_groups=8),
        position=RoPE(base=500000),
        vocab=Vocab(size=128256, divisible_by=1),
        seq_length=4096, max_position_embeddings=8192,
        notes=("no seed conf file; the early layout's `llama3` family (Llama-3 8B, rope_theta 500000, no scaling)",),
    ),
    # meta-llama/Llama-4-Scout-17B-16E-Instruct (text model): 48 layers, 5120 hidden, GQA 40/8 (head 128),
    # QK norm, every layer MoE (16 experts, top-1, expert 8192, shared 8192), llama3 scaling 16 with
    # high_freq_factor 1 (HF rope_scaling).
    seeded(
        ModelArch(
            name="llama-4-scout-17b-16e-instruct",
            hf_id="meta-llama/Llama-4-Scout-17B-16E-Instruct",
            family="llama4",
            aliases=("llama4-scout", "llama-4-scout"),
            num_layers=48, hidden_size=5120, ffn_hidden_size=16384,
            attention=Attention(num_heads=40, num_query_groups=8, qk_layernorm=True),
            moe=MoE(
                num_experts=16, router_topk=1, ffn_hidden_size=8192, shared_expert_ffn_size=8192,
                router_score_function="sigmoid", router_dtype="fp32", router_topk_scaling_factor=1.0,
                load_balancing_type="seq_aux_loss",
            ),
            position=RoPE(
                base=500000, interleaved=True, no_rope_freq=4,
                scaling=Llama3Scaling(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0),
            ),
            vocab=Vocab(size=202048, padded_size=202048, divisible_by=128),
            seq_length=4096, max_position_embeddings=4096,
            quirks=Quirks(export_qk_l2_norm=True, export_moe_apply_probs_on_input=True),
            notes=(
                "high_freq_factor=1.0 (HF) cannot be passed to Megatron, which hard-codes 4",
                "HF attention_chunk_size 8192 (chunked attention) is not modelled; seq_length 4096 stays below it",
                "params exclude the vision encoder (about 0.9B of the published 109B)",
                max_positions_note(4096, 10485760, "Megatron-LM's conf file sets 4096 (it sizes Megatron's RoPE "
                                   "cache; seq_length is what a run uses); config.json gives the 10M-token context"),
            ),
        ),
        "meta-llama/Llama-4-Scout-17B-16E-Instruct",
        dev("--rope-scaling-factor", "8.0", "16.0", "HF rope_scaling.factor is 16"),
        dev("--no-rope-freq", None, "4", "Llama-4 text models put a NoPE layer every 4th layer (iRoPE), as "
            "transformers' Llama4 config and Maverick's seed file do; Scout's seed file leaves it out"),
    ),
    # meta-llama/Llama-4-Maverick-17B-128E-Instruct (text model): like Scout but 128 experts on every
    # other layer (interleave_moe_layer_step 2), no QK norm, rope_scaling null, NoPE every 4th layer.
    seeded(
        ModelArch(
            name="llama-4-maverick-17b-128e-instruct",
            hf_id="meta-llama/Llama-4-Maverick-17B-128E-Instruct",
            family="llama4",
            aliases=("llama4-maverick", "llama-4-maverick"),
            num_layers=48, hidden_size=5120, ffn_hidden_size=16384,
            attention=Attention(num_heads=40, num_query_groups=8),
            moe=MoE(
                num_experts=128, router_topk=1, ffn_hidden_size=8192, shared_expert_ffn_size=8192,
                layer_freq="([0,1]*24)",
                router_score_function="sigmoid", router_dtype="fp32", router_topk_scaling_factor=1.0,
                load_balancing_type="seq_aux_loss",
            ),
            position=RoPE(base=500000, interleaved=True, no_rope_freq=4),
            vocab=Vocab(size=202048, padded_size=202048, divisible_by=1),
            seq_length=2048, max_position_embeddings=2048,
            quirks=Quirks(export_moe_apply_probs_on_input=True),
            notes=(
                ("the seed's --rope-scaling-factor 8.0 without --use-rope-scaling does nothing (HF rope_scaling "
                 "is null); it is Megatron's default, so leaving it out is the same model"),
                "params exclude the vision encoder",
                max_positions_note(2048, 1048576, "Megatron-LM's conf file sets 2048 (it sizes Megatron's RoPE "
                                   "cache; seq_length is what a run uses); config.json gives the 1M-token context"),
            ),
        ),
        "meta-llama/Llama-4-Maverick-17B-128E-Instruct",
    ),
]
