"""Pattern coverage: what a ModelOpt config will quantize in a model, worked out from names alone.

``mtq.quantize`` applies its ``quant_cfg`` entries in order to every quantizer whose name matches
(``fnmatch``), later entries overriding earlier ones. We replay that on the quantizer names the
architecture produces (:mod:`..bridges.modelopt_names`), so a pattern that matches nothing (a typo, a
layer index past the end, HF naming in a Megatron run) is reported before any model is built, with
the counts of quantized modules per kind.

Large MoE models have ~10^5 quantizers; patterns without digits, ``?`` or ``[!`` cannot tell layer or
expert indices apart, so names are grouped by their index-free form and each group is replayed once.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import attrs

from ..bridges.modelopt_names import QuantModule, generic_exclusions, matches
from ..spec.serde import to_dict

_INDEX_DIGIT = re.compile(r"(?<![A-Za-z_0-9])\d")
_DIGITS = re.compile(r"(?<=\.)\d+(?=\.|$)")  # layer / expert indices, not the 1 of fc1


def _simple(pattern: str) -> bool:
    """True when the pattern cannot tell one layer/expert index from another: no digit that could start
    an index, no ``?``, no negated class (only ``*`` can then cover an index, so any index matches like ``0``)."""
    # a digit right after a letter ("conv1d", "fc1") cannot land in a pure-digit ".12." index segment
    return _INDEX_DIGIT.search(pattern) is None and "?" not in pattern and "[!" not in pattern


def _role(quantizer: str) -> str:
    if quantizer.endswith("bmm_quantizer"):
        return "kv"
    return quantizer.rsplit(".", 1)[-1].removesuffix("_quantizer")  # weight / input / output


@attrs.frozen(kw_only=True)
class PatternUse:
    """One ``quant_cfg`` entry and how many quantizers it matched."""

    index: int
    pattern: str
    parent_class: str | None
    action: str
    """``quantize`` (has cfg), ``enable`` or ``disable``."""
    source: str
    matched: int


@attrs.frozen(kw_only=True)
class Coverage:
    """The outcome of replaying a config on a model's quantizer names."""

    naming: str
    """``megatron`` or ``hf``: whose module names were used."""
    modules: dict[str, dict[str, int]]
    """Per module kind: ``{"quantized": n, "total": m}`` (quantized = weight quantizer enabled)."""
    quantizers: dict[str, int]
    """Enabled quantizers per role: ``weight``, ``input``, ``output``, ``kv``."""
    patterns: tuple[PatternUse, ...]

    @property
    def quantized_modules(self) -> int:
        return sum(v["quantized"] for v in self.modules.values())

    @property
    def total_modules(self) -> int:
        return sum(v["total"] for v in self.modules.values())

    def unmatched(self, *, sources: Sequence[str] | None = None) -> list[PatternUse]:
        """Entries that matched no quantizer, ModelOpt's generic exclusions left out."""
        generic = generic_exclusions()
        return [
            p for p in self.patterns
            if p.matched == 0 and p.pattern not in generic and (sources is None or p.source in sources)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The fields (through the package's converter) plus the derived module counts."""
        return {**to_dict(self), "quantized_modules": self.quantized_modules, "total_modules": self.total_modules}


def _action(entry: dict[str, Any]) -> str:
    if entry.get("cfg") is not None:
        return "quantize" if entry.get("enable", True) else "disable"
    return "enable" if entry.get("enable") else "disable"


def _initial(quantizer: str) -> bool:
    """A freshly inserted quantizer: input/weight on, output and attention bmm off until configured."""
    return _role(quantizer) in ("weight", "input")


def replay(quant_cfg: Sequence[dict[str, Any]], modules: Sequence[QuantModule], *, naming: str = "megatron",
           sources: Sequence[str] | None = None) -> Coverage:
    """Apply ``quant_cfg`` (ModelOpt list format) to the quantizers of ``modules`` as ``mtq.quantize`` does."""
    entries = [dict(e) for e in quant_cfg]
    srcs = list(sources) if sources is not None else ["config"] * len(entries)
    complex_idx = [i for i, e in enumerate(entries) if not _simple(str(e.get("quantizer_name", "*")))]
    simple_cache: dict[tuple[int, str], bool] = {}

    # group quantizers: (canonical name, parent class, complex-match signature) -> count and kind
    groups: dict[tuple[str, str, tuple[bool, ...]], int] = Counter()
    group_kind: dict[tuple[str, str, tuple[bool, ...]], tuple[str, str]] = {}
    per_module: Counter[tuple[str, str, str, tuple[str, ...]]] = Counter()
    for mod in modules:
        canon_mod = _DIGITS.sub("0", mod.name)
        if not complex_idx:  # the common case: one group per module template, no per-name matching
            per_module[(canon_mod, mod.parent_class, mod.kind, mod.quantizers)] += 1
            continue
        for q in mod.quantizers:
            full = f"{mod.name}.{q}" if mod.name else q
            sig = tuple(matches(str(entries[i]["quantizer_name"]), full) for i in complex_idx)
            key = (f"{canon_mod}.{q}" if canon_mod else q, mod.parent_class, sig)
            groups[key] += 1
            group_kind[key] = (mod.kind, mod.name)
    for (canon_mod, parent, kind, quantizers), count in per_module.items():
        for q in quantizers:
            key = (f"{canon_mod}.{q}" if canon_mod else q, parent, ())
            groups[key] += count
            group_kind[key] = (kind, canon_mod)

    matched = [0] * len(entries)
    enabled_roles: Counter[str] = Counter()
    per_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"quantized": 0, "total": 0})
    weight_on: dict[tuple[str, str, tuple[bool, ...]], bool] = {}
    for key, count in groups.items():
        canon, parent, sig = key
        sig_of = dict(zip(complex_idx, sig, strict=True))
        on = _initial(canon)
        for i, e in enumerate(entries):
            pc = e.get("parent_class")
            if pc and pc != parent:
                continue
            pat = str(e.get("quantizer_name", "*"))
            if i in sig_of:
                hit = sig_of[i]
            else:
                ck = (i, canon)
                cached = simple_cache.get(ck)
                if cached is None:
                    cached = simple_cache[ck] = matches(pat, canon)
                hit = cached
            if not hit:
                continue
            matched[i] += count
            action = _action(e)
            on = action in ("quantize", "enable")
        if on:
            enabled_roles[_role(canon)] += count
        kind, _name = group_kind[key]
        if canon.endswith((".weight_quantizer", ".k_bmm_quantizer")):  # one per module
            weight_on[key] = on
    # module counts: a module is quantized when its weight (or, for attention, kv) quantizer is on
    for key, on in weight_on.items():
        kind, _ = group_kind[key]
        n = groups[key]
        per_kind[kind]["total"] += n
        if on:
            per_kind[kind]["quantized"] += n
    uses = tuple(
        PatternUse(index=i, pattern=str(e.get("quantizer_name", "*")), parent_class=e.get("parent_class"),
                   action=_action(e), source=srcs[i], matched=matched[i])
        for i, e in enumerate(entries)
    )
    return Coverage(naming=naming, modules=dict(per_kind), quantizers=dict(enabled_roles), patterns=uses)


