"""Model architectures as frozen, validated data.

A :class:`ModelArch` holds what the seed's ``conf/<org>/<model>.sh`` files express in ``MODEL_ARGS``,
typed: sizes, attention (GQA or multi-latent), MoE, hybrid Mamba, position embedding, normalization,
activation, vocabulary and the per-model workaround switches. Everything else (parameter counts,
weight bytes, KV-cache bytes, FLOPs, the model kind) is derived, never stored twice.

Nothing here imports torch, Megatron-Core or ModelOpt.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal

import attrs

from ..errors import SpecError
from ._validate import (
    current_schema,
    divisors,
    fail,
    fraction,
    non_empty_str,
    non_negative,
    one_of,
    positive,
    positive_int,
    to_float,
)
from .formats import get_format

SCHEMA_VERSION = 1
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""Our short dtype names -> torch's (and config.json's ``dtype``): the one table the bridges and runtimes share."""

MAX_LAYERS = 10_000
"""More decoder layers than any model has: a larger num_layers is a typo (and per-layer tables would not fit)."""

Kind = Literal["dense", "moe", "mla", "hybrid"]
KINDS: tuple[str, ...] = ("dense", "moe", "mla", "hybrid")


# --------------------------------------------------------------------------- attention
@attrs.frozen(kw_only=True)
class Attention:
    """Dot-product attention with optional grouped queries (GQA)."""

    type: Literal["standard"] = attrs.field(default="standard", validator=one_of(["standard"]))
    num_heads: int = attrs.field(validator=positive_int)
    num_query_groups: int | None = attrs.field(default=None, validator=positive_int)
    """Key/value heads; ``None`` means one per query head (plain multi-head attention)."""
    kv_channels: int | None = attrs.field(default=None, validator=positive_int)
    """Head dimension when it is not ``hidden_size / num_heads`` (Qwen3: 128 at hidden 1024, 16 heads)."""
    qk_layernorm: bool = False
    qkv_bias: bool = False
    """Bias on Q, K, V only (Qwen2.5); ``ModelArch.add_bias_linear`` puts biases on every linear."""
    softmax_in_fp32: bool = False
    softmax_type: Literal["vanilla", "learnable"] = attrs.field(
        default="vanilla", validator=one_of(["vanilla", "learnable"])
    )
    """``learnable``: gpt-oss attention sinks (one learned logit per head)."""
    window_size: tuple[int, int] | None = None
    """Sliding window ``(left, right)`` as Megatron writes it (gpt-oss: ``(127, 0)``)."""
    window_attn_skip_freq: int | None = attrs.field(default=None, validator=positive_int)
    """Every n-th layer uses full attention instead of the window (gpt-oss: 2)."""

    @num_query_groups.validator
    def _check_groups(self, _attr: attrs.Attribute, value: int | None) -> None:
        if value is not None and self.num_heads % value:
            raise fail(
                "num_query_groups",
                f"num_query_groups={value} does not divide num_heads={self.num_heads}",
                "use one of " + ", ".join(str(d) for d in divisors(self.num_heads)),
            )

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_heads


@attrs.frozen(kw_only=True)
class MLAttention:
    """Multi-latent attention (DeepSeek-V2/V3, Kimi-K2): low-rank Q and KV projections."""

    type: Literal["mla"] = attrs.field(default="mla", validator=one_of(["mla"]))
    num_heads: int = attrs.field(validator=positive_int)
    q_lora_rank: int | None = attrs.field(default=None, validator=positive_int)
    """``None``: no query compression (DeepSeek-V2-Lite)."""
    kv_lora_rank: int = attrs.field(validator=positive_int)
    qk_head_dim: int = attrs.field(validator=positive_int)
    qk_pos_emb_head_dim: int = attrs.field(validator=positive_int)
    v_head_dim: int = attrs.field(validator=positive_int)
    qk_layernorm: bool = True
    softmax_in_fp32: bool = False

    @property
    def query_groups(self) -> int:
        return self.num_heads


