"""ModelArch -> Megatron-LM command-line flags (the seed's ``MODEL_ARGS``), and back to a canonical form.

``to_megatron_args(arch)`` gives the architecture flags as an argv list (flag and value as separate
items), in the seed's order where it has one. It emits only what describes the model; run-control flags
(batch size, recompute, fusions, sequence parallel, dispatcher, ...) belong to stages and layouts and are
listed, each with its reason, in :data:`RUN_CONTROL_FLAGS`.

Megatron-LM writes one thing several ways (``--use-rotary-position-embeddings --no-position-embedding``
is ``--position-embedding-type rope``; ``--hybrid-override-pattern`` is ``--hybrid-layer-pattern``; a
flag set to its default is the flag left out). :func:`canonical_flags` folds those dialects in one place, so
two argv lists can be compared as multisets of ``(flag, value)``.

Flag names were checked against Megatron-LM ``megatron/training/arguments.py`` (main, 2025-26):
MLA YaRN is ``--rotary-scaling-factor --mscale --mscale-all-dim`` (beta_fast/beta_slow and the original
context length have no flags: MLATransformerConfig's defaults 32/1/4096 apply); standard-attention YaRN
exists only through ``--enable-gpt-oss`` (megatron/post_training). :func:`unexpressible` lists the
facts of an entry that no upstream flag can carry, so a runtime can patch the config instead.

Pure translation: imports spec only, never torch or megatron.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import CompatibilityError, SpecError
from ..spec.arch import MAMBA_DEFAULTS, Llama3Scaling, Mamba, MLAttention, ModelArch, YarnScaling, parse_layer_freq

Pair = tuple[str, str | None]
"""One flag and its value (``None`` for a switch)."""

RUN_CONTROL_FLAGS: dict[str, str] = {
    # run control: how a job runs, not what the model is
    "--save-interval": "checkpoint cadence of a training run; a stage setting",
    "--micro-batch-size": "batch size; a stage setting",
    "--exit-duration-in-mins": "job time limit of a training run",
    "--recompute-activations": "activation recomputation trades memory for time; same weights",
    "--moe-layer-recompute": "MoE activation recomputation; same weights",
    "--sequence-parallel": "a parallel-layout choice (and a no-op at TP=1)",
    "--tensor-model-parallel-size": "parallel layout, resolved by the planner",
    "--pipeline-model-parallel-size": "parallel layout, resolved by the planner",
    "--disable-gloo-process-groups": "process-group backend choice of the launcher",
    "--enable-experimental": "feature gate for experimental Megatron code paths, not a model property",
    "--attention-backend": "kernel choice (flash/fused/auto); same math",
    "--moe-token-dispatcher-type": "communication strategy for experts; same math",
    "--moe-token-drop-policy": "only acts with a capacity factor (token dropping), which no seed sets",
    "--moe-shared-expert-overlap": "overlaps shared-expert compute with dispatch; same math",
    # training-only coefficients: they change gradients, never a forward pass or a checkpoint
    "--moe-aux-loss-coeff": "load-balancing loss weight (training only)",
    "--moe-router-bias-update-rate": "expert-bias update speed (training only)",
    "--attention-dropout": "dropout (training only)",
    "--hidden-dropout": "dropout (training only)",
    "--init-method-std": "weight initialisation; weights are loaded from a checkpoint",
    # fusions: kernel choices with the same math
    "--no-masked-softmax-fusion": "fusion switch",
    "--no-rope-fusion": "fusion switch",
    "--no-bias-swiglu-fusion": "fusion switch",
    "--no-bias-gelu-fusion": "fusion switch",
    "--no-bias-dropout-fusion": "fusion switch",
    "--moe-permute-fusion": "fusion switch",
    "--cross-entropy-loss-fusion": "fusion switch",
    "--cross-entropy-fusion-impl": "fusion implementation choice",
    "--use-fused-weighted-squared-relu": "fused kernel for the weighted squared-ReLU of experts; same math",
    # tokenizer details that HuggingFaceTokenizer ignores
    "--tiktoken-pattern": "applies only to --tokenizer-type TikTokenizer; the seed uses HuggingFaceTokenizer",
}
"""Seed flags that are not architecture, each with the reason it is left to stages and layouts."""

# Megatron-LM defaults: a flag set to one of these is the same as the flag left out.
_DEFAULTS: dict[str, str] = {
    "--rotary-percent": "1.0",
    "--rope-scaling-factor": "8.0",  # only read with --use-rope-scaling
    "--rotary-seq-len-interpolation-factor": "1",  # factor 1 interpolates nothing
    "--moe-router-score-function": "softmax",
    "--moe-router-load-balancing-type": "aux_loss",
    "--moe-layer-freq": "1",
    "--norm-epsilon": "1e-5",
    "--mamba-num-groups": str(MAMBA_DEFAULTS["num_groups"]),
    "--mamba-state-dim": str(MAMBA_DEFAULTS["state_dim"]),
    "--mamba-head-dim": str(MAMBA_DEFAULTS["head_dim"]),
}


_ACTIVATION_FLAGS = {
    "swiglu": "--swiglu",
    "squared_relu": "--squared-relu",
    "quick_geglu": "--quick-geglu",
    "gelu_tanh": "--openai-gelu",  # GELU's tanh approximation instead of Megatron's default exact GELU
}


# --------------------------------------------------------------------------- formatting
def _num(value: float) -> str:
    """Integral values without a fraction (``--rotary-base`` is ``type=int`` in Megatron), others as repr."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _flt(value: float) -> str:
    """A float flag written with a fraction (``8.0``), as the seed writes scaling factors."""
    return repr(float(value))


