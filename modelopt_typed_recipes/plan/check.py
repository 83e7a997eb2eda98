"""Everything we can check about a recipe before a model is built or a GPU is touched.

``check_recipe`` collects every problem (not just the first) as typed errors with field paths:
ModelOpt names (presets, YAML recipes, KV-cache formats) against the installed 0.47 vocabulary;
formats against the device (NVFP4 and MX fake-quant need CUDA) and against export (ModelOpt's unified
HF export writes FP8/NVFP4 only); stage x layout rules from :mod:`.rules` (each stage gets its own
layout, re-planned as the library will at run time); version gates (export and Minitron pruning need
megatron-core >= 0.18; pruning needs Transformer Engine and CUDA; KV-cache quantization on Megatron-Core
needs Transformer Engine attention); and pattern coverage (:mod:`.coverage`).

No torch, no ModelOpt import: versions come from package metadata, Transformer Engine from
``importlib.util.find_spec``, the GPU from nvidia-ml-py when present.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

import attrs

from ..bridges import modelopt_names as mn
from ..errors import CompatibilityError, LayoutError, RecipeError, SpecError
from ..spec.arch import ModelArch
from ..spec.formats import FORMAT_BY_PRESET
from ..spec.layout import ParallelLayout
from ..spec.serde import to_dict
from ..spec.recipe import HFCheckpoint, MegatronCheckpoint, Recipe
from ..spec.techniques import AutoQuantize, Export, Prune, Quantize
from .coverage import Coverage, module_patterns_unmatched, replay, suggest

MIN_MCORE_EXPORT = (0, 18)
MIN_MCORE_PRUNE = (0, 18)
_EXPORT_UNSAFE_ALGORITHMS = {"smoothquant", "awq_lite", "awq_clip", "awq_full"}


def _version_tuple(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@attrs.frozen(kw_only=True)
class Environment:
    """What the machine offers, read without importing torch."""

    megatron_core: str | None = None
    modelopt: str | None = None
    transformer_engine: bool = False
    cuda: bool = False
    gpu_name: str | None = None
    gpu_count: int = 0

    @classmethod
    def detect(cls) -> Environment:
        te = importlib.util.find_spec("transformer_engine") is not None
        gpu_name, count = None, 0
        try:
            from .gpus import detect as detect_gpu

            spec = detect_gpu()
            if spec is not None:
                gpu_name, count = spec.name, 1
        except Exception:  # nvidia-ml-py absent or broken: fall back to the device nodes
            spec = None
        if count == 0:
            nodes = sorted(Path("/dev").glob("nvidia[0-9]*"))
            count = len(nodes)
        return cls(
            megatron_core=_dist_version("megatron-core"),
            modelopt=_dist_version("nvidia-modelopt"),
            transformer_engine=te,
            cuda=count > 0 or os.environ.get("MTR_ASSUME_CUDA") == "1",
            gpu_name=gpu_name,
            gpu_count=count,
        )

    def mcore_at_least(self, version: tuple[int, int]) -> bool:
        v = _version_tuple(self.megatron_core)
        return v is not None and v[:2] >= version


@attrs.frozen(kw_only=True)
class StageCheck:
    """What the check found out about one stage."""

    index: int
    label: str
    technique: str
    layout: dict[str, int | bool | None] | None = None
    coverage: Coverage | None = None
    config_source: str | None = None
    """The ModelOpt preset or recipe the stage uses."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "technique": self.technique,
            "layout": self.layout,
            "config": self.config_source,
            "coverage": self.coverage.to_dict() if self.coverage is not None else None,
        }


