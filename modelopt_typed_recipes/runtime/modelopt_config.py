"""``mtq.auto_quantize`` inputs from an AutoQuantize stage, for both backends (Hugging Face and Megatron-Core).

A Quantize stage's config is not built here: the plan composes it once (``StagePlan.quant_config``, from
ModelOpt's YAML files; a test compares it with the live ``mtq`` constants and ModelOpt's recipe loader).
Candidate formats are deep copies of the live ``mtq`` constants, so ModelOpt's shared dicts are never
mutated. What differs between the backends (which layers auto-quantize never searches, whether they count
in its budget) is a parameter.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import attrs

from ..bridges import modelopt_names as mn
from ..errors import SpecError, UnknownNameError, did_you_mean
from ..spec.techniques import AutoQuantize, resolve_format


def _mtq() -> Any:
    import modelopt.torch.quantization as mtq

    return mtq


def _field(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _live_preset(name: str, *, path: str) -> dict[str, Any]:
    """``mtq.<name>`` itself (not a copy); UnknownNameError with suggestions when ModelOpt has no such preset."""
    mtq = _mtq()
    choices = [c for c in dir(mtq) if c.endswith(("_CFG", "_CONFIG")) and isinstance(getattr(mtq, c), dict)]
    if name not in choices:
        raise UnknownNameError(f"ModelOpt {getattr(mtq, '__version__', '')} has no preset {name!r}".replace("  ", " "),
                               path=path, hint=did_you_mean(name, choices) or "see mtq.config.choices")
    return getattr(mtq, name)


def preset_dict(name: str, *, path: str) -> dict[str, Any]:
    """A deep copy of ``mtq.<name>``; UnknownNameError with suggestions when ModelOpt has no such preset."""
    return copy.deepcopy(_live_preset(name, path=path))


def _load_recipe(ref: str, *, path: str) -> Any:
    from modelopt.recipe import load_recipe

    try:
        return load_recipe(ref)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise SpecError(f"ModelOpt cannot load recipe {ref!r}: {exc}", path=_field(path, "recipe")) from None


@attrs.frozen(kw_only=True)
class AutoQuantizeInputs:
    """What ``mtq.auto_quantize`` needs from an AutoQuantize stage (or its ModelOpt recipe)."""

    constraints: dict[str, Any]
    formats: list[dict[str, Any]]
    """Candidate format configs (deep copies)."""
    disabled_layers: list[str]
    method: str
    score_size: int
    kv_entries: list[dict[str, Any]] | None = None
    """KV-cache ``quant_cfg`` entries to apply after the search (a copy), or None."""

    def score_steps(self, *, batches: int, batch_size: int, replicas: int = 1) -> int:
        """``num_score_steps`` for one data-parallel replica's loader of ``batches`` batches. ModelOpt sums each
        layer's score over the replicas, so ``score_size`` counts the samples of all replicas together: each scores
        ``score_size / replicas`` of them. Rounded down to whole batches (at least one), the one rule for one
        process and for many; Megatron-LM's ``quantize.py`` rounds up instead, which would change one-process runs."""
        return min(batches, max(self.score_size // (replicas * batch_size), 1))


def auto_quantize_inputs(stage: AutoQuantize, *, path: str = "", disabled: Iterable[str],
                         budget_excludes_disabled: bool = False) -> AutoQuantizeInputs:
    """``mtq.auto_quantize`` inputs from the stage or its recipe.

    ``disabled``: the backend's module-name patterns never searched (the stage's and the recipe's
    exclusions are added). ``budget_excludes_disabled``: without a recipe, also leave those layers out
    of the effective-bits cost (the recipe's own ``cost_excluded_layers`` always apply).
    """
    if stage.recipe is not None:
        from modelopt.recipe import ModelOptAutoQuantizeRecipe

        recipe = _load_recipe(stage.recipe, path=path)
        if not isinstance(recipe, ModelOptAutoQuantizeRecipe):
            raise SpecError(f"{stage.recipe!r} is not an auto-quantize recipe", path=_field(path, "recipe"),
                            hint="use technique: quantize for PTQ recipes")
        aq = recipe.auto_quantize
        searched: dict[str, Any] = aq.constraints.model_dump(exclude_none=True)
        if aq.cost_excluded_layers:
            searched.setdefault("cost", {})["excluded_module_name_patterns"] = list(aq.cost_excluded_layers)
        kv = aq.kv_cache.model_dump(exclude_unset=True).get("quant_cfg") if aq.kv_cache is not None else None
        # exclude_unset: ModelOpt then recognises each candidate as its named preset (same QuantizeConfig)
        return AutoQuantizeInputs(
            constraints=searched, formats=[c.model_dump(exclude_unset=True) for c in aq.candidate_formats],
            disabled_layers=sorted({*disabled, *(aq.disabled_layers or []), *stage.exclude}),
            method=aq.auto_quantize_method, score_size=aq.score_size, kv_entries=kv or None)
    formats = []
    for i, name in enumerate(stage.formats):
        where = _field(path, f"formats[{i}]")
        fmt = resolve_format(name, field=where)
        formats.append(preset_dict(fmt.preset if fmt is not None else name, path=where))
    layers = sorted({*disabled, *stage.exclude})
    constraints: dict[str, Any] = {"effective_bits": stage.effective_bits}
    if budget_excludes_disabled:
        constraints["cost"] = {"excluded_module_name_patterns": layers}
    kv = mn.kv_cache_entries(stage.kv_cache) if stage.kv_cache is not None else None  # a fresh copy
    return AutoQuantizeInputs(constraints=constraints, formats=formats, disabled_layers=layers, method=stage.method,
                              score_size=stage.score_size, kv_entries=kv or None)
