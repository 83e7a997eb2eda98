"""DeepSeek-V2-Lite and DeepSeek-R1 (V3 architecture): multi-latent attention + MoE with YaRN
(seed: conf/deepseek-ai/*.sh; facts: each model's config.json on the Hugging Face Hub)."""

from __future__ import annotations

from ...spec.arch import MLAttention, ModelArch, MoE, Norm, RoPE, Vocab, YarnScaling
from ._seed import HF_MODEL_CKPT, dev, norm_eps, seeded

MODELS: list[ModelArch] = [
    # deepseek-ai/DeepSeek-R1 (model_type deepseek_v3): 61 layers, 7168 hidden, MLA 128 heads
    # (q_lora 1536, kv_lora 512, qk 128 + rope 64, v 128); first 3 layers dense, then 256 experts, top-8,
    # expert 2048 + one shared 2048; sigmoid router with expert bias, 8 groups / top-4 groups, scale 2.5;
    # YaRN factor 40 (original 4096, beta 32/1, mscale 1/1). The MTP layer (num_nextn_predict_layers 1)
    # is not part of the model Megatron builds here.
    seeded(
        ModelArch(
            name="deepseek-r1",
            hf_id="deepseek-ai/DeepSeek-R1",
            family="deepseek",
            num_layers=61, hidden_size=7168, ffn_hidden_size=18432,
            attention=MLAttention(
                num_heads=128, q_lora_rank=1536, kv_lora_rank=512,
                qk_head_dim=128, qk_pos_emb_head_dim=64, v_head_dim=128,
            ),
            moe=MoE(
                num_experts=256, router_topk=8, ffn_hidden_size=2048, shared_expert_ffn_size=2048,
                layer_freq="[0]*3+[1]*58", router_score_function="sigmoid", router_dtype="fp32",
                router_enable_expert_bias=True, router_num_groups=8, router_group_topk=4,
                router_pre_softmax=True, router_topk_scaling_factor=2.5, load_balancing_type="seq_aux_loss",
            ),
            position=RoPE(
                base=10000,
                scaling=YarnScaling(factor=40, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1,
                                    mscale=1.0, mscale_all_dim=1.0),
            ),
            norm=Norm(epsilon=1e-6),
            vocab=Vocab(size=129280, divisible_by=1280),
            seq_length=4096, max_position_embeddings=163840,
        ),
        "deepseek-ai/DeepSeek-R1",
        dev(HF_MODEL_CKPT, None, "deepseek-ai/DeepSeek-R1",
            "the seed sets no checkpoint default, so an HF import without HF_MODEL_CKPT fails"),
        norm_eps("1e-06"),
    ),
    # deepseek-ai/DeepSeek-V2-Lite: 27 layers, 2048 hidden, MLA 16 heads without q compression
    # (kv_lora 512, qk 128 + rope 64, v 128); first layer dense, then 64 experts, top-6, expert 1408 + two
    # shared (2816); softmax router, scale 1.0; YaRN factor 40 with mscale 0.707/0.707.
    seeded(
        ModelArch(
            name="deepseek-v2-lite",
            hf_id="deepseek-ai/DeepSeek-V2-Lite",
            family="deepseek",
            num_layers=27, hidden_size=2048, ffn_hidden_size=10944,
            attention=MLAttention(
                num_heads=16, kv_lora_rank=512, qk_head_dim=128, qk_pos_emb_head_dim=64, v_head_dim=128,
                softmax_in_fp32=True,
            ),
            moe=MoE(
                num_experts=64, router_topk=6, ffn_hidden_size=1408, shared_expert_ffn_size=2816,
                layer_freq="([0]+[1]*26)", router_score_function="softmax", router_pre_softmax=True,
                router_topk_scaling_factor=1.0, load_balancing_type="seq_aux_loss", grouped_gemm=True,
            ),
            position=RoPE(
                base=10000,
                scaling=YarnScaling(factor=40, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1,
                                    mscale=0.707, mscale_all_dim=0.707),
            ),
            norm=Norm(epsilon=1e-6),
            vocab=Vocab(size=102400, divisible_by=3200),
            seq_length=1024, max_position_embeddings=1024,
            notes=(
                "the seed's --kv-channels 16 is unused under multi-latent attention and is not emitted",
                "seq_length/max_position_embeddings keep the seed's 1024 (HF allows 163840)",
            ),
        ),
        "deepseek-ai/DeepSeek-V2-Lite",
        dev(HF_MODEL_CKPT, None, "deepseek-ai/DeepSeek-V2-Lite",
            "the seed sets no checkpoint default, so an HF import without HF_MODEL_CKPT fails"),
    ),
]