@attrs.frozen(kw_only=True)
class CheckReport:
    """All problems of a recipe, ready for the CLI (``--json``) or for raising the first."""

    recipe: str
    backend: str
    errors: tuple[RecipeError, ...]
    warnings: tuple[str, ...]
    stages: tuple[StageCheck, ...]
    environment: Environment

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def coverage(self) -> dict[str, Any]:
        return {f"stages[{s.index}]": s.coverage.to_dict() for s in self.stages if s.coverage is not None}

    def raise_first(self) -> None:
        if self.errors:
            raise self.errors[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "recipe": self.recipe,
            "backend": self.backend,
            "errors": [e.to_dict() for e in self.errors],
            "warnings": list(self.warnings),
            "coverage": self.coverage,
            "stages": [s.to_dict() for s in self.stages],
            "environment": to_dict(self.environment),
        }


# --------------------------------------------------------------------------- the stage's ModelOpt config
def quantize_config(stage: Quantize, *, path: str = "") -> tuple[mn.ComposedConfig, str]:
    """The exact config the runtime gives ``mtq.quantize`` for ``stage``, built from ModelOpt's YAML files.

    Returns the composed config and a label of its origin. The runtime builds the same thing from the
    live ``mtq`` constants with :func:`~..bridges.modelopt_names.compose_quant_config`.
    """
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
    assert preset is not None
    mn.check_preset(preset, path=f"{path}.format")
    if preset in mn.KV_ONLY_PRESETS:
        raise SpecError(f"{preset} only quantizes the KV cache", path=f"{path}.format",
                        hint="pick a model format (e.g. fp8) and set kv_cache: " + preset.split("_")[0].lower())
    kv = mn.kv_cache_entries(stage.kv_cache) if stage.kv_cache else None
    composed = mn.compose_quant_config(mn.preset_config(preset), kv_entries=kv, exclude=stage.exclude,
                                       algorithm=stage.algorithm)
    return composed, preset


def _exportable(stage: Quantize, composed: mn.ComposedConfig) -> str | None:
    """Why ModelOpt's unified HF export cannot write this quantization, or None."""
    fmt = stage.quant_format
    if fmt is not None and not fmt.hf_exportable:
        return f"{fmt.name} ({fmt.preset})"
    algo = composed.config.get("algorithm")
    name = algo.get("method") if isinstance(algo, dict) else algo
    if name in _EXPORT_UNSAFE_ALGORITHMS:
        return f"algorithm {name} (pre_quant_scale)"
    for e in composed.config["quant_cfg"]:
        cfg = e.get("cfg")
        for c in cfg if isinstance(cfg, list) else [cfg] if cfg else []:
            if isinstance(c.get("num_bits"), int) and e.get("enable", True):
                return f"integer quantizers ({e['quantizer_name']}: {c['num_bits']} bits)"
    return None


def _stage_name(stage: object) -> str:
    return {Quantize: "quantize", AutoQuantize: "auto-quantize", Prune: "prune", Export: "export"}[type(stage)]


# --------------------------------------------------------------------------- backend
def resolve_backend(recipe: Recipe, env: Environment) -> str:
    """``megatron`` or ``hf``, as ``run_post_training`` will choose it."""
    if recipe.backend != "auto":
        return recipe.backend
    if recipe.device == "cpu":
        return "hf"
    return "megatron" if env.cuda and env.megatron_core else "hf"


def recipe_layout(recipe: Recipe) -> ParallelLayout:
    """The recipe's layout, or a single GPU."""
    return recipe.layout if recipe.layout is not None else ParallelLayout()


