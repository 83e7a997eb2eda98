"""``config.json`` -> :class:`ModelArch` fields, one function per layout of config.

Each reader takes the config (a :class:`ConfigReader` whose defaults are the model type's) and the
model type's :class:`~.model_types.HFModelType` entry, and returns keyword arguments for
:class:`ModelArch` (``_notes``: facts worth a note). Differences between model types of one layout come
from the entry (key spellings, biases, QK norm), never from comparing ``model_type`` names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ...errors import SpecError, did_you_mean
from ...spec.arch import (
    DTYPE_NAMES,
    Activation,
    Attention,
    Llama3Scaling,
    Mamba,
    MLAttention,
    MoE,
    Norm,
    Quirks,
    RoPE,
    Vocab,
    YarnScaling,
)
from .access import ConfigReader, ConfigValueError, build, short_repr

if TYPE_CHECKING:
    from .model_types import HFModelType

MAX_LAYERS = 10_000
"""Far above any real model; per-layer lists are built from this count."""

_DTYPES = {v: k for k, v in DTYPE_NAMES.items()}

# nemotron_h layers_block_type names (legacy and transformers 5) -> hybrid pattern symbol
BLOCK_SYMBOL = {
    "mamba": "M",
    "linear_attention": "M",
    "attention": "*",
    "full_attention": "*",
    "mlp": "-",
    "moe": "E",
}

# ModelArch MoE field -> the config key it usually comes from (so a validation error names the file's key)
_MOE_KEYS = {
    "num_experts": "n_routed_experts",
    "router_topk": "num_experts_per_tok",
    "ffn_hidden_size": "moe_intermediate_size",
    "shared_expert_ffn_size": "n_shared_experts",
    "router_num_groups": "n_group",
    "router_group_topk": "topk_group",
    "router_topk_scaling_factor": "routed_scaling_factor",
    "latent_size": "moe_latent_size",
    "layer_freq": "first_k_dense_replace",
}


# --------------------------------------------------------------------------- pieces
def layer_step(r: ConfigReader, key: str) -> int:
    """A "every k-th layer" period (default 1); zero or negative would divide by zero."""
    step: int = r.int(key, r.defaults.get(key, 1))
    if step < 1:
        raise r.fail(key, f"{key} must be at least 1, got {step}", "1 makes every layer a MoE layer")
    return step


def experts(r: ConfigReader, t: HFModelType) -> int:
    count: int = r.first("int", t.expert_keys)
    return count


def rope(r: ConfigReader, t: HFModelType) -> RoPE:
    """RoPE from either layout: transformers 4 (``rope_theta`` + ``rope_scaling``) or 5 (``rope_parameters``).

    A key the file leaves out takes transformers' default ``rope_parameters`` of the model type
    (gpt-oss: YaRN; GPT-NeoX: a quarter of each head rotates). Where the type rotates the whole head
    (``rotary_keys`` unset), a fraction below 1 in the file is an error: transformers would not apply it.
    """
    defaults = t.rope_defaults
    params = r.dict("rope_parameters", {})
    pr = r.nested("rope_parameters", params)
    theta = r.first("float", ("rope_theta", "rotary_emb_base"), None)
    if theta is None:
        theta = pr.float("rope_theta", defaults.get("rope_theta", 10000.0))
    keys = t.rotary_keys or ("partial_rotary_factor",)
    percent = r.first("float", keys, None)
    if percent is None:
        percent = pr.float("partial_rotary_factor", defaults.get("partial_rotary_factor", 1.0))
    if not 0 < percent <= 1:
        raise r.fail(keys[0], f"must be in (0, 1], got {percent}")
    if t.rotary_keys is None and percent != 1.0:
        raise r.fail(keys[0], f"partial rotary embedding is not supported for model type {t.name}", "use 1.0")
    raw = r.dict("rope_scaling", None)
    scaling_reader = r.nested("rope_scaling", raw or {})
    if raw is None:
        scaling_reader = pr if params else ConfigReader(defaults, r.path("rope_parameters") + ".")
    scaling = rope_scaling(scaling_reader)
    return build(r, RoPE, {"base": "rope_theta", "percent": keys[0]}, base=theta, percent=percent, scaling=scaling)


def rope_scaling(r: ConfigReader) -> Llama3Scaling | YarnScaling | None:
    if not r.data:
        return None
    kind = r.first("str", ("rope_type", "type"), "default")
    if kind == "default":
        return None
    if kind == "llama3":
        return build(
            r,
            Llama3Scaling,
            {},
            factor=r.float("factor"),
            low_freq_factor=r.float("low_freq_factor", 1.0),
            high_freq_factor=r.float("high_freq_factor", 4.0),
            original_max_position_embeddings=r.int("original_max_position_embeddings", 8192),
        )
    if kind == "yarn":
        return build(
            r,
            YarnScaling,
            {},
            factor=r.float("factor"),
            original_max_position_embeddings=r.int("original_max_position_embeddings", None),
            beta_fast=r.float("beta_fast", None),
            beta_slow=r.float("beta_slow", None),
            mscale=r.float("mscale", None),
            mscale_all_dim=r.float("mscale_all_dim", None),
        )
    raise r.fail("rope_type", f"RoPE scaling {short_repr(kind)} is not supported", "supported: llama3, yarn, default")


def activation(r: ConfigReader, t: HFModelType) -> Activation:
    from .model_types import ACTIVATIONS

    act: str = r.first("str", t.act_keys)
    mapped = ACTIVATIONS.get(act, (None, None))[0 if t.gated_mlp else 1]
    if mapped is None:
        usable = [name for name, pair in ACTIVATIONS.items() if pair[0 if t.gated_mlp else 1]]
        close = did_you_mean(act, usable) if len(act) <= 64 else ""
        raise r.fail(
            t.act_keys[0], f"activation {short_repr(act)} is not supported here", close or f"one of {', '.join(usable)}"
        )
    return build(r, Activation, {"type": t.act_keys[0]}, type=mapped)


def norm(r: ConfigReader, t: HFModelType, kind: str = "rmsnorm") -> Norm:
    return build(r, Norm, {"epsilon": t.norm_eps_keys[0]}, type=kind, epsilon=r.first("float", t.norm_eps_keys))


def layer_freq(moe_layers: list[bool]) -> int | str:
    """Per-layer MoE flags -> Megatron's ``--moe-layer-freq`` (``1``, ``[0,1]*24`` or ``[0]*3+[1]*58``)."""
    n = len(moe_layers)
    if all(moe_layers):
        return 1
    bits = [int(b) for b in moe_layers]
    for period in range(2, n // 2 + 1):
        if n % period == 0 and bits == bits[:period] * (n // period):
            return f"[{','.join(map(str, bits[:period]))}]*{n // period}"
    runs: list[str] = []
    i = 0
    while i < n:
        j = i
        while j < n and bits[j] == bits[i]:
            j += 1
        runs.append(f"[{bits[i]}]*{j - i}")
        i = j
    return "+".join(runs)


def check_no_bias(r: ConfigReader, *keys: str) -> None:
    for key in keys:
        if r.bool(key, r.defaults.get(key, False)):
            raise r.fail(key, "biases here are not supported for this model type", "set it to false")


def switch_biases(r: ConfigReader) -> bool:
    """``add_bias_linear`` from ``attention_bias`` / ``mlp_bias``, which must agree (Llama-style configs)."""
    attn, mlp = r.bool("attention_bias"), r.bool("mlp_bias")
    if attn != mlp:
        raise r.fail(
            "attention_bias" if attn else "mlp_bias",
            "biases on only the attention or only the MLP projections cannot be expressed",
            "ModelArch has add_bias_linear (every linear) or attention.qkv_bias (Q, K, V only)",
        )
    out: bool = attn
    return out


def gqa(r: ConfigReader, t: HFModelType, hidden: int) -> Attention:
    heads = r.int("num_attention_heads")
    kv = r.int("num_key_value_heads", heads)
    head_dim = r.first("int", t.head_dim_keys, None)
    if heads <= 0:
        raise ConfigValueError(f"must be a positive integer, got {heads}", path=r.path("num_attention_heads"))
    if head_dim is not None and head_dim == hidden // heads and hidden % heads == 0:
        head_dim = None
    keys = {
        "num_heads": "num_attention_heads",
        "num_query_groups": "num_key_value_heads",
        "kv_channels": t.head_dim_keys[0],
    }
    return build(
        r,
        Attention,
        keys,
        num_heads=heads,
        num_query_groups=None if kv == heads else kv,
        kv_channels=head_dim,
        qkv_bias=t.biases == "qkv",
        qk_layernorm=t.qk_norm,
    )


def common(r: ConfigReader, num_layers: int | None = None) -> dict[str, Any]:
    """Sizes every model type spells alike (``num_layers``: a hybrid's pattern length, the default)."""
    n = r.int("num_hidden_layers", num_layers) if num_layers is not None else r.int("num_hidden_layers")
    if n > MAX_LAYERS:
        raise r.fail("num_hidden_layers", f"num_hidden_layers={n} is not a real model's depth (at most {MAX_LAYERS})")
    out: dict[str, Any] = {
        "num_layers": n,
        "hidden_size": r.int("hidden_size"),
        "vocab": Vocab(size=r.int("vocab_size")),
        "tie_embeddings": r.bool("tie_word_embeddings"),
        "max_position_embeddings": r.int("max_position_embeddings"),
    }
    dtype = r.first("str", ("dtype", "torch_dtype"), "bfloat16")
    out["params_dtype"] = _DTYPES.get(dtype.removeprefix("torch."), "bf16")
    return out


def note(out: dict[str, Any], text: str) -> None:
    out.setdefault("_notes", []).append(text)


# --------------------------------------------------------------------------- layouts
def read_llama(r: ConfigReader, t: HFModelType) -> dict[str, Any]:
    """llama, qwen2, qwen3 (and the dense part of mixtral, qwen3_moe): pre-norm RMSNorm, gated MLP, GQA, RoPE."""
    out = common(r)
    out["ffn_hidden_size"] = r.int("intermediate_size")
    if t.biases == "switch":
        out["add_bias_linear"] = switch_biases(r)
    elif t.biases == "qkv":
        check_no_bias(r, "mlp_bias")  # Qwen2's modeling code: bias on Q, K, V, none on O or the MLP
    else:
        check_no_bias(r, "attention_bias", "mlp_bias")
    out["attention"] = gqa(r, t, out["hidden_size"])
    out["position"] = rope(r, t)
    out["norm"] = norm(r, t)
    out["activation"] = activation(r, t)
    return out


def read_mixtral(r: ConfigReader, t: HFModelType) -> dict[str, Any]:
    out = read_llama(r, t)
    out["moe"] = build(
        r,
        MoE,
        {**_MOE_KEYS, "num_experts": t.expert_keys[0], "ffn_hidden_size": "intermediate_size"},
        num_experts=experts(r, t),
        router_topk=r.int("num_experts_per_tok"),
        ffn_hidden_size=out["ffn_hidden_size"],
    )
    return out


def read_qwen3_moe(r: ConfigReader, t: HFModelType) -> dict[str, Any]:
    out = read_llama(r, t)
    n = out["num_layers"]
    count = experts(r, t)
    step = layer_step(r, "decoder_sparse_step")
    only_mlp = set(r.list("mlp_only_layers", of=int))
    flags = [i not in only_mlp and (i + 1) % step == 0 for i in range(n)]
    if not any(flags):
        raise r.fail("mlp_only_layers", "no layer is a MoE layer")
    out["moe"] = build(
        r,
        MoE,
        {**_MOE_KEYS, "num_experts": t.expert_keys[0], "layer_freq": "mlp_only_layers"},
        num_experts=count,
        router_topk=r.int("num_experts_per_tok"),
        ffn_hidden_size=r.int("moe_intermediate_size"),
        layer_freq=layer_freq(flags),
        router_pre_softmax=not r.bool("norm_topk_prob"),
    )
    if r.int("shared_expert_intermediate_size", 0):
        raise r.fail("shared_expert_intermediate_size", "qwen3_moe has no shared expert")
    return out


def read_llama4(r: ConfigReader, t: HFModelType) -> dict[str, Any]:
    out = common(r)
    h, n = out["hidden_size"], out["num_layers"]
    moe_ffn = r.int("intermediate_size")
    out["ffn_hidden_size"] = r.int("intermediate_size_mlp", moe_ffn)
    check_no_bias(r, "attention_bias")
    qk_norm = r.bool("use_qk_norm")
    out["attention"] = attrs.evolve(gqa(r, t, h), qk_layernorm=qk_norm)
    position = rope(r, t)
    no_rope = r.list("no_rope_layers", None, of=int) or None  # transformers reads [] as "the default"
    interval = r.int("no_rope_layer_interval")
    no_rope_freq: int | None = interval if 0 < interval <= n else None
    if no_rope is not None:  # 1: the layer uses RoPE, 0: NoPE
        uses = [bool(x) for x in no_rope]
        if len(uses) != n:
            raise r.fail("no_rope_layers", f"has {len(uses)} entries, but num_hidden_layers={n}")
        no_rope_freq = None
        if not all(uses):
            no_rope_freq = next((k for k in range(1, n + 1) if uses == [(i + 1) % k != 0 for i in range(n)]), None)
            if no_rope_freq is None:
                raise r.fail(
                    "no_rope_layers", "only a NoPE layer every n-th layer can be expressed (RoPE.no_rope_freq)"
                )
    out["position"] = attrs.evolve(position, interleaved=True, no_rope_freq=no_rope_freq)
    out["norm"] = norm(r, t)
    out["activation"] = activation(r, t)
    moe_layers = r.list("moe_layers", None, of=int)
    if moe_layers is not None:
        chosen = set(moe_layers)
        flags = [i in chosen for i in range(n)]
    else:
        step = layer_step(r, "interleave_moe_layer_step")
        flags = [(i + 1) % step == 0 for i in range(n)]
    if not any(flags):
        raise r.fail("moe_layers" if moe_layers is not None else "interleave_moe_layer_step", "no layer is a MoE layer")
    out["moe"] = build(
        r,
        MoE,
        {**_MOE_KEYS, "num_experts": t.expert_keys[0], "ffn_hidden_size": "intermediate_size"},
        num_experts=experts(r, t),
        router_topk=r.int("num_experts_per_tok"),
        ffn_hidden_size=moe_ffn,
        shared_expert_ffn_size=moe_ffn,
        layer_freq=layer_freq(flags),
        router_score_function="sigmoid",
    )
    out["quirks"] = Quirks(export_qk_l2_norm=qk_norm, export_moe_apply_probs_on_input=True)
    chunk = r.optional_int("attention_chunk_size")
    if chunk:
        note(out, f"config.json: chunked local attention ({chunk} tokens) on the RoPE layers is not modelled "
                  "(it changes no parameter)")
    return out


def read_deepseek(r: ConfigReader, t: HFModelType) -> dict[str, Any]:
    """deepseek_v2, deepseek_v3, kimi_k2: multi-latent attention, fine-grained MoE with shared experts."""
    out = common(r)
    n = out["num_layers"]
    out["ffn_hidden_size"] = r.int("intermediate_size")
    check_no_bias(r, "attention_bias", "mlp_bias")
    out["attention"] = build(
        r,
        MLAttention,
        {
            "num_heads": "num_attention_heads",
            "q_lora_rank": "q_lora_rank",
            "qk_head_dim": "qk_nope_head_dim",
            "qk_pos_emb_head_dim": "qk_rope_head_dim",
        },
        num_heads=r.int("num_attention_heads"),
        q_lora_rank=r.optional_int("q_lora_rank"),  # null: no query LoRA (DeepSeek-V2-Lite)
        kv_lora_rank=r.int("kv_lora_rank"),
        qk_head_dim=r.int("qk_nope_head_dim"),
        qk_pos_emb_head_dim=r.int("qk_rope_head_dim"),
        v_head_dim=r.int("v_head_dim"),
    )
    out["position"] = rope(r, t)
    out["norm"] = norm(r, t)
    out["activation"] = activation(r, t)
    first_dense = r.int("first_k_dense_replace")
    freq = layer_step(r, "moe_layer_freq")
    if "n_routed_experts" not in r.data:
        raise SpecError("required key missing from config.json", path=r.path("n_routed_experts"),
                        hint="null makes every layer dense")
    count = r.optional_int("n_routed_experts")
    flags = [count is not None and i >= first_dense and i % freq == 0 for i in range(n)]
    if any(flags):
        moe_ffn = r.int("moe_intermediate_size")
        shared = r.int("n_shared_experts")
        scoring = r.str("scoring_func")
        if scoring not in ("softmax", "sigmoid"):
            raise r.fail("scoring_func", f"{short_repr(scoring)} is not supported", "softmax or sigmoid")
        topk_method = r.str("topk_method")
        groups, group_topk = r.int("n_group") or 1, r.int("topk_group") or 1
        grouped = topk_method in ("group_limited_greedy", "noaux_tc") and groups > 1
        out["moe"] = build(
            r,
            MoE,
            _MOE_KEYS,
            num_experts=count,
            router_topk=r.int("num_experts_per_tok"),
            ffn_hidden_size=moe_ffn,
            shared_expert_ffn_size=shared * moe_ffn or None,
            layer_freq=layer_freq(flags),
            router_score_function=scoring,
            router_pre_softmax=scoring == "softmax" and not r.bool("norm_topk_prob"),
            router_enable_expert_bias=topk_method == "noaux_tc",
            router_num_groups=groups if grouped else None,
            router_group_topk=group_topk if grouped else None,
            router_topk_scaling_factor=r.float("routed_scaling_factor"),
        )
    mtp = r.int("num_nextn_predict_layers")
    if mtp:
        note(out, f"config.json: {mtp} multi-token-prediction layer(s) not counted (transformers does not build them)")
    return out


def read_gpt_oss(r: ConfigReader, t: HFModelType) -> dict[str, Any]:
    out = common(r)
    n = out["num_layers"]
    moe_ffn = r.int("intermediate_size")
    out["ffn_hidden_size"] = moe_ffn
    if not r.bool("attention_bias"):
        raise r.fail("attention_bias", "gpt-oss always has biases", "set it to true")
    att = gqa(r, t, out["hidden_size"])
    window = r.optional_int("sliding_window")
    layer_types = r.list("layer_types", None, of=str)
    if layer_types is None:  # transformers' default: sliding, full, sliding, full ...
        layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    sliding = [x == "sliding_attention" for x in layer_types]
    if len(sliding) != n:
        raise r.fail("layer_types", f"has {len(sliding)} entries, but num_hidden_layers={n}")
    if window is not None and any(sliding):
        skip = next((k for k in range(2, n + 1) if sliding == [(i + 1) % k != 0 for i in range(n)]), None)
        if skip is None:
            raise r.fail(
                "layer_types", "only full attention every n-th layer can be expressed (window_attn_skip_freq)"
            )
        if window < 1:
            raise r.fail("sliding_window", f"must be a positive integer, got {window}")
        att = attrs.evolve(att, window_size=(window - 1, 0), window_attn_skip_freq=skip)
    out["attention"] = attrs.evolve(att, softmax_type="learnable")
    out["position"] = rope(r, t)
    out["norm"] = norm(r, t)
    out["activation"] = build(
        r,
        Activation,
        {"clamp_value": "swiglu_limit"},
        type="quick_geglu",
        glu_linear_offset=1.0,
        clamp_value=r.float("swiglu_limit"),
    )
    out["add_bias_linear"] = True
    out["moe"] = build(
        r,
        MoE,
        {**_MOE_KEYS, "num_experts": t.expert_keys[0], "ffn_hidden_size": "intermediate_size"},
        num_experts=experts(r, t),
        router_topk=r.first("int", ("num_experts_per_tok", "experts_per_token")),
        ffn_hidden_size=moe_ffn,
    )
    out["quirks"] = Quirks(gpt_oss=True)
    return out


def read_nemotron(r: ConfigReader, t: HFModelType) -> dict[str, Any]:
    out = common(r)
    out["ffn_hidden_size"] = r.int("intermediate_size")
    out["attention"] = gqa(r, t, out["hidden_size"])
    out["add_bias_linear"] = switch_biases(r)
    out["position"] = rope(r, t)
    out["norm"] = norm(r, t, "layernorm1p")
    out["activation"] = activation(r, t)
    return out


def read_gpt_neox(r: ConfigReader, t: HFModelType) -> dict[str, Any]:
    out = common(r)
    out["ffn_hidden_size"] = r.int("intermediate_size")
    out["attention"] = gqa(r, t, out["hidden_size"])
    if not r.bool("attention_bias"):
        raise r.fail("attention_bias", "GPT-NeoX's MLP always has biases; attention without them cannot be expressed")
    out["add_bias_linear"] = True
    out["position"] = rope(r, t)
    out["norm"] = norm(r, t, "layernorm")
    out["activation"] = activation(r, t)
    return out


def _hybrid_pattern(r: ConfigReader) -> tuple[str, str]:
    """(pattern, the key it came from): ``hybrid_override_pattern`` or a list of block names."""
    if r.has("hybrid_override_pattern"):
        return r.str("hybrid_override_pattern"), "hybrid_override_pattern"
    if r.has("layers_block_type") or r.has("layer_types"):
        key = "layers_block_type" if r.has("layers_block_type") else "layer_types"
        blocks = r.list(key, of=str)
        bad = [b for b in blocks if b not in BLOCK_SYMBOL]
        if bad:
            close = did_you_mean(bad[0], BLOCK_SYMBOL) if len(bad[0]) <= 64 else ""
            raise r.fail(key, f"unknown block type {short_repr(bad[0])}", close)
        return "".join(BLOCK_SYMBOL[b] for b in blocks), key
    raise SpecError(
        "required key missing from config.json", path=r.path("hybrid_override_pattern"), hint="or layers_block_type"
    )


def read_nemotron_h(r: ConfigReader, t: HFModelType) -> dict[str, Any]:
    pattern, key = _hybrid_pattern(r)
    if len(pattern) > MAX_LAYERS:
        raise r.fail(key, f"describes {len(pattern)} layers, not a real model's depth (at most {MAX_LAYERS})")
    out = common(r, num_layers=len(pattern))
    h = out["hidden_size"]
    if len(pattern) != out["num_layers"]:
        raise r.fail(key, f"describes {len(pattern)} layers, but num_hidden_layers={out['num_layers']}")
    check_no_bias(r, "attention_bias", "mlp_bias", "use_bias", "mamba_proj_bias")
    if not r.bool("use_conv_bias"):
        raise r.fail("use_conv_bias", "Mamba without a convolution bias cannot be expressed", "set it to true")
    out["ffn_hidden_size"] = r.int("intermediate_size")
    out["attention"] = gqa(r, t, h)
    out["mamba"] = build(
        r,
        Mamba,
        {
            "pattern": key,
            "num_heads": "mamba_num_heads",
            "head_dim": "mamba_head_dim",
            "num_groups": "n_groups",
            "state_dim": "ssm_state_size",
        },
        pattern=pattern,
        num_heads=r.int("mamba_num_heads"),
        head_dim=r.int("mamba_head_dim"),
        num_groups=r.int("n_groups"),
        state_dim=r.int("ssm_state_size"),
        conv_kernel=r.int("conv_kernel"),
    )
    out["position"] = None  # transformers' NemotronH attention has no position embedding
    out["norm"] = norm(r, t)
    out["activation"] = activation(r, t)
    if "E" in pattern:
        groups, group_topk = r.int("n_group") or 1, r.int("topk_group") or 1
        out["moe"] = build(
            r,
            MoE,
            {**_MOE_KEYS, "num_experts": t.expert_keys[0], "shared_expert_ffn_size": "moe_shared_expert_intermediate_size"},
            num_experts=experts(r, t),
            router_topk=r.int("num_experts_per_tok"),
            ffn_hidden_size=r.int("moe_intermediate_size"),
            shared_expert_ffn_size=r.int("moe_shared_expert_intermediate_size") if r.int("n_shared_experts") else None,
            router_score_function="sigmoid",
            router_enable_expert_bias=True,
            router_num_groups=groups if groups > 1 else None,
            router_group_topk=group_topk if groups > 1 else None,
            router_topk_scaling_factor=r.float("routed_scaling_factor"),
            latent_size=r.optional_int("moe_latent_size"),
        )
    return out
