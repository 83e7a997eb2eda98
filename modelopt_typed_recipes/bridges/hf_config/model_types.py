"""What the bridge knows about each transformers ``model_type``, in one table (:data:`MODEL_TYPES`).

One :class:`HFModelType` entry per ``model_type`` holds its key spellings, transformers' defaults for the
optional keys, its bias and activation conventions, the function that reads it and the one that writes it.
The readers (:mod:`.readers`) and writers (:mod:`.writers`) are shared by model types of one layout and
take their differences from the entry; nothing else in the bridge branches on a ``model_type`` name.

Defaults: where a ``config.json`` leaves an optional key out, the value is transformers' own default for
that model type (its config class with no arguments; ``tests/test_hf_config_types.py`` checks every entry
against the installed transformers). Sizes (layers, widths, expert counts) have no default: a missing
size is an error naming the key, not the size of the model the config class happens to describe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from ...errors import SpecError, did_you_mean
from ...spec.arch import Attention, MLAttention, ModelArch
from . import readers, writers
from .access import ConfigReader, short_repr

Reader = Callable[[ConfigReader, "HFModelType"], dict[str, Any]]
"""Reads one model type's config into :class:`ModelArch` fields (``_notes``: extra notes)."""
Writer = Callable[[ModelArch, "HFModelType", dict[str, Any]], None]
"""Adds one model type's keys to a ``config.json`` dict that already holds the common ones."""

_ROPE = {"rope_theta": 10000.0, "rope_type": "default"}

ACTIVATIONS: Mapping[str, tuple[str | None, str | None]] = {
    # hidden_act -> (ModelArch activation in a gated MLP, in a plain MLP); None: not used that way.
    # gelu_new, gelu_fast and gelu_pytorch_tanh are all GELU's tanh approximation (Megatron's --openai-gelu).
    "silu": ("swiglu", None),
    "swish": ("swiglu", None),
    "gelu": ("geglu", "gelu"),
    "gelu_new": ("geglu_tanh", "gelu_tanh"),
    "gelu_fast": ("geglu_tanh", "gelu_tanh"),
    "gelu_pytorch_tanh": ("geglu_tanh", "gelu_tanh"),
    "relu2": (None, "squared_relu"),
}
ACTIVATION_NAMES: Mapping[str, str] = {
    # ModelArch activation -> the hidden_act the writer records
    "swiglu": "silu",
    "geglu": "gelu",
    "geglu_tanh": "gelu_pytorch_tanh",
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "squared_relu": "relu2",
}


@attrs.frozen(kw_only=True)
class HFModelType:
    """One transformers ``model_type``: how its ``config.json`` is spelled, read and written."""

    name: str
    """The ``model_type`` value."""
    family: str
    """Registry family of architectures read from it."""
    config_class: str | None
    """transformers' config class; ``None``: only the checkpoint's own code (``auto_map``) builds it."""
    read: Reader
    write: Writer | None = None
    """``None``: read only (written as another type, see :func:`.write.hf_model_type`)."""
    architecture: str | None = None
    """The ``architectures`` entry the writer records (transformers' causal-LM class)."""
    chosen_for: Callable[[ModelArch], bool] | None = None
    """Writer: the first entry of :data:`MODEL_TYPES` whose predicate holds builds the architecture."""
    defaults: Mapping[str, Any] = attrs.field(factory=dict)
    """transformers' defaults of the optional keys the reader uses (``rope_parameters``: its whole default)."""
    not_configured: Mapping[str, str] = attrs.field(factory=dict)
    """Keys of :attr:`defaults` that transformers' config class has no attribute for, and why the value."""
    rotary_keys: tuple[str, ...] | None = None
    """Spellings of the partial-rotary fraction; ``None``: RoPE covers the whole head."""
    head_dim_keys: tuple[str, ...] = ("head_dim",)
    norm_eps_keys: tuple[str, ...] = ("rms_norm_eps",)
    act_keys: tuple[str, ...] = ("hidden_act",)
    gated_mlp: bool = True
    expert_keys: tuple[str, ...] = ()
    """Spellings of the routed-expert count (the first is written)."""
    biases: Literal["none", "switch", "qkv", "always"] = "none"
    """``none``: no linear has a bias; ``switch``: ``attention_bias`` and ``mlp_bias`` together decide
    ``add_bias_linear``; ``qkv``: Q, K, V biases only (Qwen2); ``always``: every linear has one."""
    qk_norm: bool = False
    """Per-head RMSNorm on Q and K (Qwen3)."""
    text_config: bool = False
    """The text model may sit under ``text_config`` (a multimodal wrapper)."""

    @property
    def rope_defaults(self) -> Mapping[str, Any]:
        params: Mapping[str, Any] = self.defaults.get("rope_parameters", _ROPE)
        return params