def module_patterns_unmatched(patterns: Sequence[str], modules: Sequence[QuantModule]) -> list[str]:
    """Module-name wildcards (``auto_quantize``'s ``disabled_layers``) that match no module."""
    names = [m.name for m in modules]
    out = []
    for pat in patterns:
        rx = re.compile(fnmatch.translate(pat))
        if not any(rx.match(n) for n in names) and pat not in generic_exclusions():
            out.append(pat)
    return out


def suggest(pattern: str, modules: Sequence[QuantModule], *, n: int = 3) -> str:
    """A hint for a pattern that matched nothing: close real names, or the layer count."""
    import difflib

    m = re.search(r"layers\.(\d+)", pattern)
    layers = {int(x.group(1)) for mod in modules if (x := re.search(r"layers\.(\d+)\.", mod.name))}
    if m and layers and int(m.group(1)) not in layers:
        return f"the model has layers 0..{max(layers)}"
    core = pattern.strip("*.")
    parts = sorted({seg for mod in modules for seg in mod.name.split(".") if not seg.isdigit()})
    close = difflib.get_close_matches(core.split(".")[-1] if core else pattern, parts, n=n, cutoff=0.5)
    if close:
        return "module names here contain " + ", ".join(repr(c) for c in close) + "; e.g. " + repr(
            next(mod.name for mod in modules if close[0] in mod.name.split(".")))
    example = modules[0].name if modules else ""
    return f"Megatron-Core names look like {example!r}" if example else ""
