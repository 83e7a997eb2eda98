"""Quantize (``mtq.quantize`` with a preset or a ModelOpt PTQ recipe): the config, composed once for the
run from ModelOpt's own YAML files, and every check of a Quantize stage."""

from __future__ import annotations

from typing import Any

from ...bridges import modelopt_names as mn
from ...errors import CompatibilityError, LayoutError, RecipeError, SpecError
from ...spec.arch import ModelArch
from ...spec.techniques import Quantize
from ..coverage import Coverage, replay, suggest
from . import Findings, StageContext, Technique, register

_EXPORT_UNSAFE_ALGORITHMS = {"smoothquant", "awq_lite", "awq_clip", "awq_full"}


def quantize_config(stage: Quantize, *, path: str = "") -> tuple[mn.ComposedConfig, str]:
    """The exact config ``mtq.quantize`` gets for ``stage``, built from ModelOpt's YAML files (a test
    compares it with the live ``mtq`` constants and ModelOpt's recipe loader), and a label of its origin."""
    if stage.recipe is not None:
        try:
            data = mn.load_recipe_dict(stage.recipe)
        except RecipeError as err:
            raise type(err)(err.message, path=f"{path}.recipe", hint=err.hint) from None
        if data["metadata"].get("recipe_type") != "ptq":
            raise SpecError(f"{stage.recipe!r} is an auto-quantize recipe", path=f"{path}.recipe",
                            hint="use technique: auto_quantize for it")
        base = data["quantize"]
        composed = mn.compose_quant_config(base, base_source="recipe", exclude=stage.exclude,
                                           algorithm=stage.algorithm)
        return composed, stage.recipe
    preset = stage.preset
    if preset is None:  # pragma: no cover - Quantize validates format xor recipe
        raise SpecError("give exactly one of format and recipe", path=f"{path}.format")
    mn.check_preset(preset, path=f"{path}.format")
    if preset in mn.KV_ONLY_PRESETS:
        raise SpecError(f"{preset} only quantizes the KV cache", path=f"{path}.format",
                        hint="pick a model format (e.g. fp8) and set kv_cache: " + preset.split("_")[0].lower())
    kv = mn.kv_cache_entries(stage.kv_cache) if stage.kv_cache else None
    composed = mn.compose_quant_config(mn.preset_config(preset), kv_entries=kv, exclude=stage.exclude,
                                       algorithm=stage.algorithm)
    return composed, preset


def algorithm_method(config: dict[str, Any]) -> str | None:
    """The calibration method of a ModelOpt config (``algorithm`` is a name or ``{"method": ...}``)."""
    algo = config.get("algorithm")
    return algo.get("method") if isinstance(algo, dict) else algo


def _field(stage: Quantize) -> str:
    return "format" if stage.format else "recipe"


def cuda_problem(stage: Quantize, path: str) -> RecipeError | None:
    """NVFP4 / MX fake-quant kernels exist only for CUDA."""
    if not stage.needs_cuda:
        return None
    what: str = stage.format or stage.recipe or ""
    field = _field(stage)
    if stage.kv_cache and "fp4" not in what.lower():
        field, what = "kv_cache", f"KV-cache format {stage.kv_cache}"
    return CompatibilityError(
        f"{what} needs CUDA: its fake-quant kernels (NVFP4 / MX block scaling) exist only for GPUs, "
        "and this run is on the CPU",
        path=f"{path}.{field}",
        hint="on the CPU use fp8, int8_sq, int4_awq or w4a8_awq; run NVFP4/MX on a GPU (device: cuda)",
    )


def exportable(stage: Quantize, composed: mn.ComposedConfig) -> str | None:
    """Why ModelOpt's unified HF export cannot write this quantization, or None."""
    fmt = stage.quant_format
    if fmt is not None and not fmt.hf_exportable:
        return f"{fmt.name} ({fmt.preset})"
    name = algorithm_method(composed.config)
    if name in _EXPORT_UNSAFE_ALGORITHMS:
        return f"algorithm {name} (pre_quant_scale)"
    for e in composed.config["quant_cfg"]:
        cfg = e.get("cfg")
        for c in cfg if isinstance(cfg, list) else [cfg] if cfg else []:
            if isinstance(c.get("num_bits"), int) and e.get("enable", True):
                return f"integer quantizers ({e['quantizer_name']}: {c['num_bits']} bits)"
    return None