# --------------------------------------------------------------------------- ModelArch -> flags
def megatron_flag_pairs(arch: ModelArch) -> list[Pair]:
    """The architecture as ``(flag, value)`` pairs (``None`` value: a switch)."""
    out: list[Pair] = []
    add = out.append

    def switch(flag: str, on: object) -> None:
        """A flag without a value, emitted when ``on``."""
        if on:
            add((flag, None))

    def opt(flag: str, value: object, fmt: Callable[[Any], str] = str) -> None:
        """A flag with a value, emitted when the value is set (``None``: Megatron's default applies)."""
        if value is not None:
            add((flag, fmt(value)))

    att = arch.attention
    switch("--trust-remote-code", arch.trust_remote_code)
    switch("--" + arch.params_dtype, arch.params_dtype != "fp32")  # fp32 is Megatron's default: no flag
    switch("--disable-bias-linear", not arch.add_bias_linear)
    switch("--add-qkv-bias", not isinstance(att, MLAttention) and att.qkv_bias and not arch.add_bias_linear)
    switch("--untie-embeddings-and-output-weights", not arch.tie_embeddings)

    # position embedding
    pos = arch.position
    if pos is None:
        add(("--position-embedding-type", "none"))
    elif isinstance(pos.scaling, YarnScaling) and not isinstance(att, MLAttention):
        if not arch.quirks.gpt_oss:
            raise CompatibilityError(
                "Megatron-LM has no flags for YaRN on standard attention (only the gpt-oss preset)",
                path="position.scaling",
                hint="set quirks.gpt_oss for gpt-oss models, or use Llama-3 scaling / plain RoPE",
            )
        # --enable-gpt-oss makes the builder switch to YaRN itself; no --position-embedding-type
    else:
        add(("--position-embedding-type", "rope"))

    # norm and activation
    add(("--normalization", "RMSNorm" if arch.norm.type == "rmsnorm" else "LayerNorm"))
    switch("--apply-layernorm-1p", arch.norm.type == "layernorm1p")
    opt("--norm-epsilon", arch.norm.epsilon if arch.norm.epsilon != 1e-5 else None, _num)
    act = arch.activation
    if act.type in ("geglu", "geglu_tanh"):
        raise CompatibilityError("Megatron-LM has no flag for plain GeGLU", path="activation.type")
    if act.type in _ACTIVATION_FLAGS:  # gelu: Megatron's default activation, no flag
        add((_ACTIVATION_FLAGS[act.type], None))

    # sizes
    opt("--num-layers", arch.num_layers if arch.mamba is None else None)
    opt("--hidden-size", arch.hidden_size)
    opt("--ffn-hidden-size", arch.ffn_hidden_size)
    opt("--num-attention-heads", att.num_heads)
    if isinstance(att, MLAttention):
        switch("--multi-latent-attention", True)
        opt("--kv-lora-rank", att.kv_lora_rank)
        opt("--v-head-dim", att.v_head_dim)
        opt("--q-lora-rank", att.q_lora_rank)
        opt("--qk-head-dim", att.qk_head_dim)
        switch("--qk-layernorm", att.qk_layernorm)
        opt("--qk-pos-emb-head-dim", att.qk_pos_emb_head_dim)
    else:
        gqa = att.num_query_groups is not None and att.num_query_groups != att.num_heads
        switch("--group-query-attention", gqa)
        opt("--num-query-groups", att.num_query_groups if gqa else None)
        opt("--kv-channels", att.kv_channels)
        switch("--qk-layernorm", att.qk_layernorm)
        opt("--softmax-type", att.softmax_type if att.softmax_type != "vanilla" else None)
        opt("--window-attn-skip-freq", att.window_attn_skip_freq)
        opt("--window-size", att.window_size, lambda w: f"{w[0]},{w[1]}")
    switch("--attention-softmax-in-fp32", att.softmax_in_fp32)

    # mixture of experts
    moe = arch.moe
    if moe is not None:
        opt("--num-experts", moe.num_experts)
        opt("--moe-layer-freq", moe.layer_freq if moe.layer_freq != 1 else None)
        opt("--moe-ffn-hidden-size", moe.ffn_hidden_size)
        switch("--moe-grouped-gemm", moe.grouped_gemm)
        opt("--moe-router-dtype", moe.router_dtype)
        opt("--moe-router-score-function", moe.router_score_function)
        switch("--moe-router-enable-expert-bias", moe.router_enable_expert_bias)
        opt("--moe-router-topk", moe.router_topk)
        opt("--moe-router-num-groups", moe.router_num_groups)
        opt("--moe-router-group-topk", moe.router_group_topk)  # set together with the groups (MoE checks)
        switch("--moe-router-pre-softmax", moe.router_pre_softmax)
        opt("--moe-router-topk-scaling-factor", moe.router_topk_scaling_factor, _num)
        opt("--moe-shared-expert-intermediate-size", moe.shared_expert_ffn_size)
        opt("--moe-router-load-balancing-type", moe.load_balancing_type)
        opt("--moe-latent-size", moe.latent_size)

    # hybrid Mamba
    mamba = arch.mamba
    if mamba is not None:
        switch("--is-hybrid-model", True)
        opt("--mamba-num-heads", mamba.num_heads)
        opt("--mamba-head-dim", mamba.head_dim)
        opt("--hybrid-layer-pattern", mamba.pattern)
        opt("--mamba-num-groups", mamba.num_groups)
        opt("--mamba-state-dim", mamba.state_dim)

    # lengths, tokenizer, vocabulary
    opt("--seq-length", arch.seq_length)
    opt("--max-position-embeddings", arch.max_position_embeddings)
    opt("--tokenizer-type", "HuggingFaceTokenizer")
    opt("--padded-vocab-size", arch.vocab.padded_size)
    opt("--make-vocab-size-divisible-by", arch.vocab.divisible_by)
    switch("--use-mcore-models", True)

    # rotary details
    if pos is not None:
        opt("--rotary-percent", _num(pos.percent) if pos.percent != 1.0 else "1.0")
        opt("--rotary-base", pos.base, _num)
        switch("--rotary-interleaved", pos.interleaved)
        if isinstance(pos.scaling, Llama3Scaling):
            switch("--use-rope-scaling", True)
            opt("--rope-scaling-factor", pos.scaling.factor, _flt)
        elif isinstance(pos.scaling, YarnScaling) and isinstance(att, MLAttention):
            opt("--rotary-scaling-factor", pos.scaling.factor, _num)
            opt("--mscale", pos.scaling.mscale if pos.scaling.mscale is not None else 1.0, _num)
            opt("--mscale-all-dim", pos.scaling.mscale_all_dim or 0.0, _num)
        opt("--no-rope-freq", pos.no_rope_freq)

    # per-model workaround switches
    q = arch.quirks
    switch("--export-force-local-attention", q.export_force_local_attention)
    switch("--export-qk-l2-norm", q.export_qk_l2_norm)
    switch("--export-moe-apply-probs-on-input", q.export_moe_apply_probs_on_input)
    switch("--enable-gpt-oss", q.gpt_oss)
    opt("--glu-linear-offset", act.glu_linear_offset, _flt)
    opt("--activation-func-clamp-value", act.clamp_value, _flt)
    opt("--export-model-type", "HybridModel" if mamba is not None else None)
    return out


