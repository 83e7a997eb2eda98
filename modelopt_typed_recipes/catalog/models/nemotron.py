"""NVIDIA Nemotron: Nemotron-Mini (dense), Nemotron-H and Nemotron-Nano-v2 (hybrid Mamba-2), Nemotron-3
(hybrid Mamba-2 + MoE, latent MoE for Super/Ultra) (seed: conf/nvidia/*.sh; facts: each model's
config.json on the Hugging Face Hub, Megatron-side values where no HF config was readable).

Pattern symbols: M Mamba-2, * attention, - MLP, E MoE. The attention layers of the hybrids use no
position embedding (Megatron-Bridge: "Mamba doesn't use position embeddings")."""

from __future__ import annotations

import attrs

from ...spec.arch import Activation, Attention, Mamba, ModelArch, MoE, Norm, RoPE, Vocab
from ._seed import HF_MODEL_CKPT, TOKENIZER_MODEL, Deviation, dev, max_positions_note, seeded

_RELU2 = Activation(type="squared_relu")
_NEMOTRON3_POSITIONS = (
    "Megatron-LM's conf file sets 8192, its sequence length; config.json gives the 256K-token context "
    "(the hybrid's attention has no RoPE, so the value sizes nothing)"
)
_NEMOTRON_VOCAB = 131072


def _no_rope(percent: str, base: str) -> tuple[Deviation, ...]:
    why = ("Nemotron-H attention layers use no position embedding (HF NemotronH has no rope keys; "
           "Megatron-Bridge sets position_embedding_type 'none')")
    return (
        dev("--position-embedding-type", "rope", "none", why),
        dev("--rotary-percent", percent, None, "no RoPE: " + why),
        dev("--rotary-base", base, None, "no RoPE: " + why),
    )


_H_SMALL_PATTERN = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"

_NANO_V2 = ModelArch(
    name="nvidia-nemotron-nano-9b-v2",
    hf_id="nvidia/NVIDIA-Nemotron-Nano-9B-v2",
    family="nemotron-h",
    aliases=("nemotron-nano-9b-v2",),
    trust_remote_code=True,
    num_layers=56, hidden_size=4480, ffn_hidden_size=15680,
    attention=Attention(num_heads=40, num_query_groups=8, kv_channels=128),
    mamba=Mamba(
        pattern="M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-",
        num_heads=128, head_dim=80, num_groups=8, state_dim=128,
    ),
    position=None, activation=_RELU2,
    vocab=Vocab(size=_NEMOTRON_VOCAB, padded_size=131072, divisible_by=1),
    seq_length=4096, max_position_embeddings=131072,
)