# --------------------------------------------------------------------------- the check
def check_recipe(recipe: Recipe, *, env: Environment | None = None, layout: Any = None,
                 backend: str | None = None) -> CheckReport:
    """Every problem of ``recipe`` on this machine (or ``env``), without building anything."""
    env = env or Environment.detect()
    errors: list[RecipeError] = []
    warnings: list[str] = []
    stages_out: list[StageCheck] = []
    backend = backend or resolve_backend(recipe, env)
    try:
        archs = recipe.archs_per_stage()
    except RecipeError as err:
        return CheckReport(recipe=recipe.label, backend=backend, errors=(err,), warnings=(), stages=(),
                           environment=env)
    if layout is None:
        layout = recipe_layout(recipe)
    megatron = backend == "megatron"
    cuda = recipe.device == "cuda" or (recipe.device == "auto" and env.cuda)

    # ---- source
    src = recipe.source
    if isinstance(src, HFCheckpoint | MegatronCheckpoint):
        p = Path(src.path).expanduser()
        if not p.is_dir():
            errors.append(SpecError(f"checkpoint directory {str(p)!r} does not exist", path="source.path"))
        elif isinstance(src, HFCheckpoint) and not (p / "config.json").is_file():
            errors.append(SpecError(f"{str(p)!r} has no config.json: not a Hugging Face checkpoint",
                                    path="source.path"))
        elif isinstance(src, MegatronCheckpoint) and megatron:
            errors += _saved_spec_problems(src, recipe, env)
    if megatron and env.megatron_core is None:
        errors.append(CompatibilityError("backend megatron needs megatron-core, which is not installed",
                                         path="backend", hint="pip install 'megatron-core>=0.16' or use backend: hf"))
    if megatron and not cuda:
        errors.append(CompatibilityError("the Megatron-Core backend runs on CUDA GPUs (its forward needs CUDA)",
                                         path="backend", hint="use backend: hf on a machine without a GPU"))

    for i, stage in enumerate(recipe.stages):
        path = f"stages[{i}]"
        arch = archs[i]
        sname = _stage_name(stage)
        stage_layout = None
        if megatron:
            stage_layout, errs = _stage_layout(arch, layout, sname, path, recipe)
            errors += errs
        cov = None
        source = None
        if isinstance(stage, Quantize):
            cov, source, errs, warns = _check_quantize(stage, arch, path, megatron=megatron, env=env, cuda=cuda,
                                                       layout=stage_layout, export=recipe.export is not None)
            errors += errs
            warnings += warns
        elif isinstance(stage, AutoQuantize):
            cov, source, errs, warns = _check_auto_quantize(stage, arch, path, megatron=megatron, env=env, cuda=cuda)
            errors += errs
            warnings += warns
        elif isinstance(stage, Prune):
            if megatron or backend == "megatron":
                errors += _prune_gates(env, path, cuda=cuda)
                if arch.moe is not None and isinstance(recipe.source, HFCheckpoint):
                    # measured on the GPU machine, 2x H200 (benchmarks/megatron_gpu.md, prune): ModelOpt 0.47's
                    # HF importer leaves TE SequentialMLP experts without _extra_state, and its MoE mappings
                    # have no rule for TEGroupedMLP experts, so the TE spec Minitron needs cannot be filled.
                    errors.append(CompatibilityError(
                        "pruning a mixture-of-experts model from a Hugging Face checkpoint is not possible with "
                        "ModelOpt 0.47: its importer cannot load experts into the Transformer Engine layer spec "
                        "that Minitron needs", path=f"{path}",
                        hint="prune a dense model, or start from a Megatron checkpoint saved with the TE spec"))
            else:
                errors.append(CompatibilityError("Minitron pruning runs on the Megatron-Core backend only",
                                                 path=path, hint="backend: megatron"))
        elif isinstance(stage, Export) and megatron:
            if not env.mcore_at_least(MIN_MCORE_EXPORT):
                errors.append(CompatibilityError(
                    f"export from Megatron-Core needs megatron-core >= 0.18 (ModelOpt 0.47 imports HybridModel); "
                    f"installed: {env.megatron_core}", path=path,
                    hint="pip install 'megatron-core>=0.18' (Python >= 3.12)"))
        stages_out.append(StageCheck(
            index=i, label=stage.label, technique=stage.technique, coverage=cov, config_source=source,
            layout=to_dict(stage_layout) if stage_layout is not None else None,
        ))
    return CheckReport(recipe=recipe.label, backend=backend, errors=tuple(errors), warnings=tuple(warnings),
                       stages=tuple(stages_out), environment=env)


