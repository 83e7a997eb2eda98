""":class:`ModelArch` -> the model-type-specific keys of a ``config.json``, one function per layout.

:func:`.write.to_hf_config` writes the keys every model type shares, then calls the entry's writer; key
spellings (norm epsilon, activation, expert count) come from the :class:`~.model_types.HFModelType`
entry. A field a model type cannot express is caught afterwards, by reading the result back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import SpecError
from ...spec.arch import Attention, MLAttention, ModelArch, MoE

if TYPE_CHECKING:
    from .model_types import HFModelType


def act_name(arch: ModelArch, t: HFModelType) -> str:
    """The ``hidden_act`` that transformers maps to ``arch``'s activation in this model type's MLP."""
    from .model_types import ACTIVATION_NAMES, ACTIVATIONS

    kind = arch.activation.type
    name = ACTIVATION_NAMES.get(kind)
    if name is None or ACTIVATIONS[name][0 if t.gated_mlp else 1] != kind:
        raise SpecError(f"activation {kind!r} cannot be written for model type {t.name}", path="activation.type")
    return name


def _norm_and_act(arch: ModelArch, t: HFModelType, cfg: dict[str, Any]) -> None:
    cfg[t.norm_eps_keys[0]] = arch.norm.epsilon
    cfg[t.act_keys[0]] = act_name(arch, t)


def _moe(arch: ModelArch) -> MoE:
    if arch.moe is None:
        raise SpecError("this model type needs a MoE block", path="moe")
    return arch.moe


def _moe_layer_indices(arch: ModelArch, moe: bool) -> list[int]:
    return [i for i, m in enumerate(arch.moe_layers) if m == moe]


def write_llama(arch: ModelArch, t: HFModelType, cfg: dict[str, Any]) -> None:
    _norm_and_act(arch, t, cfg)
    if t.biases == "switch":
        cfg.update(attention_bias=arch.add_bias_linear, mlp_bias=arch.add_bias_linear)


def write_mixtral(arch: ModelArch, t: HFModelType, cfg: dict[str, Any]) -> None:
    write_llama(arch, t, cfg)
    moe = _moe(arch)
    cfg.update(intermediate_size=moe.ffn_hidden_size, num_experts_per_tok=moe.router_topk)
    cfg[t.expert_keys[0]] = moe.num_experts


def write_qwen3_moe(arch: ModelArch, t: HFModelType, cfg: dict[str, Any]) -> None:
    write_llama(arch, t, cfg)
    moe = _moe(arch)
    for key in t.expert_keys:  # transformers 4 reads num_experts, 5 num_local_experts: write both
        cfg[key] = moe.num_experts
    cfg.update(
        num_experts_per_tok=moe.router_topk,
        moe_intermediate_size=moe.ffn_hidden_size,
        decoder_sparse_step=1,
        mlp_only_layers=_moe_layer_indices(arch, False),
        norm_topk_prob=not moe.router_pre_softmax,
    )


def write_llama4(arch: ModelArch, t: HFModelType, cfg: dict[str, Any]) -> None:
    write_llama(arch, t, cfg)
    moe = _moe(arch)
    cfg[t.expert_keys[0]] = moe.num_experts
    cfg.update(
        intermediate_size=moe.ffn_hidden_size,
        intermediate_size_mlp=arch.ffn_hidden_size,
        num_experts_per_tok=moe.router_topk,
        moe_layers=_moe_layer_indices(arch, True),
        use_qk_norm=arch.attention.qk_layernorm,
        attention_bias=False,
    )
    freq = arch.position.no_rope_freq if arch.position is not None else None
    cfg["no_rope_layers"] = [int(not freq or (i + 1) % freq != 0) for i in range(arch.num_layers)]


def write_deepseek(arch: ModelArch, t: HFModelType, cfg: dict[str, Any]) -> None:
    att = arch.attention
    if not isinstance(att, MLAttention):
        raise SpecError(f"{t.name} needs multi-latent attention", path="attention")
    _norm_and_act(arch, t, cfg)
    cfg.update(
        num_key_value_heads=att.num_heads,
        q_lora_rank=att.q_lora_rank,
        kv_lora_rank=att.kv_lora_rank,
        qk_nope_head_dim=att.qk_head_dim,
        qk_rope_head_dim=att.qk_pos_emb_head_dim,
        v_head_dim=att.v_head_dim,
        head_dim=att.qk_pos_emb_head_dim,
        num_nextn_predict_layers=0,
    )
    moe = arch.moe
    if moe is None:
        cfg.update(first_k_dense_replace=arch.num_layers, n_routed_experts=None)
        return
    shared = (moe.shared_expert_ffn_size or 0) // moe.ffn_hidden_size
    cfg[t.expert_keys[0]] = moe.num_experts
    cfg.update(
        first_k_dense_replace=arch.moe_layers.index(True),
        moe_layer_freq=1,
        num_experts_per_tok=moe.router_topk,
        moe_intermediate_size=moe.ffn_hidden_size,
        n_shared_experts=shared,
        scoring_func=moe.router_score_function,
        norm_topk_prob=moe.router_score_function == "sigmoid" or not moe.router_pre_softmax,
        topk_method="noaux_tc"
        if moe.router_enable_expert_bias
        else ("group_limited_greedy" if moe.router_num_groups else "greedy"),
        n_group=moe.router_num_groups or 1,
        topk_group=moe.router_group_topk or 1,
        routed_scaling_factor=moe.router_topk_scaling_factor or 1.0,
    )


def write_gpt_oss(arch: ModelArch, t: HFModelType, cfg: dict[str, Any]) -> None:
    moe, att = _moe(arch), arch.attention
    if not isinstance(att, Attention):
        raise SpecError("gpt_oss needs standard attention", path="attention")
    cfg[t.norm_eps_keys[0]] = arch.norm.epsilon
    cfg[t.expert_keys[0]] = moe.num_experts
    cfg.update(
        hidden_act="silu",
        intermediate_size=moe.ffn_hidden_size,
        num_experts_per_tok=moe.router_topk,
        experts_per_token=moe.router_topk,
        attention_bias=True,
        swiglu_limit=arch.activation.clamp_value,
    )
    if att.window_size is not None and att.window_attn_skip_freq:
        k = att.window_attn_skip_freq
        cfg["sliding_window"] = att.window_size[0] + 1
        cfg["layer_types"] = [
            "full_attention" if (i + 1) % k == 0 else "sliding_attention" for i in range(arch.num_layers)
        ]
    else:
        cfg["sliding_window"] = None
        cfg["layer_types"] = ["full_attention"] * arch.num_layers


def _partial_rotary(arch: ModelArch, t: HFModelType, cfg: dict[str, Any]) -> None:
    if arch.position is not None and t.rotary_keys:
        cfg[t.rotary_keys[0]] = arch.position.percent


def write_nemotron(arch: ModelArch, t: HFModelType, cfg: dict[str, Any]) -> None:
    _norm_and_act(arch, t, cfg)
    _partial_rotary(arch, t, cfg)
    cfg.update(attention_bias=arch.add_bias_linear, mlp_bias=arch.add_bias_linear)


def write_gpt_neox(arch: ModelArch, t: HFModelType, cfg: dict[str, Any]) -> None:
    _norm_and_act(arch, t, cfg)
    _partial_rotary(arch, t, cfg)
    if "rope_theta" in cfg:
        cfg["rotary_emb_base"] = cfg["rope_theta"]
    cfg.update(attention_bias=True, use_parallel_residual=True)


def write_nemotron_h(arch: ModelArch, t: HFModelType, cfg: dict[str, Any]) -> None:
    if arch.mamba is None:
        raise SpecError("nemotron_h needs Mamba layers", path="mamba")
    heads, head_dim, groups, state = arch.mamba.resolved(arch.hidden_size)
    _norm_and_act(arch, t, cfg)
    cfg.update(
        hybrid_override_pattern=arch.mamba.layers,
        attention_head_dim=arch.head_dim,
        mamba_num_heads=heads,
        mamba_head_dim=head_dim,
        n_groups=groups,
        ssm_state_size=state,
        conv_kernel=arch.mamba.conv_kernel,
        expand=max(1, heads * head_dim // arch.hidden_size),
        attention_bias=False,
        mlp_bias=False,
        use_bias=False,
        mamba_proj_bias=False,
        use_conv_bias=True,
    )
    moe = arch.moe
    if moe is not None:
        cfg[t.expert_keys[0]] = moe.num_experts
        cfg.update(
            num_experts_per_tok=moe.router_topk,
            moe_intermediate_size=moe.ffn_hidden_size,
            moe_shared_expert_intermediate_size=moe.shared_expert_ffn_size,
            n_shared_experts=1 if moe.shared_expert_ffn_size else 0,
            n_group=moe.router_num_groups or 1,
            topk_group=moe.router_group_topk or 1,
            routed_scaling_factor=moe.router_topk_scaling_factor or 1.0,
            moe_latent_size=moe.latent_size,
            norm_topk_prob=True,
        )
