"""Hugging Face ``config.json`` <-> :class:`ModelArch`: import, compare and export.

``from_hf_config`` reads the architecture facts of a checkpoint's ``config.json`` (a plain dict) for the
model types the seed covers; ``diff_hf_config`` says where a registry entry disagrees with such a file;
``to_hf_config`` writes a dict that ``transformers.AutoConfig.for_model(**cfg)`` accepts, so the CPU
backend can build a real model of the same shape. Pure translation: no torch, no transformers here.

What the comparison ignores (``DIFF_IGNORED``), and why:

* identity and bookkeeping (``name``, ``hf_id``, ``tokenizer_id``, ``family``, ``aliases``, ``notes``,
  ``trust_remote_code``, ``schema_version``): they name or load a checkpoint, they do not shape it;
* Megatron run settings that ``config.json`` cannot hold (``seq_length``, ``params_dtype``, the vocabulary
  padding rule, the router dtype, grouped GEMM, the load-balancing loss, softmax in fp32, forced local
  attention at export);
* ``max_position_embeddings``: Megatron only sizes its RoPE cache with it, and the seed deliberately uses
  the pre-scaling length (Llama-3.1: 8192 where ``config.json`` says 131072).

Before comparing, both sides are put in a canonical form so that equal models compare equal however they
were written: MoE layer frequencies become per-layer lists, Mamba sizes get Megatron's defaults, ``None``
query groups and head dims get their implied values, a missing top-k scaling factor is 1.0,
``router_pre_softmax`` (meaningless for sigmoid routers) is dropped for sigmoid routing, and the dense
``ffn_hidden_size`` is dropped when no layer has a dense MLP (Mixtral, gpt-oss).

Mapping choices worth knowing: ``from_hf_config`` leaves ``attention.kv_channels`` unset when ``head_dim``
equals ``hidden_size / num_attention_heads``; ``seq_length`` is ``min(max_position_embeddings, 4096)``;
Nemotron-H has no position embedding (transformers' NemotronH attention applies none, whatever
``rope_theta`` says); Llama-4's ``use_qk_norm`` is a weightless L2 norm (``quirks.export_qk_l2_norm``);
gpt-oss's clamped SwiGLU is Megatron's quick-GeGLU with offset 1 and clamp ``swiglu_limit``; DeepSeek's
multi-token-prediction layers and Llama-4's chunked attention are noted, not modelled (transformers builds
neither).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import attrs

from ..errors import SpecError, did_you_mean
from ..spec.arch import (
    DTYPE_NAMES,
    Activation,
    Attention,
    Llama3Scaling,
    Mamba,
    MLAttention,
    ModelArch,
    MoE,
    Norm,
    Quirks,
    RoPE,
    Vocab,
    YarnScaling,
)
from ..spec.serde import to_dict

__all__ = [
    "DIFF_IGNORED",
    "HF_MODEL_TYPES",
    "FieldDiff",
    "diff_hf_config",
    "from_hf_config",
    "hf_model_type",
    "load_hf_config",
    "to_hf_config",
]

# model_type -> registry family
HF_MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "llama4": "llama4",
    "llama4_text": "llama4",
    "qwen2": "qwen",
    "qwen3": "qwen",
    "qwen3_moe": "qwen",
    "mixtral": "mixtral",
    "deepseek_v2": "deepseek",
    "deepseek_v3": "deepseek",
    "kimi_k2": "kimi",
    "gpt_oss": "gpt-oss",
    "nemotron": "nemotron",
    "nemotron_h": "nemotron-h",
    "gpt_neox": "gptneox",
}

# transformers' default rope_theta where a config.json leaves it out
_DEFAULT_ROPE_THETA = {"mixtral": 1e6, "llama4": 5e5, "llama4_text": 5e5, "gpt_oss": 150000.0}
_GATED_ACT = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_new": "geglu", "gelu_pytorch_tanh": "geglu"}
_PLAIN_ACT = {
    "relu2": "squared_relu",
    "gelu": "gelu",
    "gelu_new": "gelu",
    "gelu_fast": "gelu",
    "gelu_pytorch_tanh": "gelu",
}
_DTYPES = {v: k for k, v in DTYPE_NAMES.items()}
# nemotron_h layers_block_type names (legacy and transformers 5) -> hybrid pattern symbol
_BLOCK_SYMBOL = {
    "mamba": "M",
    "linear_attention": "M",
    "attention": "*",
    "full_attention": "*",
    "mlp": "-",
    "moe": "E",
}

DIFF_IGNORED: frozenset[str] = frozenset(
    {
        "name",
        "hf_id",
        "tokenizer_id",
        "family",
        "aliases",
        "notes",
        "trust_remote_code",
        "schema_version",
        "seq_length",
        "max_position_embeddings",
        "params_dtype",
        "vocab.padded_size",
        "vocab.divisible_by",
        "moe.router_dtype",
        "moe.grouped_gemm",
        "moe.load_balancing_type",
        "attention.softmax_in_fp32",
        "quirks.export_force_local_attention",
    }
)


@attrs.frozen(kw_only=True)
class FieldDiff:
    """One field where a spec and a ``config.json`` disagree (``ours``: the spec, ``theirs``: the file)."""

    path: str
    ours: Any
    theirs: Any

    def __str__(self) -> str:
        return f"{self.path}: ours={self.ours!r} theirs={self.theirs!r}"


# --------------------------------------------------------------------------- reading a config dict
_MAX_INT = 2**53  # JSON numbers beyond this are not exact integers in any config writer
_MISSING = object()


class _Reader:
    """Typed access to a config dict; every problem becomes a SpecError naming the key (``null`` = absent)."""

    def __init__(self, data: Mapping[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix

    def path(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _get(self, key: str, default: Any, kind: str, check: Callable[[Any], Any]) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                raise SpecError("required key missing from config.json", path=self.path(key))
            return default
        try:
            return check(value)
        except (TypeError, ValueError):
            raise SpecError(f"expected {kind}, got {value!r}", path=self.path(key)) from None

    def int(self, key: str, default: Any = _MISSING) -> Any:
        def check(v: Any) -> int:
            if isinstance(v, bool):
                raise TypeError
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, int) or abs(v) > _MAX_INT:
                raise TypeError
            return v

        return self._get(key, default, "an integer", check)

    def float(self, key: str, default: Any = _MISSING) -> Any:
        def check(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise TypeError
            return float(v)

        return self._get(key, default, "a number", check)

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        def check(v: Any) -> bool:
            if not isinstance(v, bool):
                raise TypeError
            return v

        return self._get(key, default, "true or false", check)

    def str(self, key: str, default: Any = _MISSING) -> Any:
        def check(v: Any) -> str:
            if not isinstance(v, str):
                raise TypeError
            return v

        return self._get(key, default, "a string", check)

    def list(self, key: str, default: Any = _MISSING, *, of: type = object) -> Any:
        """A list whose items are all ``of`` (``int``: integers, ``str``: strings)."""
        item = {int: "integers", str: "strings"}.get(of, "values")

        def check(v: Any) -> list:
            if not isinstance(v, list | tuple):
                raise TypeError
            if any(not isinstance(x, of) or (of is int and isinstance(x, bool)) for x in v):
                raise TypeError
            return list(v)

        return self._get(key, default, f"a list of {item}", check)

    def dict(self, key: str, default: Any = _MISSING) -> Any:
        def check(v: Any) -> Mapping:
            if not isinstance(v, Mapping):
                raise TypeError
            return v

        return self._get(key, default, "a mapping", check)

    def first(self, kind: str, keys: tuple[str, ...], default: Any = _MISSING) -> Any:
        """The first of several spellings of one fact (``rms_norm_eps`` / ``layer_norm_epsilon`` ...)."""
        for key in keys:
            if self.has(key):
                return getattr(self, kind)(key)
        if default is _MISSING:
            raise SpecError(
                "required key missing from config.json",
                path=self.path(keys[0]),
                hint="also read as: " + ", ".join(keys[1:]),
            )
        return default


def _fail(r: _Reader, key: str, message: str, hint: str = "") -> SpecError:
    return SpecError(message, path=r.path(key), hint=hint)


def _layer_step(r: _Reader, key: str) -> int:
    """A "every k-th layer" period (default 1); zero or negative would divide by zero."""
    step = r.int(key, 1)
    if step < 1:
        raise _fail(r, key, f"{key} must be at least 1, got {step}", "1 makes every layer a MoE layer")
    return step


def _build(r: _Reader, cls: type, keys: Mapping[str, str], **fields: Any) -> Any:
    """``cls(**fields)``; a validation error names the config key the failing field came from."""
    try:
        return cls(**fields)
    except SpecError as err:
        raise SpecError(err.message, path=r.path(keys.get(err.path, err.path)), hint=err.hint) from None


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
def _rope(r: _Reader, model_type: str, *, percent_keys: tuple[str, ...] | None = None) -> RoPE:
    """RoPE from either layout: transformers 4 (``rope_theta`` + ``rope_scaling``) or 5 (``rope_parameters``).

    ``percent_keys``: where the model type reads a partial rotary fraction; ``None``: it rotates the
    whole head, and a fraction below 1 in the file is an error (transformers would not apply it).
    """
    params = r.dict("rope_parameters", {})
    pr = _Reader(params, r.path("rope_parameters."))
    theta = r.first("float", ("rope_theta", "rotary_emb_base"), None)
    if theta is None:
        theta = pr.float("rope_theta", _DEFAULT_ROPE_THETA.get(model_type, 10000.0))
    keys = percent_keys or ("partial_rotary_factor",)
    percent = r.first("float", keys, None)
    if percent is None:
        percent = pr.float("partial_rotary_factor", 1.0)
    if not 0 < percent <= 1:
        raise _fail(r, keys[0], f"must be in (0, 1], got {percent}")
    if percent_keys is None and percent != 1.0:
        raise _fail(r, keys[0], f"partial rotary embedding is not supported for model type {model_type}", "use 1.0")
    scaling_key = "rope_scaling"
    raw = r.dict("rope_scaling", None)
    if raw is None and params:
        raw, scaling_key = params, "rope_parameters"
    scaling = _rope_scaling(_Reader(raw or {}, r.path(scaling_key + ".")))
    return _build(r, RoPE, {"base": "rope_theta", "percent": keys[0]}, base=theta, percent=percent, scaling=scaling)


def _rope_scaling(r: _Reader) -> Llama3Scaling | YarnScaling | None:
    if not r.data:
        return None
    kind = r.first("str", ("rope_type", "type"), "default")
    if kind == "default":
        return None
    if kind == "llama3":
        return _build(
            r,
            Llama3Scaling,
            {},
            factor=r.float("factor"),
            low_freq_factor=r.float("low_freq_factor", 1.0),
            high_freq_factor=r.float("high_freq_factor", 4.0),
            original_max_position_embeddings=r.int("original_max_position_embeddings", 8192),
        )
    if kind == "yarn":
        return _build(
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
    raise _fail(r, "rope_type", f"RoPE scaling {kind!r} is not supported", "supported: llama3, yarn, default")


def _activation(
    r: _Reader, *, gated: bool, keys: tuple[str, ...] = ("hidden_act",), default: str = "silu"
) -> Activation:
    act = r.first("str", keys, default)
    table = _GATED_ACT if gated else _PLAIN_ACT
    if act not in table:
        raise _fail(
            r,
            keys[0],
            f"activation {act!r} is not supported here",
            did_you_mean(act, table) or f"one of {', '.join(table)}",
        )
    return Activation(type=table[act])


def _layer_freq(moe_layers: list[bool]) -> int | str:
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


def _check_no_bias(r: _Reader, *keys: str) -> None:
    for key in keys:
        if r.bool(key, False):
            raise _fail(r, key, "biases here are not supported for this model type", "set it to false")


def _linear_biases(r: _Reader) -> tuple[bool, bool]:
    """(add_bias_linear, qkv_bias) from ``attention_bias`` / ``mlp_bias`` (Llama-style configs)."""
    attn, mlp = r.bool("attention_bias", False), r.bool("mlp_bias", False)
    if attn != mlp:
        raise _fail(
            r,
            "attention_bias" if attn else "mlp_bias",
            "biases on only the attention or only the MLP projections cannot be expressed",
            "ModelArch has add_bias_linear (every linear) or attention.qkv_bias (Q, K, V only)",
        )
    return attn, False


def _gqa(r: _Reader, hidden: int, *, head_dim_keys: tuple[str, ...] = ("head_dim",)) -> Attention:
    heads = r.int("num_attention_heads")
    kv = r.int("num_key_value_heads", heads)
    head_dim = r.first("int", head_dim_keys, None)
    if heads <= 0:
        raise _fail(r, "num_attention_heads", f"must be a positive integer, got {heads}")
    if head_dim is not None and head_dim == hidden // heads and hidden % heads == 0:
        head_dim = None
    keys = {"num_heads": "num_attention_heads", "num_query_groups": "num_key_value_heads",
            "kv_channels": head_dim_keys[0]}
    return _build(r, Attention, keys, num_heads=heads, num_query_groups=None if kv == heads else kv,
                  kv_channels=head_dim)


# --------------------------------------------------------------------------- per model type
_MAX_LAYERS = 10_000  # far above any real model; per-layer lists are built from this count


def _common(r: _Reader, model_type: str, num_layers: int | None = None) -> dict[str, Any]:
    n = r.int("num_hidden_layers", num_layers) if num_layers is not None else r.int("num_hidden_layers")
    if n > _MAX_LAYERS:
        raise _fail(r, "num_hidden_layers", f"num_hidden_layers={n} is not a real model's depth (at most {_MAX_LAYERS})")
    out: dict[str, Any] = {
        "num_layers": n,
        "hidden_size": r.int("hidden_size"),
        "vocab": Vocab(size=r.int("vocab_size")),
        "tie_embeddings": r.bool("tie_word_embeddings", False),
        "max_position_embeddings": r.int("max_position_embeddings"),
    }
    dtype = r.first("str", ("dtype", "torch_dtype"), "bfloat16")
    out["params_dtype"] = _DTYPES.get(dtype.removeprefix("torch."), "bf16")
    return out


def _llama_like(r: _Reader, model_type: str) -> dict[str, Any]:
    """llama, qwen2, qwen3, mixtral, qwen3_moe: pre-norm RMSNorm, gated SiLU MLP, GQA, RoPE."""
    out = _common(r, model_type)
    out["ffn_hidden_size"] = r.int("intermediate_size")
    att = _gqa(r, out["hidden_size"])
    if model_type == "qwen2":
        _check_no_bias(r, "mlp_bias")
        att = attrs.evolve(att, qkv_bias=True)  # Qwen2 modeling code: bias on Q, K, V, none on O
    elif model_type in ("qwen3", "qwen3_moe", "mixtral"):
        _check_no_bias(r, "attention_bias", "mlp_bias")
    else:
        out["add_bias_linear"], _ = _linear_biases(r)
    if model_type in ("qwen3", "qwen3_moe"):
        att = attrs.evolve(att, qk_layernorm=True)
    out["attention"] = att
    out["position"] = _rope(r, model_type)
    out["norm"] = Norm(type="rmsnorm", epsilon=r.float("rms_norm_eps", 1e-6))
    out["activation"] = _activation(r, gated=True)
    if model_type == "mixtral":
        experts = r.int("num_local_experts")
        out["moe"] = _build(
            r,
            MoE,
            {**_MOE_KEYS, "num_experts": "num_local_experts", "ffn_hidden_size": "intermediate_size"},
            num_experts=experts,
            router_topk=r.int("num_experts_per_tok"),
            ffn_hidden_size=out["ffn_hidden_size"],
        )
    elif model_type == "qwen3_moe":
        experts, n = r.int("num_experts"), out["num_layers"]
        step = _layer_step(r, "decoder_sparse_step")
        only_mlp = set(r.list("mlp_only_layers", [], of=int))
        flags = [i not in only_mlp and (i + 1) % step == 0 for i in range(n)]
        if not any(flags):
            raise _fail(r, "mlp_only_layers", "no layer is a MoE layer")
        out["moe"] = _build(
            r,
            MoE,
            {**_MOE_KEYS, "num_experts": "num_experts", "layer_freq": "mlp_only_layers"},
            num_experts=experts,
            router_topk=r.int("num_experts_per_tok"),
            ffn_hidden_size=r.int("moe_intermediate_size"),
            layer_freq=_layer_freq(flags),
            router_pre_softmax=not r.bool("norm_topk_prob", False),
        )
        if r.int("shared_expert_intermediate_size", 0):
            raise _fail(r, "shared_expert_intermediate_size", "qwen3_moe has no shared expert")
    return out


def _llama4(r: _Reader, model_type: str) -> dict[str, Any]:
    out = _common(r, model_type)
    h, n = out["hidden_size"], out["num_layers"]
    moe_ffn = r.int("intermediate_size")
    out["ffn_hidden_size"] = r.int("intermediate_size_mlp", moe_ffn)
    _check_no_bias(r, "attention_bias")
    qk_norm = r.bool("use_qk_norm", True)
    out["attention"] = attrs.evolve(_gqa(r, h), qk_layernorm=qk_norm)
    rope = _rope(r, model_type)
    no_rope = r.list("no_rope_layers", None, of=int) or None  # transformers reads [] as "the default"
    interval = r.int("no_rope_layer_interval", 4)
    no_rope_freq: int | None = interval if 0 < interval <= n else None
    if no_rope is not None:  # 1: the layer uses RoPE, 0: NoPE
        uses = [bool(x) for x in no_rope]
        if len(uses) != n:
            raise _fail(r, "no_rope_layers", f"has {len(uses)} entries, but num_hidden_layers={n}")
        no_rope_freq = None
        if not all(uses):
            no_rope_freq = next((k for k in range(1, n + 1) if uses == [(i + 1) % k != 0 for i in range(n)]), None)
            if no_rope_freq is None:
                raise _fail(
                    r, "no_rope_layers", "only a NoPE layer every n-th layer can be expressed (RoPE.no_rope_freq)"
                )
    out["position"] = attrs.evolve(rope, interleaved=True, no_rope_freq=no_rope_freq)
    out["norm"] = Norm(type="rmsnorm", epsilon=r.float("rms_norm_eps", 1e-5))
    out["activation"] = _activation(r, gated=True)
    moe_layers = r.list("moe_layers", None, of=int)
    if moe_layers is not None:
        flags = [i in set(moe_layers) for i in range(n)]
    else:
        step = _layer_step(r, "interleave_moe_layer_step")
        flags = [(i + 1) % step == 0 for i in range(n)]
    out["moe"] = _build(
        r,
        MoE,
        {**_MOE_KEYS, "num_experts": "num_local_experts", "ffn_hidden_size": "intermediate_size"},
        num_experts=r.int("num_local_experts"),
        router_topk=r.int("num_experts_per_tok"),
        ffn_hidden_size=moe_ffn,
        shared_expert_ffn_size=moe_ffn,
        layer_freq=_layer_freq(flags),
        router_score_function="sigmoid",
    )
    out["quirks"] = Quirks(export_qk_l2_norm=qk_norm, export_moe_apply_probs_on_input=True)
    if r.has("attention_chunk_size"):
        out.setdefault("_notes", []).append(
            f"config.json: chunked local attention ({r.int('attention_chunk_size')} tokens) on the RoPE layers"
            " is not modelled (it changes no parameter)"
        )
    return out


def _deepseek(r: _Reader, model_type: str) -> dict[str, Any]:
    out = _common(r, model_type)
    n = out["num_layers"]
    out["ffn_hidden_size"] = r.int("intermediate_size")
    _check_no_bias(r, "attention_bias", "mlp_bias")
    out["attention"] = _build(
        r,
        MLAttention,
        {
            "num_heads": "num_attention_heads",
            "qk_head_dim": "qk_nope_head_dim",
            "qk_pos_emb_head_dim": "qk_rope_head_dim",
        },
        num_heads=r.int("num_attention_heads"),
        q_lora_rank=r.int("q_lora_rank", None),
        kv_lora_rank=r.int("kv_lora_rank"),
        qk_head_dim=r.int("qk_nope_head_dim"),
        qk_pos_emb_head_dim=r.int("qk_rope_head_dim"),
        v_head_dim=r.int("v_head_dim"),
    )
    out["position"] = _rope(r, model_type)
    out["norm"] = Norm(type="rmsnorm", epsilon=r.float("rms_norm_eps", 1e-6))
    out["activation"] = _activation(r, gated=True)
    first_dense = r.int("first_k_dense_replace", 0)
    freq = _layer_step(r, "moe_layer_freq")
    experts = r.int("n_routed_experts", None)
    flags = [experts is not None and i >= first_dense and i % freq == 0 for i in range(n)]
    if any(flags):
        moe_ffn = r.int("moe_intermediate_size")
        shared = r.int("n_shared_experts", 0)
        scoring = r.str("scoring_func", "softmax")
        if scoring not in ("softmax", "sigmoid"):
            raise _fail(r, "scoring_func", f"{scoring!r} is not supported", "softmax or sigmoid")
        topk_method = r.str("topk_method", "noaux_tc" if model_type != "deepseek_v2" else "greedy")
        groups, group_topk = r.int("n_group", 1), r.int("topk_group", 1)
        grouped = topk_method in ("group_limited_greedy", "noaux_tc") and groups > 1
        out["moe"] = _build(
            r,
            MoE,
            _MOE_KEYS,
            num_experts=experts,
            router_topk=r.int("num_experts_per_tok"),
            ffn_hidden_size=moe_ffn,
            shared_expert_ffn_size=shared * moe_ffn or None,
            layer_freq=_layer_freq(flags),
            router_score_function=scoring,
            router_pre_softmax=scoring == "softmax" and not r.bool("norm_topk_prob", False),
            router_enable_expert_bias=topk_method == "noaux_tc",
            router_num_groups=groups if grouped else None,
            router_group_topk=group_topk if grouped else None,
            router_topk_scaling_factor=r.float("routed_scaling_factor", 1.0),
        )
    mtp = r.int("num_nextn_predict_layers", 0)
    if mtp:
        out.setdefault("_notes", []).append(
            f"config.json: {mtp} multi-token-prediction layer(s) not counted (transformers does not build them)"
        )
    return out


def _gpt_oss(r: _Reader, model_type: str) -> dict[str, Any]:
    out = _common(r, model_type)
    n = out["num_layers"]
    moe_ffn = r.int("intermediate_size")
    out["ffn_hidden_size"] = moe_ffn
    if not r.bool("attention_bias", True):
        raise _fail(r, "attention_bias", "gpt-oss always has biases", "set it to true")
    att = _gqa(r, out["hidden_size"])
    window = r.int("sliding_window", None)
    layer_types = r.list("layer_types", None, of=str)
    if layer_types is None:
        layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    sliding = [t == "sliding_attention" for t in layer_types]
    if len(sliding) != n:
        raise _fail(r, "layer_types", f"has {len(sliding)} entries, but num_hidden_layers={n}")
    if window is not None and any(sliding):
        skip = next((k for k in range(2, n + 1) if sliding == [(i + 1) % k != 0 for i in range(n)]), None)
        if skip is None:
            raise _fail(
                r, "layer_types", "only full attention every n-th layer can be expressed (window_attn_skip_freq)"
            )
        att = attrs.evolve(att, window_size=(window - 1, 0), window_attn_skip_freq=skip)
    out["attention"] = attrs.evolve(att, softmax_type="learnable")
    out["position"] = _rope(r, model_type)
    out["norm"] = Norm(type="rmsnorm", epsilon=r.float("rms_norm_eps", 1e-5))
    out["activation"] = Activation(type="quick_geglu", glu_linear_offset=1.0, clamp_value=r.float("swiglu_limit", 7.0))
    out["add_bias_linear"] = True
    out["moe"] = _build(
        r,
        MoE,
        {**_MOE_KEYS, "num_experts": "num_local_experts", "ffn_hidden_size": "intermediate_size"},
        num_experts=r.int("num_local_experts"),
        router_topk=r.first("int", ("num_experts_per_tok", "experts_per_token")),
        ffn_hidden_size=moe_ffn,
    )
    out["quirks"] = Quirks(gpt_oss=True)
    return out


def _nemotron(r: _Reader, model_type: str) -> dict[str, Any]:
    out = _common(r, model_type)
    out["ffn_hidden_size"] = r.int("intermediate_size")
    out["attention"] = _gqa(r, out["hidden_size"], head_dim_keys=("head_dim", "kv_channels"))
    out["add_bias_linear"], _ = _linear_biases(r)
    out["position"] = _rope(r, model_type, percent_keys=("partial_rotary_factor",))
    out["norm"] = Norm(type="layernorm1p", epsilon=r.first("float", ("norm_eps", "layer_norm_eps"), 1e-5))
    out["activation"] = _activation(r, gated=False, default="relu2")
    return out


def _gpt_neox(r: _Reader, model_type: str) -> dict[str, Any]:
    out = _common(r, model_type)
    out["ffn_hidden_size"] = r.int("intermediate_size")
    out["attention"] = _gqa(r, out["hidden_size"])
    if not r.bool("attention_bias", True):
        raise _fail(r, "attention_bias", "GPT-NeoX's MLP always has biases; attention without them cannot be expressed")
    out["add_bias_linear"] = True
    out["position"] = _rope(r, model_type, percent_keys=("rotary_pct", "partial_rotary_factor"))
    out["norm"] = Norm(type="layernorm", epsilon=r.float("layer_norm_eps", 1e-5))
    out["activation"] = _activation(r, gated=False, default="gelu")
    return out


def _nemotron_h(r: _Reader, model_type: str) -> dict[str, Any]:
    if r.has("hybrid_override_pattern"):
        pattern = r.str("hybrid_override_pattern")
        key = "hybrid_override_pattern"
    elif r.has("layers_block_type") or r.has("layer_types"):
        key = "layers_block_type" if r.has("layers_block_type") else "layer_types"
        blocks = r.list(key, of=str)
        bad = [b for b in blocks if b not in _BLOCK_SYMBOL]
        if bad:
            raise _fail(r, key, f"unknown block type {bad[0]!r}", did_you_mean(str(bad[0]), _BLOCK_SYMBOL))
        pattern = "".join(_BLOCK_SYMBOL[b] for b in blocks)
    else:
        raise SpecError(
            "required key missing from config.json", path=r.path("hybrid_override_pattern"), hint="or layers_block_type"
        )
    out = _common(r, model_type, num_layers=len(pattern))
    h = out["hidden_size"]
    if len(pattern) != out["num_layers"]:
        raise _fail(r, key, f"describes {len(pattern)} layers, but num_hidden_layers={out['num_layers']}")
    _check_no_bias(r, "attention_bias", "mlp_bias", "use_bias", "mamba_proj_bias")
    if not r.bool("use_conv_bias", True):
        raise _fail(r, "use_conv_bias", "Mamba without a convolution bias cannot be expressed", "set it to true")
    out["ffn_hidden_size"] = r.int("intermediate_size")
    out["attention"] = _gqa(r, h, head_dim_keys=("attention_head_dim", "head_dim"))
    out["mamba"] = _build(
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
        num_groups=r.int("n_groups", 8),
        state_dim=r.int("ssm_state_size", 128),
        conv_kernel=r.int("conv_kernel", 4),
    )
    out["position"] = None  # transformers' NemotronH attention has no position embedding
    out["norm"] = Norm(
        type="rmsnorm", epsilon=r.first("float", ("layer_norm_epsilon", "rms_norm_eps", "norm_eps"), 1e-5)
    )
    out["activation"] = _activation(r, gated=False, keys=("mlp_hidden_act", "hidden_act"), default="relu2")
    if "E" in pattern:
        groups, group_topk = r.int("n_group", 1), r.int("topk_group", 1)
        out["moe"] = _build(
            r,
            MoE,
            {**_MOE_KEYS, "shared_expert_ffn_size": "moe_shared_expert_intermediate_size"},
            num_experts=r.first("int", ("n_routed_experts", "num_local_experts")),
            router_topk=r.int("num_experts_per_tok"),
            ffn_hidden_size=r.int("moe_intermediate_size"),
            shared_expert_ffn_size=r.int("moe_shared_expert_intermediate_size")
            if r.int("n_shared_experts", 1)
            else None,
            router_score_function="sigmoid",
            router_enable_expert_bias=True,
            router_num_groups=groups if groups > 1 else None,
            router_group_topk=group_topk if groups > 1 else None,
            router_topk_scaling_factor=r.float("routed_scaling_factor", 1.0),
            latent_size=r.int("moe_latent_size", None),
        )
    out["trust_remote_code"] = True
    return out


_BUILDERS: dict[str, Callable[[_Reader, str], dict[str, Any]]] = {
    "llama": _llama_like,
    "qwen2": _llama_like,
    "qwen3": _llama_like,
    "qwen3_moe": _llama_like,
    "mixtral": _llama_like,
    "llama4": _llama4,
    "llama4_text": _llama4,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "kimi_k2": _deepseek,
    "gpt_oss": _gpt_oss,
    "nemotron": _nemotron,
    "nemotron_h": _nemotron_h,
    "gpt_neox": _gpt_neox,
}


def _default_name(hf_id: str | None, config: Mapping[str, Any], model_type: str) -> str:
    source = hf_id or config.get("_name_or_path") or ""
    base = str(source).rstrip("/").rsplit("/", 1)[-1] if isinstance(source, str) else ""
    name = "".join("-" if c.isspace() or c == ":" else c for c in base.lower()).strip("-")
    return name or f"hf-{model_type.replace('_', '-')}"


def from_hf_config(config: Mapping[str, Any], *, name: str | None = None, hf_id: str | None = None) -> ModelArch:
    """A validated :class:`ModelArch` from a Hugging Face ``config.json`` dict.

    ``null`` values count as absent (transformers' default applies). Llama-4's text model may sit under
    ``text_config``; errors there carry the ``text_config.`` prefix. Any problem is a :class:`SpecError`
    whose ``path`` is the config key.
    """
    if not isinstance(config, Mapping):
        raise SpecError(f"expected a mapping (the parsed config.json), got {type(config).__name__}")
    top = _Reader(config)
    model_type = top.str("model_type")
    if model_type not in _BUILDERS:
        raise SpecError(
            f"model type {model_type!r} is not supported",
            path="model_type",
            hint=did_you_mean(model_type, _BUILDERS) or "supported: " + ", ".join(_BUILDERS),
        )
    reader = top
    if model_type == "llama4" and top.has("text_config"):
        reader = _Reader(top.dict("text_config"), "text_config.")
    if hf_id is None:
        source = config.get("_name_or_path")
        hf_id = source if isinstance(source, str) and _HF_ID.fullmatch(source) else None
    fields = _BUILDERS[model_type](reader, model_type)
    notes = [f"from Hugging Face config.json (model_type {model_type})"] + fields.pop("_notes", [])
    if "auto_map" in config or model_type == "kimi_k2":
        fields["trust_remote_code"] = True
    fields["seq_length"] = min(fields["max_position_embeddings"], 4096)
    try:
        return ModelArch(
            name=name or _default_name(hf_id, config, model_type),
            hf_id=hf_id,
            family=HF_MODEL_TYPES[model_type],
            notes=tuple(notes),
            **fields,
        )
    except SpecError as err:
        key = _HF_KEY.get(err.path)
        raise SpecError(err.message, path=reader.path(key) if key else err.path, hint=err.hint) from None


_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

# ModelArch field path -> the config.json key it came from (so a validation error names the file's key)
_HF_KEY = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "attention.num_heads": "num_attention_heads",
    "moe.router_topk": "num_experts_per_tok",
    "moe.router_num_groups": "n_group",
    "moe.router_group_topk": "topk_group",
    "moe.layer_freq": "first_k_dense_replace",
}


def load_hf_config(path: str | Path, *, name: str | None = None, hf_id: str | None = None) -> ModelArch:
    """:func:`from_hf_config` on a ``config.json`` file (or a checkpoint folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read {p}: {exc.strerror or exc}", path=str(p)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"not valid JSON: {exc}", path=str(p)) from None
    return from_hf_config(data, name=name, hf_id=hf_id)


# --------------------------------------------------------------------------- comparing
def _canonical(arch: ModelArch) -> dict[str, Any]:
    """The spec as a dict in which equal architectures are equal (see the module docstring)."""
    d = to_dict(arch)
    if arch.layer_counts.dense_mlp == 0:
        d["ffn_hidden_size"] = None  # no dense MLP layer: the size is unused
    att = d["attention"]
    if att.get("type") == "standard":
        att["num_query_groups"] = att["num_query_groups"] or att["num_heads"]
        att["kv_channels"] = arch.head_dim
    moe = d.get("moe")
    if moe is not None:
        if arch.mamba is not None:
            moe["layer_freq"] = None
        else:
            moe["layer_freq"] = [int(b) for b in arch.moe_layers]
        if moe["router_topk_scaling_factor"] is None:
            moe["router_topk_scaling_factor"] = 1.0
        if moe["router_score_function"] == "sigmoid":
            moe["router_pre_softmax"] = None
    if arch.mamba is not None:
        heads, head_dim, groups, state = arch.mamba.resolved(arch.hidden_size)
        d["mamba"].update(
            pattern=arch.mamba.layers, num_heads=heads, head_dim=head_dim, num_groups=groups, state_dim=state
        )
    return d


def _drop(d: dict[str, Any], path: str) -> None:
    *parents, leaf = path.split(".")
    node: Any = d
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


def _compare(ours: Any, theirs: Any, path: str, out: list[FieldDiff]) -> None:
    if isinstance(ours, dict) and isinstance(theirs, dict) and ours.get("type") == theirs.get("type"):
        for key in list(ours) + [k for k in theirs if k not in ours]:
            _compare(ours.get(key), theirs.get(key), f"{path}.{key}" if path else key, out)
        return
    numbers = all(isinstance(x, float | int) and not isinstance(x, bool) for x in (ours, theirs))
    if numbers and math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=0.0):
        return
    if ours != theirs:
        out.append(FieldDiff(path=path, ours=ours, theirs=theirs))


def diff_hf_config(
    arch: ModelArch, config: Mapping[str, Any], *, ignore: Collection[str] = DIFF_IGNORED
) -> list[FieldDiff]:
    """Fields where ``arch`` and a ``config.json`` describe different models (empty: the same model).

    Paths are ModelArch field paths (``moe.router_topk``); ``ignore`` lists paths left out (default:
    :data:`DIFF_IGNORED`, identity and Megatron-only settings). Raises :class:`SpecError` when the
    config itself cannot be read.
    """
    theirs = from_hf_config(config, name=arch.name)
    a, b = _canonical(arch), _canonical(theirs)
    for path in ignore:
        _drop(a, path)
        _drop(b, path)
    out: list[FieldDiff] = []
    _compare(a, b, "", out)
    return out


# --------------------------------------------------------------------------- exporting
def hf_model_type(arch: ModelArch) -> str:
    """The transformers ``model_type`` that builds ``arch``: chosen by structure, the family breaks ties."""
    att, moe = arch.attention, arch.moe
    if arch.mamba is not None:
        return "nemotron_h"
    if isinstance(att, MLAttention):
        return "deepseek_v3" if moe is None or moe.router_score_function == "sigmoid" else "deepseek_v2"
    if arch.quirks.gpt_oss:
        return "gpt_oss"
    if arch.quirks.export_moe_apply_probs_on_input or arch.quirks.export_qk_l2_norm:
        return "llama4_text"
    if moe is not None:
        return "qwen3_moe" if att.qk_layernorm else "mixtral"
    if arch.norm.type == "layernorm1p":
        return "nemotron"
    if arch.norm.type == "layernorm":
        return "gpt_neox"
    if att.qkv_bias:
        return "qwen2"
    if att.qk_layernorm:
        return "qwen3"
    return "llama"


_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "llama4_text": "Llama4ForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "nemotron": "NemotronForCausalLM",
    "nemotron_h": "NemotronHForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
}