def _mla(a: ModelArch) -> bool:
    return isinstance(a.attention, MLAttention)


_LLAMA: dict[str, Any] = {
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "rope_parameters": _ROPE,
}
_QWEN3_MOE: dict[str, Any] = {
    **_LLAMA,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "norm_topk_prob": False,
}
del _QWEN3_MOE["mlp_bias"]
_LLAMA4: dict[str, Any] = {
    "tie_word_embeddings": False,
    "attention_bias": False,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "use_qk_norm": True,
    "no_rope_layer_interval": 4,
    "interleave_moe_layer_step": 1,
    "attention_chunk_size": 8192,
    "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
}
_DEEPSEEK_V3: dict[str, Any] = {
    "tie_word_embeddings": False,
    "attention_bias": False,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "q_lora_rank": 1536,
    "first_k_dense_replace": 3,
    "moe_layer_freq": 1,
    "n_shared_experts": 1,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "n_group": 8,
    "topk_group": 4,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "num_nextn_predict_layers": 1,
    "rope_parameters": _ROPE,
}
_DEEPSEEK_NOT_CONFIGURED = {
    "moe_layer_freq": "transformers makes every layer from first_k_dense_replace on a MoE layer; DeepSeek's "
    "own code reads moe_layer_freq, 1 in every published config",
}
_V3_NOT_CONFIGURED = {
    **_DEEPSEEK_NOT_CONFIGURED,
    "scoring_func": "transformers' DeepSeek-V3 router always scores with a sigmoid",
    "topk_method": "transformers' DeepSeek-V3 router always adds the expert-score bias (noaux_tc)",
}