def _stage_layout(arch: ModelArch, layout: Any, stage: str, path: str, recipe: Recipe) -> tuple[Any, list[RecipeError]]:
    """The layout this stage runs with: the recipe's, or the re-planned one for prune/export."""
    from . import rules

    seq = recipe.calibration.seq_length
    found = rules.problems(arch, layout, stage, seq_length=seq)
    if not found:
        return layout, []
    stage_limits = rules.stage_problems(layout, stage)
    if stage_limits:
        try:
            return rules.replan(arch, layout, stage, layout.world_size, seq_length=seq), []
        except LayoutError as err:
            return None, [err.under(f"{path}.layout")]
    return None, [LayoutError(e.message, path=f"layout.{e.path}" if e.path else "layout", hint=e.hint) for e in found]


def _saved_spec_problems(src: MegatronCheckpoint, recipe: Recipe, env: Environment) -> list[RecipeError]:
    """A checkpoint this package saved must be rebuilt with its own layer spec (its shard names follow it)."""
    saved = src.saved_layer_spec()
    out: list[RecipeError] = []
    if saved in ("te", "modelopt") and not env.transformer_engine:
        out.append(CompatibilityError(
            f"this checkpoint was saved with the {saved!r} layer spec, which needs Transformer Engine",
            path="source.path", hint="install transformer-engine[pytorch] matching your CUDA"))
    prune = next((i for i, s in enumerate(recipe.stages) if isinstance(s, Prune)), None)
    if prune is not None and saved is not None and saved != "te":
        out.append(CompatibilityError(
            f"Minitron prunes the Transformer Engine layer spec; this checkpoint was saved with the {saved!r} spec",
            path=f"stages[{prune}]", hint="start from the Hugging Face checkpoint, or a checkpoint saved by a "
            "pruning run"))
    return out


def _prune_gates(env: Environment, path: str, *, cuda: bool) -> list[RecipeError]:
    out: list[RecipeError] = []
    if not env.mcore_at_least(MIN_MCORE_PRUNE):
        out.append(CompatibilityError(
            f"Minitron pruning needs megatron-core >= 0.18 (ModelOpt 0.47's NAS plugin imports HybridModel); "
            f"installed: {env.megatron_core}", path=path, hint="pip install 'megatron-core>=0.18' (Python >= 3.12)"))
    if not env.transformer_engine:
        out.append(CompatibilityError(
            "Minitron pruning needs Transformer Engine (ModelOpt's mcore_minitron mode registers only with it)",
            path=path, hint="install transformer-engine[pytorch] matching your CUDA"))
    if not cuda:
        out.append(CompatibilityError("Minitron pruning needs a CUDA GPU", path=path))
    return out