def to_megatron_args(arch: ModelArch) -> list[str]:
    """Megatron-LM flags for ``arch`` as an argv list: ``["--num-layers", "36", "--swiglu", ...]``."""
    argv: list[str] = []
    for flag, value in megatron_flag_pairs(arch):
        argv.append(flag)
        if value is not None:
            argv.append(value)
    return argv


def unexpressible(arch: ModelArch) -> list[str]:
    """Facts of ``arch`` that no upstream Megatron-LM flag carries (a runtime must set them on the config)."""
    notes: list[str] = []
    pos, att = arch.position, arch.attention
    if pos is None:
        return notes
    s = pos.scaling
    if isinstance(s, Llama3Scaling):
        if (s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings) != (1.0, 4.0, 8192):
            notes.append(
                f"Llama-3 RoPE scaling low_freq_factor={s.low_freq_factor:g}, high_freq_factor={s.high_freq_factor:g}, "
                f"original_max_position_embeddings={s.original_max_position_embeddings}: Megatron's "
                "RotaryEmbedding._apply_scaling hard-codes 1/4/8192"
            )
    elif isinstance(s, YarnScaling) and isinstance(att, MLAttention):
        fixed = {"beta_fast": 32.0, "beta_slow": 1.0, "original_max_position_embeddings": 4096}
        for key, default in fixed.items():
            value = getattr(s, key)
            if value is not None and float(value) != float(default):
                notes.append(
                    f"YaRN {key}={value:g}: Megatron has no flag; MLATransformerConfig.{key} defaults to {default:g}"
                )
    elif isinstance(s, YarnScaling) and arch.quirks.gpt_oss:
        builder = {"factor": 32.0, "original_max_position_embeddings": 131072, "beta_fast": 32.0, "beta_slow": 1.0,
                   "mscale": 1.0, "mscale_all_dim": 0.0}
        for key, default in builder.items():
            value = getattr(s, key)
            if value is not None and float(value) != float(default):
                notes.append(
                    f"YaRN {key}={value:g}: --enable-gpt-oss sets yarn_{key if key != 'factor' else 'rotary_scaling_factor'}"
                    f"={default:g} in the post-training model builder and no flag overrides it"
                )
    return notes


