"""AutoQuantize (``mtq.auto_quantize``: a per-layer format search under an effective-bits budget): its checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...bridges import modelopt_names as mn
from ...errors import CompatibilityError, RecipeError, SpecError
from ...spec.formats import FORMAT_BY_PRESET
from ...spec.techniques import AutoQuantize, resolve_format
from ..budget import budget_error
from ..coverage import Coverage, module_patterns_unmatched, replay, suggest
from . import Findings, StageContext, Technique, register
from .quantize import algorithm_method, modules

if TYPE_CHECKING:
    from ..environment import Environment


def cuda_problem(stage: AutoQuantize, path: str) -> RecipeError | None:
    if not stage.needs_cuda:
        return None
    return CompatibilityError("a candidate format fake-quantizes with CUDA kernels only (NVFP4/MX)",
                              path=f"{path}.formats", hint="run on a GPU or use fp8/int4_awq candidates")


def environment_problem(_stage: AutoQuantize, env: Environment, path: str) -> RecipeError | None:
    """``mtq.auto_quantize`` chooses the formats with pulp's CBC solver, after every candidate's calibration and
    scoring: without it the search would fail only then, with pulp's traceback."""
    why = env.lp_solver_problem()
    if why is None:
        return None
    return CompatibilityError(f"{why}; auto-quantize chooses its formats with it", path=path,
                              hint="install pulp with its bundled CBC solver (nvidia-modelopt's dependency): "
                                   "pip install --force-reinstall --no-deps pulp")


def check(stage: AutoQuantize, ctx: StageContext) -> Findings:
    path, arch = ctx.path, ctx.arch
    errors: list[RecipeError] = []
    formats: list[dict[str, Any]] = []
    disabled = list(stage.exclude)
    cost_excluded: list[str] = []
    budget = stage.effective_bits
    if stage.recipe is not None:
        try:
            data = mn.load_recipe_dict(stage.recipe)
        except RecipeError as err:
            return Findings(errors=(type(err)(err.message, path=f"{path}.recipe", hint=err.hint),))
        if data["metadata"].get("recipe_type") != "auto_quantize":
            return Findings(errors=(SpecError(f"{stage.recipe!r} is a PTQ recipe", path=f"{path}.recipe",
                                              hint="use technique: quantize for it"),))
        aq = data["auto_quantize"]
        formats = list(aq.get("candidate_formats") or [])
        disabled += list(aq.get("disabled_layers") or [])
        cost_excluded = list(aq.get("cost_excluded_layers") or [])
        constraints = aq.get("constraints") or {}
        budget = constraints.get("effective_bits") if not constraints.get("cost_model") else None
        source = stage.recipe
    else:
        for j, name in enumerate(stage.formats):
            fmt = FORMAT_BY_PRESET.get(name)
            preset = name if fmt is None and name.upper() == name else None
            if preset is None:
                known = resolve_format(name)
                preset = known.preset if known is not None else name
            try:
                mn.check_preset(preset, path=f"{path}.formats[{j}]")
            except RecipeError as err:
                errors.append(err)
                continue
            formats.append(mn.preset_config(preset))
        source = ", ".join(stage.formats)
    for j, candidate in enumerate(formats):
        method = algorithm_method(candidate)
        if method in mn.AUTO_QUANTIZE_FORBIDDEN_ALGORITHMS:
            errors.append(SpecError(f"auto_quantize cannot search a format calibrated with {method}",
                                    path=f"{path}.formats[{j}]", hint="use max, mse or awq_* formats"))
    if not ctx.cuda:
        problem = cuda_problem(stage, path)
        if problem is not None:
            errors.append(problem)
    if stage.kv_cache:
        from .. import versions

        errors += versions.kv_cache_on_megatron(ctx.env, f"{path}.kv_cache", megatron=ctx.megatron, detail=False)
    got = modules(arch, megatron=ctx.megatron, te_attention=False)
    cov: Coverage | None = None
    if got is not None and formats:
        mods, naming = got
        # searchable = enabled by at least one candidate and not disabled: replay the union
        covs = [replay(f["quant_cfg"], mods, naming=naming) for f in formats]
        best = max(covs, key=lambda c: c.quantized_modules)
        if disabled:
            union = [*formats[covs.index(best)]["quant_cfg"], *({"quantizer_name": p if p.endswith("*") else p + "*",
                                                                  "enable": False} for p in disabled)]
            cov = replay(union, mods, naming=naming,
                         sources=["candidate"] * len(formats[covs.index(best)]["quant_cfg"]) + ["exclude"] * len(disabled))
        else:
            cov = best
        for pat in module_patterns_unmatched(list(stage.exclude), mods):
            errors.append(SpecError(f"exclude pattern {pat!r} matches no module of {arch.name}",
                                    path=f"{path}.exclude[{list(stage.exclude).index(pat)}]",
                                    hint=suggest(pat, mods)))
        if cov.quantized_modules == 0:
            errors.append(SpecError(f"no candidate format quantizes any layer of {arch.name}", path=f"{path}.formats"))
        # the runtime never searches ModelOpt's default-disabled modules; on Megatron-Core without a recipe it also
        # leaves them out of the budget (runtime/modelopt_config.auto_quantize_inputs)
        never = [*mn.default_disabled_patterns(), *disabled]
        if ctx.megatron and stage.recipe is None:
            cost_excluded = never
        if isinstance(budget, int | float) and not isinstance(budget, bool):
            too_low = budget_error(float(budget), mods, formats, disabled=never, cost_excluded=cost_excluded,
                                   arch_name=arch.name,
                                   path=f"{path}.{'recipe' if stage.recipe else 'effective_bits'}")
            if too_low is not None:
                errors.append(too_low)
    return Findings(errors=tuple(errors), coverage=cov, config_source=source)


TECHNIQUE = register(Technique(
    name="auto_quantize", spec=AutoQuantize, title="auto-quantization", check=check, cuda_problem=cuda_problem,
    environment_problem=environment_problem,
    executors={"hf": "modelopt_typed_recipes.runtime.hf.steps:auto_quantize",
               "megatron": "modelopt_typed_recipes.runtime.megatron.steps:auto_quantize"},
))
