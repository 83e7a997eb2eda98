"""Moonshot Kimi-K2 (DeepSeek-V3 architecture at 1T parameters) (seed: conf/moonshotai/Kimi-K2-Instruct.sh;
facts: each model's config.json on the Hugging Face Hub). The two ``kimi_k2_instruct*`` files beside it
are launch profiles, not models: see ``catalog/profiles.py``."""

from __future__ import annotations

from ...spec.arch import MLAttention, ModelArch, MoE, Norm, RoPE, Vocab, YarnScaling
from ._seed import HF_MODEL_CKPT, dev, norm_eps, seeded

MODELS: list[ModelArch] = [
    # moonshotai/Kimi-K2-Instruct: 61 layers, 7168 hidden, MLA 64 heads (q_lora 1536, kv_lora 512,
    # qk 128 + rope 64, v 128); first layer dense, then 384 experts, top-8, expert 2048 + one shared 2048;
    # sigmoid router with expert bias, no groups, scale 2.827; YaRN factor 32 with beta_fast 1 and
    # beta_slow 1 (not DeepSeek's 32/1), mscale 1/1; remote code.
    seeded(
        ModelArch(
            name="kimi-k2-instruct",
            hf_id="moonshotai/Kimi-K2-Instruct",
            family="kimi",
            aliases=("kimi-k2",),
            trust_remote_code=True,
            num_layers=61, hidden_size=7168, ffn_hidden_size=18432,
            attention=MLAttention(
                num_heads=64, q_lora_rank=1536, kv_lora_rank=512,
                qk_head_dim=128, qk_pos_emb_head_dim=64, v_head_dim=128,
            ),
            moe=MoE(
                num_experts=384, router_topk=8, ffn_hidden_size=2048, shared_expert_ffn_size=2048,
                layer_freq="[0]*1+[1]*60", router_score_function="sigmoid", router_dtype="fp32",
                router_enable_expert_bias=True, router_pre_softmax=True, router_topk_scaling_factor=2.827,
                load_balancing_type="seq_aux_loss",
            ),
            position=RoPE(
                base=50000,
                scaling=YarnScaling(factor=32, original_max_position_embeddings=4096, beta_fast=1, beta_slow=1,
                                    mscale=1.0, mscale_all_dim=1.0),
            ),
            norm=Norm(epsilon=1e-6),
            vocab=Vocab(size=163840, padded_size=163840, divisible_by=1),
            seq_length=4096, max_position_embeddings=131072,
            notes=(
                ("YaRN beta_fast=1 (HF) has no Megatron flag: MLATransformerConfig.beta_fast defaults to 32, so "
                 "a runtime must set it on the config (bridges.megatron_flags.unexpressible lists it)"),
            ),
        ),
        "moonshotai/Kimi-K2-Instruct",
        dev(HF_MODEL_CKPT, None, "moonshotai/Kimi-K2-Instruct",
            "the seed sets no checkpoint default, so an HF import without HF_MODEL_CKPT fails"),
        norm_eps("1e-06"),
    ),
]