# --------------------------------------------------------------------------- MoE
_FREQ_TERM = re.compile(r"\[\s*([01](?:\s*,\s*[01])*)\s*\]\s*(?:\*\s*(\d+))?")


def _at_most_max_layers(_inst: object, attr: attrs.Attribute, value: int) -> None:
    if value > MAX_LAYERS:
        raise fail(attr.name, f"{attr.name}={value} is more than any model has (at most {MAX_LAYERS})")


def parse_layer_freq(expr: str | int, num_layers: int) -> tuple[bool, ...]:
    """Megatron's ``--moe-layer-freq``: an int (every n-th layer) or ``[0]*3+[1]*58`` (no eval)."""
    if isinstance(expr, int) and not isinstance(expr, bool):
        if expr <= 0:
            raise fail("layer_freq", f"must be a positive integer or a list expression, got {expr}")
        return tuple(i % expr == 0 for i in range(num_layers))
    text = str(expr).strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    out: list[bool] = []
    for term in text.split("+"):
        m = _FREQ_TERM.fullmatch(term.strip())
        if not m:
            raise fail(
                "layer_freq",
                f"cannot read {expr!r}: expected terms like [0]*3 or [0,1]*24 joined by +",
            )
        values = [v.strip() == "1" for v in m.group(1).split(",")]
        out.extend(values * int(m.group(2) or 1))
    if len(out) != num_layers:
        raise fail("layer_freq", f"{expr!r} describes {len(out)} layers, but the model has num_layers={num_layers}")
    return tuple(out)


@attrs.frozen(kw_only=True)
class MoE:
    """Mixture of experts: routed experts, optional shared expert, router settings."""

    num_experts: int = attrs.field(validator=positive_int)
    router_topk: int = attrs.field(validator=positive_int)
    ffn_hidden_size: int = attrs.field(validator=positive_int)
    """Hidden size of one routed expert (``--moe-ffn-hidden-size``)."""
    shared_expert_ffn_size: int | None = attrs.field(default=None, validator=positive_int)
    layer_freq: int | str = 1
    """Which layers are MoE: ``1`` (all), ``2`` (every other), or ``"[0]*3+[1]*58"``."""
    router_score_function: Literal["softmax", "sigmoid"] = attrs.field(
        default="softmax", validator=one_of(["softmax", "sigmoid"])
    )
    router_dtype: Literal["fp32", "fp64"] | None = attrs.field(default=None, validator=one_of(["fp32", "fp64"], optional=True))
    router_pre_softmax: bool = False
    router_enable_expert_bias: bool = False
    router_num_groups: int | None = attrs.field(default=None, validator=positive_int)
    router_group_topk: int | None = attrs.field(default=None, validator=positive_int)
    router_topk_scaling_factor: float | None = attrs.field(default=None, converter=to_float, validator=positive)
    load_balancing_type: Literal["aux_loss", "seq_aux_loss", "none"] = attrs.field(
        default="aux_loss", validator=one_of(["aux_loss", "seq_aux_loss", "none"])
    )
    grouped_gemm: bool = False
    latent_size: int | None = attrs.field(default=None, validator=positive_int)
    """Nemotron-3: experts work in a smaller latent space (``--moe-latent-size``)."""

    def __attrs_post_init__(self) -> None:
        if self.router_topk > self.num_experts:
            raise fail(
                "router_topk",
                f"router_topk={self.router_topk} exceeds num_experts={self.num_experts}",
                f"use at most {self.num_experts}",
            )
        if (self.router_num_groups is None) != (self.router_group_topk is None):
            raise fail("router_group_topk", "router_num_groups and router_group_topk must be set together")
        if self.router_num_groups is not None and self.router_group_topk is not None:
            if self.num_experts % self.router_num_groups:
                raise fail(
                    "router_num_groups",
                    f"router_num_groups={self.router_num_groups} does not divide num_experts={self.num_experts}",
                )
            if self.router_group_topk > self.router_num_groups:
                raise fail(
                    "router_group_topk",
                    f"router_group_topk={self.router_group_topk} exceeds router_num_groups={self.router_num_groups}",
                )
        if isinstance(self.layer_freq, bool) or not isinstance(self.layer_freq, int | str):
            raise fail("layer_freq", f"must be an integer or a list expression, got {self.layer_freq!r}")