MODEL_TYPES: tuple[HFModelType, ...] = (
    # Writer priority: the first entry whose chosen_for holds builds an architecture (structure decides,
    # so the order matters: a hybrid before MLA before the gpt-oss quirk before plain MoE before dense).
    HFModelType(
        name="nemotron_h",
        family="nemotron-h",
        config_class="NemotronHConfig",
        read=readers.read_nemotron_h,
        write=writers.write_nemotron_h,
        architecture="NemotronHForCausalLM",
        chosen_for=lambda a: a.mamba is not None,
        defaults={
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            "use_bias": False,
            "mamba_proj_bias": False,
            "use_conv_bias": True,
            "n_groups": 8,
            "ssm_state_size": 128,
            "conv_kernel": 4,
            "layer_norm_epsilon": 1e-5,
            "mlp_hidden_act": "relu2",
            "n_shared_experts": 1,
            "n_group": 1,
            "topk_group": 1,
            "routed_scaling_factor": 1.0,
            "moe_latent_size": None,
        },
        head_dim_keys=("attention_head_dim", "head_dim"),
        norm_eps_keys=("layer_norm_epsilon", "rms_norm_eps", "norm_eps"),
        act_keys=("mlp_hidden_act", "hidden_act"),
        gated_mlp=False,
        expert_keys=("n_routed_experts", "num_local_experts"),
    ),
    HFModelType(
        name="deepseek_v3",
        family="deepseek",
        config_class="DeepseekV3Config",
        read=readers.read_deepseek,
        write=writers.write_deepseek,
        architecture="DeepseekV3ForCausalLM",
        chosen_for=lambda a: _mla(a) and (a.moe is None or a.moe.router_score_function == "sigmoid"),
        defaults=_DEEPSEEK_V3,
        not_configured=_V3_NOT_CONFIGURED,
        expert_keys=("n_routed_experts",),
    ),
    HFModelType(
        name="deepseek_v2",
        family="deepseek",
        config_class="DeepseekV2Config",
        read=readers.read_deepseek,
        write=writers.write_deepseek,
        architecture="DeepseekV2ForCausalLM",
        chosen_for=_mla,
        defaults={
            **_DEEPSEEK_V3,
            "mlp_bias": False,
            "first_k_dense_replace": 0,
            "n_shared_experts": 2,
            "scoring_func": "softmax",
            "topk_method": "greedy",
            "n_group": None,
            "topk_group": None,
            "norm_topk_prob": False,
            "routed_scaling_factor": 1.0,
            "num_nextn_predict_layers": 0,
        },
        not_configured={
            **_DEEPSEEK_NOT_CONFIGURED,
            "scoring_func": "transformers' DeepSeek-V2 router always scores with a softmax",
            "num_nextn_predict_layers": "DeepSeek-V2 has no multi-token-prediction layers",
        },
        expert_keys=("n_routed_experts",),
    ),
    HFModelType(
        name="gpt_oss",
        family="gpt-oss",
        config_class="GptOssConfig",
        read=readers.read_gpt_oss,
        write=writers.write_gpt_oss,
        architecture="GptOssForCausalLM",
        chosen_for=lambda a: a.quirks.gpt_oss,
        defaults={
            "tie_word_embeddings": False,
            "attention_bias": True,
            "rms_norm_eps": 1e-5,
            "sliding_window": 128,
            "swiglu_limit": 7.0,
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": 32.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 4096,
                "rope_theta": 150000.0,
            },
        },
        expert_keys=("num_local_experts",),
        biases="always",
    ),
    HFModelType(
        name="llama4_text",
        family="llama4",
        config_class="Llama4TextConfig",
        read=readers.read_llama4,
        write=writers.write_llama4,
        architecture="Llama4ForCausalLM",
        chosen_for=lambda a: a.quirks.export_moe_apply_probs_on_input or a.quirks.export_qk_l2_norm,
        defaults=_LLAMA4,
        expert_keys=("num_local_experts",),
    ),
    HFModelType(
        name="qwen3_moe",
        family="qwen",
        config_class="Qwen3MoeConfig",
        read=readers.read_qwen3_moe,
        write=writers.write_qwen3_moe,
        architecture="Qwen3MoeForCausalLM",
        chosen_for=lambda a: a.moe is not None and a.attention.qk_layernorm,
        defaults=_QWEN3_MOE,
        # transformers 4 writes num_experts, transformers 5 num_local_experts (the same attribute)
        expert_keys=("num_experts", "num_local_experts"),
        qk_norm=True,
    ),
    HFModelType(
        name="mixtral",
        family="mixtral",
        config_class="MixtralConfig",
        read=readers.read_mixtral,
        write=writers.write_mixtral,
        architecture="MixtralForCausalLM",
        chosen_for=lambda a: a.moe is not None,
        defaults={
            "tie_word_embeddings": False,
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"},
        },
        expert_keys=("num_local_experts",),
    ),
    HFModelType(
        name="nemotron",
        family="nemotron",
        config_class="NemotronConfig",
        read=readers.read_nemotron,
        write=writers.write_nemotron,
        architecture="NemotronForCausalLM",
        chosen_for=lambda a: a.norm.type == "layernorm1p",
        defaults={
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            "norm_eps": 1e-5,
            "hidden_act": "relu2",
            "rope_parameters": {**_ROPE, "partial_rotary_factor": 0.5},
        },
        rotary_keys=("partial_rotary_factor",),
        head_dim_keys=("head_dim", "kv_channels"),
        norm_eps_keys=("norm_eps", "layer_norm_eps"),
        gated_mlp=False,
        biases="switch",
    ),
    HFModelType(
        name="gpt_neox",
        family="gptneox",
        config_class="GPTNeoXConfig",
        read=readers.read_gpt_neox,
        write=writers.write_gpt_neox,
        architecture="GPTNeoXForCausalLM",
        chosen_for=lambda a: a.norm.type == "layernorm",
        defaults={
            "tie_word_embeddings": False,
            "attention_bias": True,
            "layer_norm_eps": 1e-5,
            "hidden_act": "gelu",
            "rope_parameters": {**_ROPE, "partial_rotary_factor": 0.25},
        },
        rotary_keys=("rotary_pct", "partial_rotary_factor"),
        norm_eps_keys=("layer_norm_eps",),
        gated_mlp=False,
        biases="always",
    ),
    HFModelType(
        name="qwen2",
        family="qwen",
        config_class="Qwen2Config",
        read=readers.read_llama,
        write=writers.write_llama,
        architecture="Qwen2ForCausalLM",
        chosen_for=lambda a: isinstance(a.attention, Attention) and a.attention.qkv_bias,
        defaults={k: v for k, v in _LLAMA.items() if k not in ("attention_bias", "mlp_bias")},
        biases="qkv",
    ),
    HFModelType(
        name="qwen3",
        family="qwen",
        config_class="Qwen3Config",
        read=readers.read_llama,
        write=writers.write_llama,
        architecture="Qwen3ForCausalLM",
        chosen_for=lambda a: a.attention.qk_layernorm,
        defaults={k: v for k, v in _LLAMA.items() if k != "mlp_bias"},
        qk_norm=True,
    ),
    HFModelType(
        name="llama",
        family="llama",
        config_class="LlamaConfig",
        read=readers.read_llama,
        write=writers.write_llama,
        architecture="LlamaForCausalLM",
        chosen_for=lambda a: True,
        defaults=_LLAMA,
        biases="switch",
    ),
    # read only
    HFModelType(
        name="llama4",
        family="llama4",
        config_class="Llama4TextConfig",  # the multimodal Llama4Config wraps it in text_config
        read=readers.read_llama4,
        defaults=_LLAMA4,
        expert_keys=("num_local_experts",),
        text_config=True,
    ),
    HFModelType(
        name="kimi_k2",
        family="kimi",
        config_class=None,  # DeepSeek-V3's code, shipped with the checkpoint: written as deepseek_v3
        read=readers.read_deepseek,
        defaults=_DEEPSEEK_V3,
        not_configured=_V3_NOT_CONFIGURED,
        expert_keys=("n_routed_experts",),
    ),
)

BY_NAME: Mapping[str, HFModelType] = {t.name: t for t in MODEL_TYPES}

HF_MODEL_TYPES: dict[str, str] = {t.name: t.family for t in MODEL_TYPES}
"""``model_type`` -> registry family (every type the bridge reads)."""


def model_type(name: str, *, remote_code: bool = False) -> HFModelType:
    """The table entry of ``name``; a :class:`SpecError` on ``model_type`` otherwise.

    ``remote_code``: the config names its own code (``auto_map``), so an unknown type is one that only
    that code defines, and the error says so.
    """
    entry = BY_NAME.get(name)
    if entry is not None:
        return entry
    supported = "supported: " + ", ".join(sorted(BY_NAME))
    close = did_you_mean(name, BY_NAME) if len(name) <= 64 else ""
    if remote_code:
        raise SpecError(
            f"model type {short_repr(name)} is defined by the checkpoint's own code (auto_map), which this bridge "
            "cannot read",
            path="model_type",
            hint=close or f"write the architecture as a ModelArch YAML instead; {supported}",
        )
    raise SpecError(
        f"model type {short_repr(name)} is not supported", path="model_type", hint=close or supported
    )