def _check_quantize(stage: Quantize, arch: ModelArch, path: str, *, megatron: bool, env: Environment, cuda: bool,
                    layout: Any, export: bool) -> tuple[Coverage | None, str | None, list[RecipeError], list[str]]:
    errors: list[RecipeError] = []
    warnings: list[str] = []
    try:
        composed, source = quantize_config(stage, path=path)
    except RecipeError as err:
        return None, None, [err], []
    if stage.needs_cuda and not cuda:
        errors.append(CompatibilityError(
            f"{stage.format or stage.recipe} fake-quantizes with CUDA kernels only (NVFP4/MX); this run has no GPU",
            path=f"{path}.{'format' if stage.format else 'recipe'}",
            hint="run on a GPU, or pick fp8, int8_sq, int4_awq or w4a8_awq on the CPU"))
    kv_wanted = any(s == "kv_cache" for s in composed.sources) or any(
        "bmm_quantizer" in str(e.get("quantizer_name")) and e.get("cfg") is not None
        for e in composed.config["quant_cfg"])
    te_attention = megatron and env.transformer_engine
    if kv_wanted and megatron and not env.transformer_engine:
        errors.append(CompatibilityError(
            "KV-cache quantization on Megatron-Core needs Transformer Engine attention (TEDotProductAttention); "
            "with local attention ModelOpt's KV quantizers silently match nothing",
            path=f"{path}.{'kv_cache' if stage.kv_cache else 'recipe'}",
            hint="install Transformer Engine, or drop the KV-cache format"))
    algo = composed.config.get("algorithm")
    method = algo.get("method") if isinstance(algo, dict) else algo
    if megatron and layout is not None and layout.tensor_parallel > 1 and method in ("mse", "local_hessian"):
        if "nvfp4" in source.lower():
            errors.append(LayoutError(f"NVFP4 static weight calibration ({method}) raises NotImplementedError at TP>1",
                                      path="layout.tensor_parallel", hint="use tensor_parallel=1"))
    if export and megatron:
        why = _exportable(stage, composed)
        if why is not None:
            errors.append(CompatibilityError(
                f"ModelOpt's unified HF export cannot write {why}; it exports BF16, FP8 and NVFP4 families",
                path=f"{path}.{'format' if stage.format else 'recipe'}",
                hint="drop the export stage (keep the Megatron checkpoint) or use fp8 / nvfp4"))
    # ---- coverage
    cov, errs, warns = _coverage(arch, composed, path, stage, megatron=megatron, te_attention=te_attention)
    errors += errs
    warnings += warns
    return cov, source, errors, warnings


def _modules(arch: ModelArch, *, megatron: bool, te_attention: bool) -> tuple[list[mn.QuantModule], str] | None:
    if megatron:
        return mn.mcore_modules(arch, te_attention=te_attention), "megatron"
    if arch.kind == "dense":
        return mn.hf_modules(arch), "hf"
    return None


def _coverage(arch: ModelArch, composed: mn.ComposedConfig, path: str, stage: Quantize, *, megatron: bool,
              te_attention: bool) -> tuple[Coverage | None, list[RecipeError], list[str]]:
    got = _modules(arch, megatron=megatron, te_attention=te_attention)
    if got is None:
        return None, [], [f"{path}: pattern coverage is computed for Megatron-Core names and dense HF models only"]
    modules, naming = got
    cov = replay(composed.config["quant_cfg"], modules, naming=naming, sources=composed.sources)
    errors: list[RecipeError] = []
    warnings: list[str] = []
    excl = 0
    for use in cov.patterns:
        if use.source == "exclude":
            if use.matched == 0:
                errors.append(SpecError(
                    f"exclude pattern {use.pattern!r} matches no quantizer of {arch.name}",
                    path=f"{path}.exclude[{excl}]", hint=suggest(use.pattern, modules)))
            excl += 1
    user_file = stage.recipe is not None and not stage.recipe.startswith(("general/", "models/", "huggingface/"))
    for use in cov.unmatched(sources=("preset", "recipe")):
        if use.action == "disable" and not user_file:
            continue
        if user_file:
            errors.append(SpecError(
                f"quant_cfg[{use.index}] pattern {use.pattern!r} of {stage.recipe} matches no quantizer of {arch.name}",
                path=f"{path}.recipe", hint=suggest(use.pattern, modules)))
        else:
            warnings.append(f"{path}: {use.pattern!r} ({use.action}) matches nothing in {arch.name} ({naming} names)")
    weight_on = sum(v["quantized"] for k, v in cov.modules.items() if k != "kv_cache")
    if weight_on == 0 and any(e.get("cfg") is not None and "weight" in str(e.get("quantizer_name")) or
                              e.get("quantizer_name") == "*" and e.get("cfg") is not None
                              for e in composed.config["quant_cfg"]):
        errors.append(SpecError(
            f"{stage.format or stage.recipe} quantizes no weight of {arch.name}: its patterns match nothing here "
            "(ModelOpt would stop with 'weight quantization did not take effect')",
            path=f"{path}.{'format' if stage.format else 'recipe'}",
            hint="pick a format meant for this kind of model" + (
                " (experts-only formats need a MoE model)" if arch.moe is None else "")))
    return cov, errors, warnings