# --------------------------------------------------------------------------- Mamba
HYBRID_SYMBOLS = {
    "M": "mamba",
    "*": "attention",
    "-": "mlp",
    "E": "moe",
    "G": "gdn",
    "D": "dsa",
    "+": "mlp_plus",
}
_PATTERN_SEPARATORS = "|/"
MAMBA_DEFAULTS: dict[str, int] = {"head_dim": 64, "num_groups": 8, "state_dim": 128}
"""Megatron's Mamba-2 mixer sizes when unset (``num_heads``: :meth:`Mamba.default_num_heads`)."""


@attrs.frozen(kw_only=True)
class Mamba:
    """Hybrid Mamba-2 stack: the layer pattern and the mixer sizes (``None``: Megatron's default)."""

    pattern: str = attrs.field()
    """One symbol a layer: ``M`` Mamba, ``*`` attention, ``-`` MLP, ``E`` MoE; ``|`` splits pipeline stages."""
    num_heads: int | None = attrs.field(default=None, validator=positive_int)
    head_dim: int | None = attrs.field(default=None, validator=positive_int)
    num_groups: int | None = attrs.field(default=None, validator=positive_int)
    state_dim: int | None = attrs.field(default=None, validator=positive_int)
    conv_kernel: int = attrs.field(default=4, validator=positive_int)

    @pattern.validator
    def _check_pattern(self, _attr: attrs.Attribute, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise fail("pattern", "must be a non-empty string of layer symbols")
        bad = sorted({c for c in value if c not in HYBRID_SYMBOLS and c not in _PATTERN_SEPARATORS})
        if bad:
            raise fail(
                "pattern",
                f"unknown layer symbol(s) {''.join(bad)!r} in {value!r}",
                "symbols: M (Mamba), * (attention), - (MLP), E (MoE), | (pipeline split)",
            )
        if "/" in value:
            raise fail("pattern", "multi-token-prediction parts ('/') are not supported yet")
        if "|" in value and any(not part for part in value.split("|")):
            raise fail("pattern", f"empty pipeline stage in {value!r}")

    @property
    def layers(self) -> str:
        """The pattern without pipeline separators: one symbol per layer."""
        return "".join(c for c in self.pattern if c not in _PATTERN_SEPARATORS)

    @property
    def pipeline_stages(self) -> tuple[str, ...] | None:
        return tuple(self.pattern.split("|")) if "|" in self.pattern else None

    def counts(self) -> dict[str, int]:
        return {name: self.layers.count(sym) for sym, name in HYBRID_SYMBOLS.items() if sym in self.layers}

    @staticmethod
    def default_num_heads(hidden_size: int, head_dim: int) -> int:
        """Megatron's Mamba head count when unset: an inner width of twice the hidden size."""
        return (2 * hidden_size) // head_dim

    def resolved(self, hidden_size: int) -> tuple[int, int, int, int]:
        """(heads, head_dim, groups, state) with Megatron's defaults filled in."""
        head_dim = self.head_dim or MAMBA_DEFAULTS["head_dim"]
        heads = self.num_heads or self.default_num_heads(hidden_size, head_dim)
        groups = self.num_groups or MAMBA_DEFAULTS["num_groups"]
        return heads, head_dim, groups, self.state_dim or MAMBA_DEFAULTS["state_dim"]


# --------------------------------------------------------------------------- position
@attrs.frozen(kw_only=True)
class Llama3Scaling:
    """Llama-3.x frequency-dependent RoPE scaling (``--use-rope-scaling --rope-scaling-factor``)."""

    type: Literal["llama3"] = attrs.field(default="llama3", validator=one_of(["llama3"]))
    factor: float = attrs.field(default=8.0, converter=to_float, validator=positive)
    low_freq_factor: float = attrs.field(default=1.0, converter=to_float, validator=positive)
    high_freq_factor: float = attrs.field(default=4.0, converter=to_float, validator=positive)
    original_max_position_embeddings: int = attrs.field(default=8192, validator=positive_int)


@attrs.frozen(kw_only=True)
class YarnScaling:
    """YaRN context extension (DeepSeek, Kimi-K2, gpt-oss)."""

    type: Literal["yarn"] = attrs.field(default="yarn", validator=one_of(["yarn"]))
    factor: float = attrs.field(converter=to_float, validator=positive)
    original_max_position_embeddings: int | None = attrs.field(default=None, validator=positive_int)
    beta_fast: float | None = attrs.field(default=None, converter=to_float, validator=positive)
    beta_slow: float | None = attrs.field(default=None, converter=to_float, validator=positive)
    mscale: float | None = attrs.field(default=None, converter=to_float, validator=positive)
    mscale_all_dim: float | None = attrs.field(default=None, converter=to_float, validator=non_negative)


@attrs.frozen(kw_only=True)
class RoPE:
    """Rotary position embedding."""

    base: float = attrs.field(default=10000.0, converter=to_float, validator=positive)
    percent: float = attrs.field(default=1.0, converter=to_float, validator=fraction)
    interleaved: bool = False
    scaling: Llama3Scaling | YarnScaling | None = None
    no_rope_freq: int | None = attrs.field(default=None, validator=positive_int)
    """Llama-4: every n-th layer has no RoPE (NoPE)."""


# --------------------------------------------------------------------------- norm, activation, vocab
@attrs.frozen(kw_only=True)
class Norm:
    type: Literal["rmsnorm", "layernorm", "layernorm1p"] = attrs.field(
        default="rmsnorm", validator=one_of(["rmsnorm", "layernorm", "layernorm1p"])
    )
    epsilon: float = attrs.field(default=1e-5, converter=to_float, validator=positive)

    @property
    def has_bias(self) -> bool:
        return self.type != "rmsnorm"


GATED_ACTIVATIONS = ("swiglu", "quick_geglu", "geglu", "geglu_tanh")
ACTIVATION_TYPES = ("swiglu", "squared_relu", "quick_geglu", "gelu", "gelu_tanh", "geglu", "geglu_tanh")


@attrs.frozen(kw_only=True)
class Activation:
    """The MLP's activation. ``gelu``/``geglu``: exact GELU (erf); ``gelu_tanh``/``geglu_tanh``: its tanh
    approximation (Hugging Face ``gelu_new``, ``gelu_fast``, ``gelu_pytorch_tanh``; Megatron's ``--openai-gelu``)."""

    type: Literal["swiglu", "squared_relu", "quick_geglu", "gelu", "gelu_tanh", "geglu", "geglu_tanh"] = attrs.field(
        default="swiglu", validator=one_of(ACTIVATION_TYPES)
    )
    glu_linear_offset: float | None = attrs.field(default=None, converter=to_float)
    """gpt-oss: ``(x_linear + offset)`` in the gated unit."""
    clamp_value: float | None = attrs.field(default=None, converter=to_float, validator=positive)

    @property
    def gated(self) -> bool:
        return self.type in GATED_ACTIVATIONS


@attrs.frozen(kw_only=True)
class Vocab:
    """Vocabulary: the checkpoint's embedding rows and Megatron's padding rule."""

    size: int = attrs.field(validator=positive_int)
    """Rows of the Hugging Face embedding matrix (``vocab_size`` in ``config.json``)."""
    padded_size: int | None = attrs.field(default=None, validator=positive_int)
    """``--padded-vocab-size``: Megatron uses exactly this many rows."""
    divisible_by: int | None = attrs.field(default=None, validator=positive_int)
    """``--make-vocab-size-divisible-by`` (Megatron's default is 128, times TP)."""

    def __attrs_post_init__(self) -> None:
        if self.padded_size is not None and self.padded_size < self.size:
            raise fail("padded_size", f"padded_size={self.padded_size} is smaller than size={self.size}")

    def padded(self, tensor_parallel: int = 1) -> int:
        """Embedding rows Megatron allocates at the given TP (what the model really holds)."""
        if self.padded_size is not None:
            return self.padded_size
        multiple = (self.divisible_by or 128) * tensor_parallel
        return -(-self.size // multiple) * multiple


@attrs.frozen(kw_only=True)
class Quirks:
    """Per-model workaround switches the seed hides in Megatron flags."""

    export_force_local_attention: bool = False
    """``--export-force-local-attention``: build local attention so TE ``_extra_state`` keys are not needed."""
    export_qk_l2_norm: bool = False
    """``--export-qk-l2-norm``: Llama-4 L2-normalises Q and K (not a LayerNorm)."""
    export_moe_apply_probs_on_input: bool = False
    """``--export-moe-apply-probs-on-input``: Llama-4 scales expert inputs by router probabilities."""
    gpt_oss: bool = False
    """``--enable-gpt-oss``: Megatron's gpt-oss code path (sinks, clamped GLU, biased experts)."""


# --------------------------------------------------------------------------- the model
@attrs.frozen(kw_only=True)
class LayerCounts:
    """How many layers of each kind; the hybrid pattern or the MoE frequency decides."""

    attention: int
    mamba: int
    dense_mlp: int
    moe: int


@attrs.frozen(kw_only=True)
class ModelArch:
    """One model architecture, as typed data. Build one, or take one from the registry."""

    name: str = attrs.field()
    """Short alias, unique in the registry (``qwen3-8b``)."""
    hf_id: str | None = None
    """Hugging Face checkpoint id (``Qwen/Qwen3-8B``)."""
    tokenizer_id: str | None = None
    """Tokenizer repo when it differs from ``hf_id``; ``None`` means the checkpoint's own."""
    family: str = attrs.field(validator=non_empty_str)
    aliases: tuple[str, ...] = ()
    trust_remote_code: bool = False

    num_layers: int = attrs.field(validator=[positive_int, _at_most_max_layers])
    hidden_size: int = attrs.field(validator=positive_int)
    ffn_hidden_size: int = attrs.field(validator=positive_int)
    attention: Attention | MLAttention
    moe: MoE | None = None
    mamba: Mamba | None = None
    position: RoPE | None = None
    """``None``: no position embedding (Nemotron-H)."""
    norm: Norm = Norm()
    activation: Activation = Activation()
    add_bias_linear: bool = False
    tie_embeddings: bool = False
    vocab: Vocab
    seq_length: int = attrs.field(default=4096, validator=positive_int)
    max_position_embeddings: int = attrs.field(default=4096, validator=positive_int)
    params_dtype: Literal["bf16", "fp16", "fp32"] = attrs.field(default="bf16", validator=one_of(["bf16", "fp16", "fp32"]))
    quirks: Quirks = Quirks()
    notes: tuple[str, ...] = ()
    """Why an entry differs from the seed (each documented fix), or where its facts come from."""
    schema_version: int = attrs.field(default=SCHEMA_VERSION, validator=current_schema(SCHEMA_VERSION))

    @name.validator
    def _check_name(self, attr: attrs.Attribute, value: str) -> None:
        non_empty_str(self, attr, value)
        if any(c.isspace() for c in value) or ":" in value:
            raise fail("name", f"{value!r} must not contain spaces or ':' (':' separates a recipe name)")

    def __attrs_post_init__(self) -> None:
        att = self.attention
        if isinstance(att, Attention) and att.kv_channels is None and self.hidden_size % att.num_heads:
            raise fail(
                "attention.num_heads",
                f"num_heads={att.num_heads} does not divide hidden_size={self.hidden_size}; set attention.kv_channels",
            )
        if self.mamba is not None:
            n = len(self.mamba.layers)
            if n != self.num_layers:
                raise fail(
                    "num_layers",
                    f"num_layers={self.num_layers} but mamba.pattern has {n} layers",
                    f"set num_layers={n}",
                )
            if "E" in self.mamba.layers and self.moe is None:
                raise fail("moe", "mamba.pattern has MoE layers ('E') but moe is not set")
            if self.moe is not None and "E" not in self.mamba.layers:
                raise fail("moe", "moe is set but mamba.pattern has no MoE layer ('E')")
            if self.moe is not None and self.moe.layer_freq != 1:
                raise fail("moe.layer_freq", "a hybrid model places MoE layers by its pattern; leave layer_freq=1")
        elif self.moe is not None:
            try:
                parse_layer_freq(self.moe.layer_freq, self.num_layers)
            except SpecError as err:
                raise err.under("moe") from None
        if self.seq_length > self.max_position_embeddings and self.position is not None:
            raise fail(
                "seq_length",
                f"seq_length={self.seq_length} exceeds max_position_embeddings={self.max_position_embeddings}",
            )
        if self.quirks.gpt_oss and self.activation.type != "quick_geglu":
            raise fail("quirks.gpt_oss", "gpt-oss mode needs activation.type='quick_geglu'")

    # ----------------------------------------------------------------- identity
    @property
    def kind(self) -> Kind:
        """dense, moe, mla or hybrid: hybrid wins over MLA, MLA over MoE."""
        if self.mamba is not None:
            return "hybrid"
        if isinstance(self.attention, MLAttention):
            return "mla"
        if self.moe is not None:
            return "moe"
        return "dense"

    @property
    def tokenizer(self) -> str | None:
        return self.tokenizer_id or self.hf_id

    @property
    def head_dim(self) -> int:
        att = self.attention
        if isinstance(att, MLAttention):
            return att.qk_head_dim + att.qk_pos_emb_head_dim
        return att.kv_channels or self.hidden_size // att.num_heads

    def require_moe(self) -> MoE:
        """The mixture-of-experts settings, for code that reached a MoE layer (SpecError when there are none)."""
        if self.moe is None:
            raise SpecError(f"{self.name} has no mixture of experts", path="moe")
        return self.moe

    def require_mamba(self) -> Mamba:
        """The Mamba settings, for code that reached a Mamba layer (SpecError when there are none)."""
        if self.mamba is None:
            raise SpecError(f"{self.name} has no Mamba layers", path="mamba")
        return self.mamba

    # ----------------------------------------------------------------- layers
    def layer_kinds(self) -> Iterator[tuple[bool, str]]:
        """Per layer: (has attention mixer, mlp kind: 'dense' | 'moe' | 'none' | 'mamba')."""
        if self.mamba is not None:
            for sym in self.mamba.layers:
                yield {
                    "M": (False, "mamba"),
                    "*": (True, "none"),
                    "-": (False, "dense"),
                    "E": (False, "moe"),
                }.get(sym, (False, "none"))
            return
        for is_moe in self.moe_layers:
            yield True, "moe" if is_moe else "dense"

    @property
    def moe_layers(self) -> tuple[bool, ...]:
        """Per decoder layer: whether its MLP is MoE (``moe.layer_freq`` expanded; a hybrid's ``E`` symbols)."""
        if self.mamba is not None:
            return tuple(sym == "E" for sym in self.mamba.layers)
        if self.moe is None:
            return (False,) * self.num_layers
        return parse_layer_freq(self.moe.layer_freq, self.num_layers)

    @property
    def layer_counts(self) -> LayerCounts:
        kinds = list(self.layer_kinds())
        return LayerCounts(
            attention=sum(1 for a, _ in kinds if a),
            mamba=sum(1 for _, m in kinds if m == "mamba"),
            dense_mlp=sum(1 for _, m in kinds if m == "dense"),
            moe=sum(1 for _, m in kinds if m == "moe"),
        )

    # ----------------------------------------------------------------- parameter counts
    def _norm_params(self, width: int) -> int:
        return width * (2 if self.norm.has_bias else 1)

    def _attention_params(self) -> tuple[int, int]:
        """(linear weights, everything else) of one attention layer, its input norm included."""
        h, att = self.hidden_size, self.attention
        other = self._norm_params(h)
        if isinstance(att, MLAttention):
            qk = att.qk_head_dim + att.qk_pos_emb_head_dim
            if att.q_lora_rank:
                linear = h * att.q_lora_rank + att.q_lora_rank * att.num_heads * qk
                other += att.q_lora_rank  # q_a_layernorm
            else:
                linear = h * att.num_heads * qk
            linear += h * (att.kv_lora_rank + att.qk_pos_emb_head_dim)
            linear += att.kv_lora_rank * att.num_heads * (att.qk_head_dim + att.v_head_dim)
            other += att.kv_lora_rank  # kv_a_layernorm
            linear += att.num_heads * att.v_head_dim * h
            return linear, other
        d = self.head_dim
        q, kv = att.num_heads * d, att.query_groups * d
        linear = h * (q + 2 * kv) + q * h
        if self.add_bias_linear:
            other += q + 2 * kv + h
        elif att.qkv_bias:
            other += q + 2 * kv
        if att.qk_layernorm and not self.quirks.export_qk_l2_norm:  # Llama-4's L2 norm has no weights
            other += 2 * d
        if att.softmax_type == "learnable":
            other += att.num_heads
        return linear, other

    def _mlp_params(self, width: int, ffn: int) -> tuple[int, int]:
        """(linear weights, biases) of one MLP from ``width`` through ``ffn`` and back."""
        gated = self.activation.gated
        linear = width * ffn * (3 if gated else 2)
        bias = (ffn * (2 if gated else 1) + width) if self.add_bias_linear else 0
        return linear, bias

    def _moe_params(self, experts: int) -> tuple[int, int]:
        """(linear weights, other) of one MoE block counting ``experts`` routed experts."""
        moe, h = self.require_moe(), self.hidden_size
        width = moe.latent_size or h
        lin_e, bias_e = self._mlp_params(width, moe.ffn_hidden_size)
        linear, other = experts * lin_e, experts * bias_e
        other += h * moe.num_experts + (moe.num_experts if self.add_bias_linear else 0)  # router
        if moe.latent_size:
            linear += 2 * h * moe.latent_size
        if moe.shared_expert_ffn_size:
            lin_s, bias_s = self._mlp_params(h, moe.shared_expert_ffn_size)
            linear, other = linear + lin_s, other + bias_s
        return linear, other

    def _mamba_params(self) -> tuple[int, int]:
        mamba, h = self.require_mamba(), self.hidden_size
        heads, head_dim, groups, state = mamba.resolved(h)
        inner = heads * head_dim
        conv_dim = inner + 2 * groups * state
        linear = h * (2 * inner + 2 * groups * state + heads) + inner * h
        other = conv_dim * mamba.conv_kernel + conv_dim + 3 * heads + inner + self._norm_params(h)
        return linear, other

    def _param_breakdown(self, active: bool) -> dict[str, int]:
        """Parameters by role: embedding, output, quantizable linear weights, other (norms, biases...)."""
        v, h = self.vocab.size, self.hidden_size
        linear = other = 0
        for has_attn, mlp in self.layer_kinds():
            if has_attn:
                a, b = self._attention_params()
                linear, other = linear + a, other + b
            if mlp == "mamba":
                a, b = self._mamba_params()
            elif mlp == "dense":
                a, b = self._mlp_params(h, self.ffn_hidden_size)
                b += self._norm_params(h)
            elif mlp == "moe":
                moe = self.require_moe()
                a, b = self._moe_params(moe.router_topk if active else moe.num_experts)
                b += self._norm_params(h)
            else:
                a = b = 0
            linear, other = linear + a, other + b
        other += self._norm_params(h)  # final norm
        return {
            "embedding": v * h,
            "output": 0 if self.tie_embeddings else v * h,
            "linear": linear,
            "other": other,
        }

    @property
    def params_total(self) -> int:
        """All parameters; input embedding and output layer both counted (once when tied)."""
        return sum(self._param_breakdown(active=False).values())

    @property
    def params_active(self) -> int:
        """Parameters one token touches: routed experts counted ``router_topk`` times, and the whole input
        embedding matrix (``vocab.size x hidden_size``) counted, as the Qwen, Mixtral, Llama-4 and NVIDIA
        model cards count it. DeepSeek's and gpt-oss's cards do not: see :attr:`params_active_no_embedding`."""
        return sum(self._param_breakdown(active=True).values())

    @property
    def params_active_no_embedding(self) -> int:
        """:attr:`params_active` without the input embedding, which a token only looks up a row of: the
        convention of DeepSeek's and gpt-oss's model cards (DeepSeek-V2-Lite 2.4 B, gpt-oss-20b 3.61 B). The
        output layer stays counted; with tied embeddings the shared matrix is that output layer, so it stays."""
        parts = self._param_breakdown(active=True)
        return sum(parts.values()) - (0 if self.tie_embeddings else parts["embedding"])

    def weight_bytes(self, fmt: str = "bf16") -> int:
        """Bytes of weights with the decoder's linear layers in ``fmt`` (embeddings, output, norms in bf16)."""
        parts = self._param_breakdown(active=False)
        bits = get_format(fmt).weight_bits
        rest = parts["embedding"] + parts["output"] + parts["other"]
        return int(parts["linear"] * bits / 8 + rest * 2)

    def kv_cache_bytes_per_token(self, bytes_per_value: float = 2) -> int:
        """KV-cache bytes one token adds (MLA: the compressed latent; Mamba state is per sequence)."""
        n_attn = self.layer_counts.attention
        att = self.attention
        if isinstance(att, MLAttention):
            per_layer = att.kv_lora_rank + att.qk_pos_emb_head_dim
        else:
            per_layer = 2 * att.query_groups * self.head_dim
        return int(n_attn * per_layer * bytes_per_value)

    def flops_per_token(self, context: int | None = None) -> int:
        """Forward FLOPs for one token: 2 per active weight (no input embedding) plus attention scores.

        The attention term counts QK^T and AV for a token attending to ``context`` positions
        (default ``seq_length``; a sliding window caps it on the windowed layers).
        """
        ctx = context or self.seq_length
        parts = self._param_breakdown(active=True)
        matmul = 2 * (parts["linear"] + parts["output"] + (parts["embedding"] if self.tie_embeddings else 0))
        att = self.attention
        if isinstance(att, MLAttention):
            per_pos = att.num_heads * (att.qk_head_dim + att.qk_pos_emb_head_dim + att.v_head_dim)
        else:
            per_pos = att.num_heads * 2 * self.head_dim
        n_attn = self.layer_counts.attention
        score = 0
        if isinstance(att, Attention) and att.window_size and att.window_attn_skip_freq:
            window = att.window_size[0] + 1
            n_full = n_attn // att.window_attn_skip_freq
            score = 2 * per_pos * (n_full * ctx + (n_attn - n_full) * min(ctx, window))
        else:
            score = 2 * per_pos * n_attn * ctx
        return int(matmul + score)

    def summary(self) -> dict[str, object]:
        """The identity and headline numbers, as the CLI's ``--json`` prints them."""
        return {
            "name": self.name,
            "hf_id": self.hf_id,
            "tokenizer_id": self.tokenizer,
            "kind": self.kind,
            "family": self.family,
            "aliases": list(self.aliases),
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "params_total": self.params_total,
            "params_active": self.params_active,
        }