def check(stage: Quantize, ctx: StageContext) -> Findings:
    path = ctx.path
    errors: list[RecipeError] = []
    warnings: list[str] = []
    try:
        composed, source = quantize_config(stage, path=path)
    except RecipeError as err:
        return Findings(errors=(err,))
    if not ctx.cuda:
        problem = cuda_problem(stage, path)
        if problem is not None:
            errors.append(problem)
    kv_wanted = any(s == "kv_cache" for s in composed.sources) or any(
        "bmm_quantizer" in str(e.get("quantizer_name")) and e.get("cfg") is not None
        for e in composed.config["quant_cfg"])
    if kv_wanted:
        from .. import versions

        errors += versions.kv_cache_on_megatron(ctx.env, f"{path}.{'kv_cache' if stage.kv_cache else 'recipe'}",
                                                megatron=ctx.megatron)
    method = algorithm_method(composed.config)
    layout = ctx.layout
    if (ctx.megatron and layout is not None and layout.tensor_parallel > 1 and method in ("mse", "local_hessian")
            and "nvfp4" in source.lower()):
        errors.append(LayoutError(f"NVFP4 static weight calibration ({method}) raises NotImplementedError at TP>1",
                                  path="layout.tensor_parallel", hint="use tensor_parallel=1"))
    export = ctx.recipe.export
    if export is not None and ctx.megatron:
        why = exportable(stage, composed)
        if why is not None:
            errors.append(CompatibilityError(
                f"ModelOpt's unified HF export cannot write {why}; it exports BF16, FP8 and NVFP4 families",
                path=f"{path}.{_field(stage)}",
                hint="drop the export stage (keep the Megatron checkpoint) or use fp8 / nvfp4"))
    if (export is not None and export.format == "hf" and not ctx.megatron and any(a.moe is not None for a in ctx.archs)
            and str(method).startswith("awq")):
        errors.append(CompatibilityError(
            f"ModelOpt 0.47's HF export fails on AWQ-calibrated mixture-of-experts layers of transformers 5 "
            f"(TypeError in its expert re-smoothing); {ctx.archs[0].name} has MoE layers",
            path=f"{path}.{_field(stage)}",
            hint="export fp8 or int8_sq, or drop the export stage (the ModelOpt state is saved instead)"))
    te_attention = ctx.megatron and ctx.env.transformer_engine
    cov, errs, warns = _coverage(ctx.arch, composed, path, stage, megatron=ctx.megatron, te_attention=te_attention)
    return Findings(errors=(*errors, *errs), warnings=(*warnings, *warns), coverage=cov, config_source=source,
                    quant_config=composed)


def modules(arch: ModelArch, *, megatron: bool, te_attention: bool) -> tuple[list[mn.QuantModule], str] | None:
    """The quantizable modules the backend's model will have (None: not computed for this model kind)."""
    if megatron:
        return mn.mcore_modules(arch, te_attention=te_attention), "megatron"
    if arch.kind == "dense":
        return mn.hf_modules(arch), "hf"
    return None


def _coverage(arch: ModelArch, composed: mn.ComposedConfig, path: str, stage: Quantize, *, megatron: bool,
              te_attention: bool) -> tuple[Coverage | None, list[RecipeError], list[str]]:
    got = modules(arch, megatron=megatron, te_attention=te_attention)
    if got is None:
        return None, [], [f"{path}: pattern coverage is computed for Megatron-Core names and dense HF models only"]
    mods, naming = got
    cov = replay(composed.config["quant_cfg"], mods, naming=naming, sources=composed.sources)
    errors: list[RecipeError] = []
    warnings: list[str] = []
    excl = 0
    for use in cov.patterns:
        if use.source == "exclude":
            if use.matched == 0:
                errors.append(SpecError(
                    f"exclude pattern {use.pattern!r} matches no quantizer of {arch.name}",
                    path=f"{path}.exclude[{excl}]", hint=suggest(use.pattern, mods)))
            excl += 1
    user_file = stage.recipe is not None and not stage.recipe.startswith(("general/", "models/", "huggingface/"))
    for use in cov.unmatched(sources=("preset", "recipe")):
        if use.action == "disable" and not user_file:
            continue
        if user_file:
            errors.append(SpecError(
                f"quant_cfg[{use.index}] pattern {use.pattern!r} of {stage.recipe} matches no quantizer of {arch.name}",
                path=f"{path}.recipe", hint=suggest(use.pattern, mods)))
        else:
            warnings.append(f"{path}: {use.pattern!r} ({use.action}) matches nothing in {arch.name} ({naming} names)")
    weight_on = sum(v["quantized"] for k, v in cov.modules.items() if k != "kv_cache")
    if weight_on == 0 and any(e.get("cfg") is not None and "weight" in str(e.get("quantizer_name")) or
                              e.get("quantizer_name") == "*" and e.get("cfg") is not None
                              for e in composed.config["quant_cfg"]):
        errors.append(SpecError(
            f"{stage.format or stage.recipe} quantizes no weight of {arch.name}: its patterns match nothing here "
            "(ModelOpt would stop with 'weight quantization did not take effect')",
            path=f"{path}.{_field(stage)}",
            hint="pick a format meant for this kind of model" + (
                " (experts-only formats need a MoE model)" if arch.moe is None else "")))
    return cov, errors, warnings


TECHNIQUE = register(Technique(
    name="quantize", spec=Quantize, title="quantization", check=check, cuda_problem=cuda_problem,
    executors={"hf": "modelopt_typed_recipes.runtime.hf.steps:quantize",
               "megatron": "modelopt_typed_recipes.runtime.megatron.steps:quantize"},
))