# --------------------------------------------------------------------------- canonical form
def pairs_from_argv(argv: Sequence[str]) -> list[Pair]:
    """Split an argv list into ``(flag, value)`` pairs; a token after a flag is its value unless it is a flag."""
    out: list[Pair] = []
    i = 0
    while i < len(argv):
        flag = argv[i]
        if not flag.startswith("--"):
            raise ValueError(f"expected a flag at position {i}, got {flag!r}")
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append((flag, argv[i + 1]))
            i += 2
        else:
            out.append((flag, None))
            i += 1
    return out


def canonical_value(value: str | None) -> str:
    if value is None:
        return ""
    try:
        number = float(value)
    except ValueError:
        return value
    if not math.isfinite(number):
        return value
    return repr(number)


def canonical_flags(pairs: Iterable[Pair]) -> Counter[tuple[str, str]]:
    """Fold Megatron's flag dialects and defaults: the multiset two equivalent flag lists share."""
    items = [(f, v) for f, v in pairs if f not in RUN_CONTROL_FLAGS]
    flags = {f for f, _ in items}

    # one spelling per concept
    items = [("--hybrid-layer-pattern", v) if f == "--hybrid-override-pattern" else (f, v) for f, v in items]
    values = {f: v for f, v in items}
    if "--use-rotary-position-embeddings" in flags:
        items = [(f, v) for f, v in items if f not in ("--use-rotary-position-embeddings", "--no-position-embedding")]
        if "--position-embedding-type" not in flags:
            items.append(("--position-embedding-type", "rope"))
    pattern = values.get("--hybrid-layer-pattern")

    # contextual defaults
    hidden = _int(values.get("--hidden-size"))
    heads = _int(values.get("--num-attention-heads"))
    num_layers = _int(values.get("--num-layers"))
    if pattern is not None:
        num_layers = len([c for c in pattern if c not in "|/"])

    def redundant(flag: str, value: str | None) -> bool:
        if flag in _DEFAULTS and value is not None and canonical_value(value) == canonical_value(_DEFAULTS[flag]):
            return True
        if flag == "--is-hybrid-model" and pattern is not None:
            return True  # implied by a hybrid layer pattern
        if flag == "--num-layers" and pattern is not None and _int(value) == num_layers:
            return True  # Megatron derives it from the pattern
        if flag == "--kv-channels":
            if "--multi-latent-attention" in flags:
                return True  # MLA uses qk/v head dims; kv_channels is unused
            if hidden and heads and _int(value) == hidden // heads:
                return True
        if flag == "--moe-ffn-hidden-size" and value == values.get("--ffn-hidden-size"):
            return True
        if flag == "--mamba-num-heads" and hidden:
            head_dim = _int(values.get("--mamba-head-dim")) or MAMBA_DEFAULTS["head_dim"]
            if _int(value) == Mamba.default_num_heads(hidden, head_dim):
                return True
        return False

    out: Counter[tuple[str, str]] = Counter()
    for flag, value in items:
        if redundant(flag, value):
            continue
        if flag == "--moe-layer-freq" and value is not None and num_layers:
            try:
                expanded = parse_layer_freq(int(value) if value.isdigit() else value, num_layers)
            except (SpecError, ValueError):  # unreadable: left as written, the comparison shows it
                pass
            else:
                if all(expanded):
                    continue  # every layer MoE: the default
                out[(flag, "".join("1" if e else "0" for e in expanded))] += 1
                continue
        out[(flag, canonical_value(value))] += 1
    return out


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