MODELS: list[ModelArch] = [
    # nvidia/Nemotron-Mini-4B-Instruct (model_type nemotron): 32 layers, 3072 hidden, GQA 24/8,
    # LayerNorm1P, squared ReLU, RoPE on half the head (partial_rotary_factor 0.5), base 10000.
    seeded(
        ModelArch(
            name="nemotron-mini-4b-instruct",
            hf_id="nvidia/Nemotron-Mini-4B-Instruct",
            family="nemotron",
            trust_remote_code=True,
            num_layers=32, hidden_size=3072, ffn_hidden_size=9216,
            attention=Attention(num_heads=24, num_query_groups=8),
            position=RoPE(base=10000, percent=0.5),
            norm=Norm(type="layernorm1p"), activation=_RELU2,
            vocab=Vocab(size=256000, divisible_by=1),
            seq_length=4096, max_position_embeddings=4096,
        ),
        "nvidia/Nemotron-Mini-4B-Instruct",
    ),
    # Nemotron-H-4B-Instruct: 52 layers (24 M, 4 *, 24 -), 3072 hidden, GQA 32/8 (head 128), Mamba-2
    # 112 heads x 64, 8 groups, state 128 (Megatron-Bridge provider; no HF config.json was readable).
    seeded(
        ModelArch(
            name="nemotron-h-4b-instruct-128k",
            hf_id="nvidia/Nemotron-H-4B-Instruct-128K",
            family="nemotron-h",
            aliases=("nvidia/Nemotron-H-4B-Instruct", "nemotron-h-4b-instruct", "nemotron-h-4b"),
            trust_remote_code=True,
            num_layers=52, hidden_size=3072, ffn_hidden_size=12288,
            attention=Attention(num_heads=32, num_query_groups=8, kv_channels=128),
            mamba=Mamba(pattern=_H_SMALL_PATTERN, num_heads=112, head_dim=64, num_groups=8, state_dim=128),
            position=None, activation=_RELU2,
            vocab=Vocab(size=_NEMOTRON_VOCAB, divisible_by=1),
            seq_length=4096, max_position_embeddings=8192,
            notes=("vocab 131072 assumed from the Nemotron-H family (no config.json was readable)",),
        ),
        "nvidia/Nemotron-H-4B-Instruct",
        dev(HF_MODEL_CKPT, "nvidia/Nemotron-H-4B-Instruct", "nvidia/Nemotron-H-4B-Instruct-128K",
            "the seed's id names no Hugging Face repo; the published instruct model is ...-Instruct-128K"),
        dev(TOKENIZER_MODEL, "nvidia/Nemotron-H-4B-Instruct", "nvidia/Nemotron-H-4B-Instruct-128K",
            "follows the checkpoint"),
        *_no_rope("0.5", "10000"),
    ),
    # nvidia/Nemotron-H-8B-Base-8K: the 4B pattern at 4096 hidden, ffn 21504, Mamba-2 128 heads x 64.
    seeded(
        ModelArch(
            name="nemotron-h-8b-base-8k",
            hf_id="nvidia/Nemotron-H-8B-Base-8K",
            family="nemotron-h",
            aliases=("nemotron-h-8b",),
            trust_remote_code=True,
            num_layers=52, hidden_size=4096, ffn_hidden_size=21504,
            attention=Attention(num_heads=32, num_query_groups=8),
            mamba=Mamba(pattern=_H_SMALL_PATTERN, num_heads=128, head_dim=64, num_groups=8, state_dim=128),
            position=None, activation=_RELU2,
            vocab=Vocab(size=_NEMOTRON_VOCAB, divisible_by=1),
            seq_length=4096, max_position_embeddings=8192,
        ),
        "nvidia/Nemotron-H-8B-Base-8K",
        *_no_rope("0.5", "500000"),
    ),
    # nvidia/Nemotron-H-47B-Reasoning-128K: 98 layers (45 M, 5 *, 48 -), 8192 hidden, GQA 64/8,
    # Mamba-2 256 heads x 64, state 256 (Megatron-side values; no HF config.json was readable).
    seeded(
        ModelArch(
            name="nemotron-h-47b-reasoning-128k",
            hf_id="nvidia/Nemotron-H-47B-Reasoning-128K",
            family="nemotron-h",
            aliases=("nemotron-h-47b",),
            trust_remote_code=True,
            num_layers=98, hidden_size=8192, ffn_hidden_size=30720,
            attention=Attention(num_heads=64, num_query_groups=8, kv_channels=128),
            mamba=Mamba(
                pattern="M-M-M-M-M-M-M-M-M*-M-M-M-M-M-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-M-M---MM---M-M*-M-M-M-M-M-",
                num_heads=256, head_dim=64, num_groups=8, state_dim=256,
            ),
            position=None, activation=_RELU2,
            vocab=Vocab(size=_NEMOTRON_VOCAB),
            seq_length=8192, max_position_embeddings=8192,
            notes=("vocab 131072 assumed from the Nemotron-H family (no config.json was readable)",),
        ),
        "nvidia/Nemotron-H-47B-Reasoning-128K",
    ),
    # nvidia/Nemotron-H-56B-Base-8K: 118 layers (54 M, 10 *, 54 -), 8192 hidden, GQA 64/8, Mamba-2 256
    # heads x 64 (HF; the seed leaves Megatron's equal defaults), state 256.
    seeded(
        ModelArch(
            name="nemotron-h-56b-base-8k",
            hf_id="nvidia/Nemotron-H-56B-Base-8K",
            family="nemotron-h",
            aliases=("nemotron-h-56b",),
            trust_remote_code=True,
            num_layers=118, hidden_size=8192, ffn_hidden_size=32768,
            attention=Attention(num_heads=64, num_query_groups=8, kv_channels=128),
            mamba=Mamba(
                pattern="M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-",
                num_heads=256, head_dim=64, num_groups=8, state_dim=256,
            ),
            position=None, activation=_RELU2,
            vocab=Vocab(size=_NEMOTRON_VOCAB),
            seq_length=8192, max_position_embeddings=8192,
            notes=(("the seed's embedded --tensor-model-parallel-size 8 --pipeline-model-parallel-size 1 and "
                    "--exit-duration-in-mins 230 are run control, left to layouts and stages"),),
        ),
        "nvidia/Nemotron-H-56B-Base-8K",
    ),
    # nvidia/NVIDIA-Nemotron-Nano-9B-v2: 56 layers (27 M, 4 *, 25 -), 4480 hidden, GQA 40/8 (head 128),
    # Mamba-2 128 heads x 80, 8 groups, state 128.
    seeded(
        _NANO_V2,
        "nvidia/NVIDIA-Nemotron-Nano-9B-v2",
        dev(HF_MODEL_CKPT, "nvidia/NVIDIA-Nemotron-Nano-9B-v2-Base", "nvidia/NVIDIA-Nemotron-Nano-9B-v2",
            "the seed's file for the post-trained model defaults to the -Base checkpoint"),
        dev(TOKENIZER_MODEL, "nvidia/NVIDIA-Nemotron-Nano-9B-v2-Base", "nvidia/NVIDIA-Nemotron-Nano-9B-v2",
            "the post-trained tokenizer carries the chat template"),
    ),
    # nvidia/NVIDIA-Nemotron-Nano-9B-v2-Base: the seed's symlink to the file above; the same architecture,
    # but its own checkpoint, so a lookup by this id loads the base weights.
    seeded(
        attrs.evolve(
            _NANO_V2,
            name="nvidia-nemotron-nano-9b-v2-base",
            hf_id="nvidia/NVIDIA-Nemotron-Nano-9B-v2-Base",
            aliases=("nemotron-nano-9b-v2-base",),
            notes=("the seed's -Base file is a symlink to NVIDIA-Nemotron-Nano-9B-v2.sh: same architecture",),
        ),
        "nvidia/NVIDIA-Nemotron-Nano-9B-v2-Base",
    ),
    # nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16: 52 layers (23 M, 23 E, 6 *), 2688 hidden, GQA 32/2
    # (head 128), 128 experts, top-6, expert 1856 + shared 3712, sigmoid with expert bias, scale 2.5,
    # Mamba-2 64 heads x 64, 8 groups, state 128 (HF n_groups/ssm_state_size; Megatron's defaults).
    seeded(
        ModelArch(
            name="nvidia-nemotron-3-nano-30b-a3b-bf16",
            hf_id="nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
            family="nemotron-h",
            aliases=("nemotron-3-nano", "nemotron-3-nano-30b-a3b"),
            trust_remote_code=True,
            num_layers=52, hidden_size=2688, ffn_hidden_size=1856,
            attention=Attention(num_heads=32, num_query_groups=2, kv_channels=128),
            moe=MoE(
                num_experts=128, router_topk=6, ffn_hidden_size=1856, shared_expert_ffn_size=3712,
                router_score_function="sigmoid", router_dtype="fp32", router_enable_expert_bias=True,
                router_topk_scaling_factor=2.5, load_balancing_type="seq_aux_loss", grouped_gemm=True,
            ),
            mamba=Mamba(pattern="MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
                        num_heads=64, head_dim=64, num_groups=8, state_dim=128),
            position=None, activation=_RELU2,
            vocab=Vocab(size=_NEMOTRON_VOCAB),
            seq_length=8192, max_position_embeddings=8192,
            notes=(max_positions_note(8192, 262144, _NEMOTRON3_POSITIONS),),
        ),
        "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
    ),
    # nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16: 88 layers (40 M, 40 E, 8 *), 4096 hidden, GQA 32/2,
    # latent MoE (latent 1024): 512 experts, top-22, expert 2688 + shared 5376, scale 5.0; Mamba-2 128 x 64.
    # The MTP layer (num_nextn_predict_layers 1) is not part of the model Megatron builds here.
    seeded(
        ModelArch(
            name="nvidia-nemotron-3-super-120b-a12b-bf16",
            hf_id="nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16",
            family="nemotron-h",
            aliases=("nemotron-3-super", "nemotron-3-super-120b-a12b"),
            trust_remote_code=True,
            num_layers=88, hidden_size=4096, ffn_hidden_size=2688,
            attention=Attention(num_heads=32, num_query_groups=2, kv_channels=128),
            moe=MoE(
                num_experts=512, router_topk=22, ffn_hidden_size=2688, shared_expert_ffn_size=5376,
                router_score_function="sigmoid", router_dtype="fp32", router_enable_expert_bias=True,
                router_topk_scaling_factor=5.0, load_balancing_type="seq_aux_loss", grouped_gemm=True,
                latent_size=1024,
            ),
            mamba=Mamba(
                pattern="MEMEMEM*EMEMEMEM*EMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEM*EMEMEMEME",
                num_heads=128, head_dim=64, num_groups=8, state_dim=128,
            ),
            position=None, activation=_RELU2,
            vocab=Vocab(size=_NEMOTRON_VOCAB),
            seq_length=8192, max_position_embeddings=8192,
            notes=(max_positions_note(8192, 262144, _NEMOTRON3_POSITIONS),),
        ),
        "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16",
    ),
    # nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-BF16: 108 layers (48 M, 48 E, 12 *), 8192 hidden, GQA
    # 64/2, latent MoE (latent 2048): 512 experts, top-22, expert 5120 + shared 10240, scale 5.0; Mamba-2
    # 256 x 64. No HF config.json was readable: values are the seed's.
    seeded(
        ModelArch(
            name="nvidia-nemotron-3-ultra-550b-a55b-bf16",
            hf_id="nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-BF16",
            family="nemotron-h",
            aliases=("nemotron-3-ultra", "nemotron-3-ultra-550b-a55b"),
            trust_remote_code=True,
            num_layers=108, hidden_size=8192, ffn_hidden_size=5120,
            attention=Attention(num_heads=64, num_query_groups=2, kv_channels=128),
            moe=MoE(
                num_experts=512, router_topk=22, ffn_hidden_size=5120, shared_expert_ffn_size=10240,
                router_score_function="sigmoid", router_dtype="fp32", router_enable_expert_bias=True,
                router_topk_scaling_factor=5.0, load_balancing_type="seq_aux_loss", grouped_gemm=True,
                latent_size=2048,
            ),
            mamba=Mamba(
                pattern="MEMEMEM*EMEMEM*EMEMEMEM*EMEMEMEM*EMEMEM*EMEMEMEM*EMEMEMEM*EMEMEM*EMEMEMEM*EMEMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
                num_heads=256, head_dim=64,
            ),
            position=None, activation=_RELU2,
            vocab=Vocab(size=_NEMOTRON_VOCAB),
            seq_length=8192, max_position_embeddings=8192,
            notes=("vocab 131072 assumed from the Nemotron-H family (no config.json was readable)",
                   ("the seed spells the pattern flag --hybrid-override-pattern (deprecated alias) and repeats "
                    "--num-layers 108; both are the same model")),
        ),
        "nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-BF16",
        dev(TOKENIZER_MODEL, None, "nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-BF16",
            "the seed leaves TOKENIZER_MODEL without a default; the checkpoint's own tokenizer"),
    ),
]
