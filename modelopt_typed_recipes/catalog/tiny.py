"""Tiny variants of real entries, one per kind (dense, MoE, MLA, hybrid), for tests and demos.

Each keeps its parent's structure (norms, activation, attention type, router settings, layer symbols) and
shrinks the sizes: hidden 128, 2-4 layers, a 1024-token vocabulary, so a real Hugging Face or Megatron
checkpoint of one is a few MB and builds in seconds on a CPU. The sizes stay legal for Megatron at
tensor-parallel 1 and 2: heads divide hidden, query groups divide heads and TP, Mamba heads x head_dim =
2 x hidden, Mamba groups divide Mamba heads.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..spec.arch import Attention, Mamba, MLAttention, ModelArch, MoE, Vocab
from .models import deepseek, nemotron, qwen

_VOCAB = Vocab(size=1024, divisible_by=128)
_SIZES: dict[str, Any] = dict(hidden_size=128, seq_length=256, max_position_embeddings=1024, vocab=_VOCAB, hf_id=None,
              tokenizer_id=None, aliases=(), family="tiny", trust_remote_code=False)


def _parent(models: list[ModelArch], name: str) -> ModelArch:
    return next(m for m in models if m.name == name)


def _tiny(parent: ModelArch, name: str, **changes: Any) -> ModelArch:
    notes = (f"tiny variant of {parent.name} ({parent.hf_id}): same structure, toy sizes; no checkpoint on the Hub",)
    return attrs.evolve(parent, name=name, notes=notes, **{**_SIZES, **changes})


def _gqa(arch: ModelArch) -> Attention:
    if not isinstance(arch.attention, Attention):
        raise TypeError(f"{arch.name} has no grouped-query attention")
    return arch.attention


def _moe(arch: ModelArch) -> MoE:
    if arch.moe is None:
        raise TypeError(f"{arch.name} has no mixture of experts")
    return arch.moe


_QWEN3_8B = _parent(qwen.MODELS, "qwen3-8b")
_QWEN3_MOE = _parent(qwen.MODELS, "qwen3-30b-a3b")
_V2_LITE = _parent(deepseek.MODELS, "deepseek-v2-lite")
_NEMOTRON_H = _parent(nemotron.MODELS, "nemotron-h-8b-base-8k")
_NEMOTRON_3 = _parent(nemotron.MODELS, "nvidia-nemotron-3-nano-30b-a3b-bf16")

TINY_MODELS: list[ModelArch] = [
    # dense GQA with QK norm, untied (Qwen3-8B): 2 layers, 4 heads / 2 groups of 32
    _tiny(
        _QWEN3_8B, "tiny-dense", num_layers=2, ffn_hidden_size=256,
        attention=attrs.evolve(_gqa(_QWEN3_8B), num_heads=4, num_query_groups=2, kv_channels=32),
    ),
    # MoE on every layer (Qwen3-30B-A3B): 8 experts of 64, top-2
    _tiny(
        _QWEN3_MOE, "tiny-moe", num_layers=2, ffn_hidden_size=256,
        attention=attrs.evolve(_gqa(_QWEN3_MOE), num_heads=4, num_query_groups=2, kv_channels=32),
        moe=attrs.evolve(_moe(_QWEN3_MOE), num_experts=8, router_topk=2, ffn_hidden_size=64),
    ),
    # multi-latent attention + MoE with a dense first layer and a shared expert (DeepSeek-V2-Lite)
    _tiny(
        _V2_LITE, "tiny-mla", num_layers=2, ffn_hidden_size=256,
        attention=MLAttention(num_heads=4, kv_lora_rank=32, qk_head_dim=32, qk_pos_emb_head_dim=16, v_head_dim=32),
        moe=attrs.evolve(
            _moe(_V2_LITE), num_experts=8, router_topk=2, ffn_hidden_size=64, shared_expert_ffn_size=128,
            layer_freq="[0]*1+[1]*1", grouped_gemm=False,
        ),
    ),
    # hybrid Mamba-2 / attention / MLP (Nemotron-H): pattern M*M-
    _tiny(
        _NEMOTRON_H, "tiny-hybrid", num_layers=4, ffn_hidden_size=256,
        attention=Attention(num_heads=4, num_query_groups=2, kv_channels=32),
        mamba=Mamba(pattern="M*M-", num_heads=8, head_dim=32, num_groups=2, state_dim=16),
    ),
    # hybrid Mamba-2 / attention / MoE (Nemotron-3-Nano): pattern M*ME
    _tiny(
        _NEMOTRON_3, "tiny-hybrid-moe", num_layers=4, ffn_hidden_size=64,
        attention=Attention(num_heads=4, num_query_groups=2, kv_channels=32),
        moe=attrs.evolve(_moe(_NEMOTRON_3), num_experts=8, router_topk=2, ffn_hidden_size=64,
                         shared_expert_ffn_size=128, grouped_gemm=False),
        mamba=Mamba(pattern="M*ME", num_heads=8, head_dim=32, num_groups=2, state_dim=16),
    ),
]
