"""Everything we can check about a recipe before a model is built or a GPU is touched.

``check_recipe`` collects every problem (not just the first) as typed errors with field paths. It walks
the stages and asks each technique's registered check (:mod:`.techniques`: ModelOpt names against the
installed 0.47 vocabulary, formats against the device and export, pattern coverage); the machine is
probed by :mod:`.environment`, the backend chosen by :mod:`.backend_choice`, version gates live in
:mod:`.versions` and stage x layout rules in :mod:`.rules` (each stage gets its own layout, re-planned as
the library will at run time).

No torch, no ModelOpt import: versions come from package metadata, Transformer Engine from
``importlib.util.find_spec``, the GPU from nvidia-ml-py when present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from ..bridges.modelopt_names import ComposedConfig
from ..errors import CompatibilityError, LayoutError, RecipeError, SpecError
from ..spec.arch import ModelArch
from ..spec.layout import ParallelLayout
from ..spec.recipe import HFCheckpoint, MegatronCheckpoint, Recipe
from ..spec.serde import to_dict
from .backend_choice import BackendName, backend_problems, choose_backend
from .coverage import Coverage
from .environment import Environment
from .techniques import StageContext, technique_for
from .techniques.quantize import quantize_config
from .versions import MIN_MCORE_EXPORT, MIN_MCORE_PRUNE


@attrs.frozen(kw_only=True)
class StageCheck:
    """What the check found out about one stage."""

    index: int
    label: str
    technique: str
    layout: ParallelLayout | None = None
    """The layout the stage runs with on the Megatron-Core backend (None on Hugging Face or when invalid)."""
    coverage: Coverage | None = None
    config_source: str | None = None
    """The ModelOpt preset or recipe the stage uses."""
    quant_config: ComposedConfig | None = None
    """The ModelOpt config a Quantize stage gives ``mtq.quantize`` (composed once, here)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "technique": self.technique,
            "layout": to_dict(self.layout) if self.layout is not None else None,
            "config": self.config_source,
            "coverage": self.coverage.to_dict() if self.coverage is not None else None,
        }


@attrs.frozen(kw_only=True)
class CheckReport:
    """All problems of a recipe, ready for the CLI (``--json``) or for raising the first."""

    recipe: str
    backend: BackendName
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


def resolve_backend(recipe: Recipe, env: Environment) -> BackendName:
    """``megatron`` or ``hf``, as ``run_post_training`` will choose it (:func:`.backend_choice.choose_backend`)."""
    return choose_backend(recipe, env)


def recipe_layout(recipe: Recipe) -> ParallelLayout:
    """The recipe's layout, or a single GPU."""
    return recipe.layout if recipe.layout is not None else ParallelLayout()


# --------------------------------------------------------------------------- the check
def check_recipe(recipe: Recipe, *, env: Environment | None = None, layout: ParallelLayout | None = None,
                 backend: BackendName | None = None) -> CheckReport:
    """Every problem of ``recipe`` on this machine (or ``env``), without building anything."""
    env = env or Environment.detect()
    errors: list[RecipeError] = []
    warnings: list[str] = []
    stages_out: list[StageCheck] = []
    backend = backend or choose_backend(recipe, env)
    try:
        archs = recipe.archs_per_stage()
    except RecipeError as err:
        return CheckReport(recipe=recipe.label, backend=backend, errors=(err,), warnings=(), stages=(),
                           environment=env)
    if layout is None:
        layout = recipe_layout(recipe)
    megatron = backend == "megatron"
    cuda = recipe.device == "cuda" or (recipe.device == "auto" and env.cuda)

    errors += _source_problems(recipe, env, backend)
    errors += backend_problems(backend, env, cuda=cuda)

    for i, stage in enumerate(recipe.stages):
        path = f"stages[{i}]"
        arch = archs[i]
        technique = technique_for(stage)
        stage_layout = None
        if megatron:
            stage_layout, errs = _stage_layout(arch, layout, technique.name, path, recipe)
            errors += errs
        not_here = technique.backend_problem(backend, path)
        if not_here is not None:
            errors.append(not_here)
            stages_out.append(StageCheck(index=i, label=stage.label, technique=stage.technique, layout=stage_layout))
            continue
        found = technique.check(stage, StageContext(recipe=recipe, index=i, arch=arch, archs=archs, backend=backend,
                                                    env=env, cuda=cuda, layout=stage_layout))
        errors += found.errors
        warnings += found.warnings
        stages_out.append(StageCheck(
            index=i, label=stage.label, technique=stage.technique, coverage=found.coverage,
            config_source=found.config_source, quant_config=found.quant_config, layout=stage_layout,
        ))
    return CheckReport(recipe=recipe.label, backend=backend, errors=tuple(errors), warnings=tuple(warnings),
                       stages=tuple(stages_out), environment=env)


def _stage_layout(arch: ModelArch, layout: ParallelLayout, stage: str, path: str,
                  recipe: Recipe) -> tuple[ParallelLayout | None, list[RecipeError]]:
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


def _source_problems(recipe: Recipe, env: Environment, backend: BackendName) -> list[RecipeError]:
    src = recipe.source
    out: list[RecipeError] = []
    if isinstance(src, HFCheckpoint | MegatronCheckpoint):
        p = Path(src.path).expanduser()
        if not p.is_dir():
            out.append(SpecError(f"checkpoint directory {str(p)!r} does not exist", path="source.path"))
        elif isinstance(src, HFCheckpoint) and not (p / "config.json").is_file():
            out.append(SpecError(f"{str(p)!r} has no config.json: not a Hugging Face checkpoint",
                                 path="source.path"))
        elif isinstance(src, MegatronCheckpoint) and backend == "megatron":
            out += _saved_spec_problems(src, recipe, env)
    if isinstance(src, MegatronCheckpoint) and backend == "hf":
        out.append(CompatibilityError(
            "the Hugging Face backend reads Hugging Face checkpoints, not Megatron distributed checkpoints",
            path="source.type", hint="backend: megatron (on a GPU)"))
    return out


def _saved_spec_problems(src: MegatronCheckpoint, recipe: Recipe, env: Environment) -> list[RecipeError]:
    """A checkpoint this package saved must be rebuilt with its own layer spec (its shard names follow it);
    what a technique needs of the spec is its own check (Minitron: the TE spec)."""
    saved = src.saved_layer_spec()
    out: list[RecipeError] = []
    if saved in ("te", "modelopt") and not env.transformer_engine:
        out.append(CompatibilityError(
            f"this checkpoint was saved with the {saved!r} layer spec, which needs Transformer Engine",
            path="source.path", hint="install transformer-engine[pytorch] matching your CUDA"))
    return out


__all__ = ["MIN_MCORE_EXPORT", "MIN_MCORE_PRUNE", "CheckReport", "Environment", "StageCheck", "check_recipe",
           "quantize_config", "recipe_layout", "resolve_backend"]
