"""Where a :class:`ModelArch` and a ``config.json`` describe different models.

What the comparison ignores (:data:`DIFF_IGNORED`), and why:

* identity and bookkeeping (``name``, ``hf_id``, ``tokenizer_id``, ``family``, ``aliases``, ``notes``,
  ``trust_remote_code``, ``schema_version``): they name or load a checkpoint, they do not shape it;
* Megatron run settings that ``config.json`` cannot hold (``seq_length``, ``params_dtype``, the vocabulary
  padding rule, the router dtype, grouped GEMM, the load-balancing loss, softmax in fp32, forced local
  attention at export);
* ``max_position_embeddings``: Megatron only sizes its RoPE cache with it, and Megatron-LM's conf files
  deliberately use the pre-scaling length (Llama-3.1: 8192 where ``config.json`` says 131072); the
  registry entries that keep such a value say so in their notes.

Before comparing, both sides are put in a canonical form so that equal models compare equal however they
were written: MoE layer frequencies become per-layer lists, Mamba sizes get Megatron's defaults, ``None``
query groups and head dims get their implied values, a missing top-k scaling factor is 1.0,
``router_pre_softmax`` (meaningless for sigmoid routers) is dropped for sigmoid routing, and the dense
``ffn_hidden_size`` is dropped when no layer has a dense MLP (Mixtral, gpt-oss).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import attrs

from ...spec.arch import ModelArch
from ...spec.serde import to_dict
from .read import from_hf_config

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


def canonical(arch: ModelArch) -> dict[str, Any]:
    """The spec as a dict in which equal architectures are equal (see the module docstring)."""
    d: dict[str, Any] = to_dict(arch)
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
    a, b = canonical(arch), canonical(theirs)
    for path in ignore:
        _drop(a, path)
        _drop(b, path)
    out: list[FieldDiff] = []
    _compare(a, b, "", out)
    return out