def _hf_rope(pos: RoPE | None) -> dict[str, Any]:
    if pos is None:
        return {}
    out: dict[str, Any] = {"rope_theta": pos.base}
    s = pos.scaling
    if isinstance(s, Llama3Scaling):
        out["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
    elif isinstance(s, YarnScaling):
        yarn = {
            "rope_type": "yarn",
            "factor": s.factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
            "beta_fast": s.beta_fast,
            "beta_slow": s.beta_slow,
            "mscale": s.mscale,
            "mscale_all_dim": s.mscale_all_dim,
        }
        out["rope_scaling"] = {k: v for k, v in yarn.items() if v is not None}
    return out


def _act_name(arch: ModelArch, gated: bool) -> str:
    t = arch.activation.type
    names = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh"} if gated else {"squared_relu": "relu2", "gelu": "gelu"}
    if t not in names:
        raise SpecError(
            f"activation {t!r} cannot be written for model type {hf_model_type(arch)}", path="activation.type"
        )
    return names[t]


def to_hf_config(arch: ModelArch) -> dict[str, Any]:
    """A ``config.json`` dict for ``arch`` that transformers builds (``AutoConfig.for_model(**cfg)``).

    Supported: llama, qwen2, qwen3, qwen3_moe, mixtral, llama4_text, deepseek_v2/v3 (also Kimi-K2),
    gpt_oss, nemotron, nemotron_h, gpt_neox. The result is checked by reading it back: a field the
    chosen model type cannot express raises :class:`SpecError` naming that field, so
    ``from_hf_config(to_hf_config(a))`` always equals ``a`` up to :data:`DIFF_IGNORED`.
    """
    mt = hf_model_type(arch)
    att = arch.attention
    cfg: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[mt]],
        "model_type": mt,
        "vocab_size": arch.vocab.size,
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.ffn_hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": att.num_heads,
        "max_position_embeddings": arch.max_position_embeddings,
        "tie_word_embeddings": arch.tie_embeddings,
        "dtype": DTYPE_NAMES[arch.params_dtype],
        "torch_dtype": DTYPE_NAMES[arch.params_dtype],
    }
    if isinstance(att, Attention):
        cfg["num_key_value_heads"] = att.query_groups
        cfg["head_dim"] = arch.head_dim
    cfg.update(_hf_rope(arch.position))
    if mt in ("nemotron", "gpt_neox") and arch.position is not None:
        cfg["partial_rotary_factor"] = arch.position.percent
    eps = arch.norm.epsilon
    moe = arch.moe
    if mt in ("llama", "qwen2", "qwen3", "qwen3_moe", "mixtral", "llama4_text"):
        cfg.update(rms_norm_eps=eps, hidden_act=_act_name(arch, gated=True))
        if mt == "llama":
            cfg.update(attention_bias=arch.add_bias_linear, mlp_bias=arch.add_bias_linear)
        if mt == "mixtral" and moe is not None:
            cfg.update(
                intermediate_size=moe.ffn_hidden_size,
                num_local_experts=moe.num_experts,
                num_experts_per_tok=moe.router_topk,
            )
        if mt == "qwen3_moe" and moe is not None:
            cfg.update(
                num_experts=moe.num_experts,
                num_experts_per_tok=moe.router_topk,
                moe_intermediate_size=moe.ffn_hidden_size,
                decoder_sparse_step=1,
                mlp_only_layers=[i for i, m in enumerate(arch.moe_layers) if not m],
                norm_topk_prob=not moe.router_pre_softmax,
            )
        if mt == "llama4_text" and moe is not None:
            assert arch.position is not None
            cfg.update(
                intermediate_size=moe.ffn_hidden_size,
                intermediate_size_mlp=arch.ffn_hidden_size,
                num_local_experts=moe.num_experts,
                num_experts_per_tok=moe.router_topk,
                moe_layers=[i for i, m in enumerate(arch.moe_layers) if m],
                use_qk_norm=att.qk_layernorm,
                attention_bias=False,
            )
            freq = arch.position.no_rope_freq
            cfg["no_rope_layers"] = [int(not freq or (i + 1) % freq != 0) for i in range(arch.num_layers)]
    elif mt in ("deepseek_v2", "deepseek_v3"):
        assert isinstance(att, MLAttention)
        cfg.update(
            rms_norm_eps=eps,
            hidden_act=_act_name(arch, gated=True),
            num_key_value_heads=att.num_heads,
            q_lora_rank=att.q_lora_rank,
            kv_lora_rank=att.kv_lora_rank,
            qk_nope_head_dim=att.qk_head_dim,
            qk_rope_head_dim=att.qk_pos_emb_head_dim,
            v_head_dim=att.v_head_dim,
            head_dim=att.qk_pos_emb_head_dim,
        )
        if moe is None:
            cfg.update(first_k_dense_replace=arch.num_layers, n_routed_experts=None)
        else:
            first = arch.moe_layers.index(True)
            shared = (moe.shared_expert_ffn_size or 0) // moe.ffn_hidden_size
            cfg.update(
                first_k_dense_replace=first,
                moe_layer_freq=1,
                n_routed_experts=moe.num_experts,
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
    elif mt == "gpt_oss":
        assert moe is not None and isinstance(att, Attention)
        cfg.update(
            rms_norm_eps=eps,
            hidden_act="silu",
            intermediate_size=moe.ffn_hidden_size,
            num_local_experts=moe.num_experts,
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
    elif mt == "nemotron":
        cfg.update(norm_eps=eps, hidden_act=_act_name(arch, gated=False))
        cfg.update(attention_bias=arch.add_bias_linear, mlp_bias=arch.add_bias_linear)
    elif mt == "gpt_neox":
        cfg.update(layer_norm_eps=eps, hidden_act=_act_name(arch, gated=False), attention_bias=True)
        cfg["rotary_pct"] = cfg.pop("partial_rotary_factor", 1.0)
        cfg["rotary_emb_base"] = cfg["rope_theta"]
        cfg["use_parallel_residual"] = True
    elif mt == "nemotron_h":
        assert arch.mamba is not None
        heads, head_dim, groups, state = arch.mamba.resolved(arch.hidden_size)
        cfg.update(
            hybrid_override_pattern=arch.mamba.layers,
            attention_head_dim=arch.head_dim,
            layer_norm_epsilon=eps,
            mlp_hidden_act=_act_name(arch, gated=False),
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
        if moe is not None:
            cfg.update(
                n_routed_experts=moe.num_experts,
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
    # read it back: whatever the model type cannot express shows up as a difference
    try:
        diffs = diff_hf_config(arch, cfg)
    except SpecError as err:
        raise SpecError(
            f"cannot be written as a {mt} config.json: {err.message}", path=err.path, hint=err.hint
        ) from None
    if diffs:
        first = diffs[0]
        more = f" (and {len(diffs) - 1} more: {', '.join(d.path for d in diffs[1:4])})" if len(diffs) > 1 else ""
        raise SpecError(
            f"transformers' {mt} cannot express {first.ours!r} (it would read back as {first.theirs!r}){more}",
            path=first.path,
        )
    return cfg