def _check_auto_quantize(stage: AutoQuantize, arch: ModelArch, path: str, *, megatron: bool, env: Environment,
                         cuda: bool) -> tuple[Coverage | None, str | None, list[RecipeError], list[str]]:
    errors: list[RecipeError] = []
    warnings: list[str] = []
    formats: list[dict[str, Any]] = []
    disabled = list(stage.exclude)
    source = None
    if stage.recipe is not None:
        try:
            data = mn.load_recipe_dict(stage.recipe)
        except RecipeError as err:
            return None, None, [type(err)(err.message, path=f"{path}.recipe", hint=err.hint)], []
        if data["metadata"].get("recipe_type") != "auto_quantize":
            return None, None, [SpecError(f"{stage.recipe!r} is a PTQ recipe", path=f"{path}.recipe",
                                          hint="use technique: quantize for it")], []
        aq = data["auto_quantize"]
        formats = list(aq.get("candidate_formats") or [])
        disabled += list(aq.get("disabled_layers") or [])
        source = stage.recipe
    else:
        for j, name in enumerate(stage.formats):
            fmt = FORMAT_BY_PRESET.get(name)
            preset = name if fmt is None and name.upper() == name else None
            if preset is None:
                from ..spec.techniques import resolve_format

                f = resolve_format(name)
                preset = f.preset if f is not None else name
            try:
                mn.check_preset(preset, path=f"{path}.formats[{j}]")
            except RecipeError as err:
                errors.append(err)
                continue
            formats.append(mn.preset_config(preset))
        source = ", ".join(stage.formats)
    for j, f in enumerate(formats):
        algo = f.get("algorithm")
        method = algo.get("method") if isinstance(algo, dict) else algo
        if method in mn.AUTO_QUANTIZE_FORBIDDEN_ALGORITHMS:
            errors.append(SpecError(f"auto_quantize cannot search a format calibrated with {method}",
                                    path=f"{path}.formats[{j}]", hint="use max, mse or awq_* formats"))
    if stage.needs_cuda and not cuda:
        errors.append(CompatibilityError("a candidate format fake-quantizes with CUDA kernels only (NVFP4/MX)",
                                         path=f"{path}.formats", hint="run on a GPU or use fp8/int4_awq candidates"))
    if stage.kv_cache and megatron and not env.transformer_engine:
        errors.append(CompatibilityError("KV-cache quantization on Megatron-Core needs Transformer Engine attention",
                                         path=f"{path}.kv_cache", hint="drop kv_cache or install Transformer Engine"))
    got = _modules(arch, megatron=megatron, te_attention=False)
    cov = None
    if got is not None and formats:
        modules, naming = got
        # searchable = enabled by at least one candidate and not disabled: replay the union
        union: list[dict[str, Any]] = []
        covs = [replay(f["quant_cfg"], modules, naming=naming) for f in formats]
        best = max(covs, key=lambda c: c.quantized_modules)
        if disabled:
            union = [*formats[covs.index(best)]["quant_cfg"], *({"quantizer_name": p if p.endswith("*") else p + "*",
                                                                  "enable": False} for p in disabled)]
            cov = replay(union, modules, naming=naming,
                         sources=["candidate"] * len(formats[covs.index(best)]["quant_cfg"]) + ["exclude"] * len(disabled))
        else:
            cov = best
        for j, pat in enumerate(module_patterns_unmatched(list(stage.exclude), modules)):
            errors.append(SpecError(f"exclude pattern {pat!r} matches no module of {arch.name}",
                                    path=f"{path}.exclude[{list(stage.exclude).index(pat)}]",
                                    hint=suggest(pat, modules)))
        if cov.quantized_modules == 0:
            errors.append(SpecError(f"no candidate format quantizes any layer of {arch.name}", path=f"{path}.formats"))
    return cov, source, errors, warnings
