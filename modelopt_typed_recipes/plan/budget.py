"""The lowest effective-bits budget an auto-quantize search can reach, computed as ModelOpt 0.47 does.

``mtq.auto_quantize`` refuses an infeasible budget only after the model is built and quantizers are
inserted (``_verify_resolved_constraint``: "The minimum achievable effective bits is 6.1818"). The
arithmetic needs only the architecture, so ``check`` does it first, the same way:

- a format's cost is ``estimate_quant_compression``: the smallest ``effective_bits / 16`` (else
  ``num_bits / 16``, ``(E + M + 1) / 16`` for floating-point pairs) over its enabled quantizer entries;
- modules are grouped by ModelOpt's ``quant_grouping_rules`` (q/k/v share one choice, gate/up one, a
  layer's experts one); a group with any disabled module is "no quantization" (16 bits); a group whose
  modules all match a cost-excluded pattern weighs 0;
- the floor is the cheapest choice of every group, weighted by weight elements, over the uncompressed total.

Pure Python: module names and sizes come from :mod:`..bridges.modelopt_names`.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..bridges.modelopt_names import QuantModule
from ..errors import SpecError

GROUPING_RULES = (
    r"^(.*?)\.(q_proj|k_proj|v_proj)$",
    r"^(.*?\.mlp\.experts)\.\d+\.(gate_proj|up_proj|down_proj)$",
    r"^(.*?\.mixer\.experts)\.\d+\.(up_proj|down_proj)$",
    r"^(.*?\.mlp\.experts\.local_experts)\.\d+\.(linear_fc1|linear_fc2)$",
    r"^(.*?)\.(gate_proj|up_proj)$",
    r"^(.*?)\.(\d+\.(w1|w2|w3))$",
    r"^(.*?)\.((w1_linear|w2_linear|w3_linear)\.\d+)$",
)
"""``AutoQuantizeSearcher.quant_grouping_rules`` of ModelOpt 0.47 (its regular-expression rules; the two
callable rules are for Qwen3.5 linear attention, which this package does not build)."""
_RULES = tuple(re.compile(r) for r in GROUPING_RULES)


def _quantizer_compression(cfg: Any) -> float:
    if isinstance(cfg, list):
        return min((_quantizer_compression(c) for c in cfg), default=1.0)
    if not isinstance(cfg, dict) or cfg.get("enable", True) is False:
        return 1.0
    if cfg.get("effective_bits") is not None:
        return float(cfg["effective_bits"]) / 16
    bits = cfg.get("num_bits")
    if isinstance(bits, list | tuple):
        return (sum(bits) + 1) / 16
    if isinstance(bits, int):
        return bits / 16
    return 1.0


def format_compression(config: dict[str, Any]) -> float:
    """ModelOpt's ``estimate_quant_compression`` of one candidate format (a quantize config as a dict)."""
    if config.get("effective_bits") is not None:
        return float(config["effective_bits"]) / 16
    cfgs = [e["cfg"] for e in config.get("quant_cfg") or []
            if isinstance(e, dict) and e.get("enable", True) is not False and e.get("cfg") is not None]
    return _quantizer_compression(cfgs) if cfgs else 1.0


def _group(name: str) -> str:
    for rule in _RULES:
        m = rule.match(name)
        if m:
            return m.group(1)
    return name


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def minimum_effective_bits(modules: Iterable[QuantModule], formats: Sequence[dict[str, Any]], *,
                           disabled: Sequence[str] = (), cost_excluded: Sequence[str] = ()) -> float | None:
    """The all-cheapest assignment's effective bits over ``modules`` (None when no module has weight)."""
    cheapest = min((format_compression(f) for f in formats), default=1.0)
    groups: dict[str, list[QuantModule]] = {}
    for m in modules:
        if m.weight_numel > 0:
            groups.setdefault(_group(m.name), []).append(m)
    total = floor = 0.0
    for members in groups.values():
        names = [m.name for m in members]
        weight = 0.0 if cost_excluded and all(_matches(n, cost_excluded) for n in names) else 1.0
        size = weight * sum(m.weight_numel for m in members)
        off = any(_matches(n, disabled) for n in names)
        total += size
        floor += size * (1.0 if off else min(cheapest, 1.0))
    if total <= 0:
        return None
    return floor / total * 16


def budget_error(budget: float | None, modules: Sequence[QuantModule], formats: Sequence[dict[str, Any]], *,
                 disabled: Sequence[str], cost_excluded: Sequence[str], arch_name: str,
                 path: str) -> SpecError | None:
    """The error ``mtq.auto_quantize`` would raise after building the model, or None when ``budget`` is
    reachable (or unknown)."""
    if budget is None or not formats:
        return None
    floor = minimum_effective_bits(modules, formats, disabled=disabled, cost_excluded=cost_excluded)
    if floor is None or budget >= floor - 1e-9:
        return None
    up = math.ceil(floor * 100) / 100
    return SpecError(
        f"effective_bits={budget:g} is below what the candidates can reach on {arch_name}: {floor:.4f} bits with "
        "every searchable layer in the smallest format and the layers never quantized (output layer, routers, "
        "exclusions) at 16 bits (ModelOpt's auto_quantize would stop there after building the model)",
        path=path, hint=f"use effective_bits >= {up:g}, or add a smaller candidate format")
