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

import os

import attrs

from ..errors import LayoutError, RecipeError
from ..spec.arch import ModelArch
from ..spec.layout import ParallelLayout
from ..spec.recipe import Recipe
from . import run_gates
from .archs import stage_archs
from .backend_choice import BackendName, backend_problems, choose_backend, choose_device, choose_dtype
from .determinism import env_problems
from .environment import Environment
from .run_plan import CalibrationWindows, RunPlan, StagePlan
from .save import save_decisions
from .sources import hf_reference, quantized_source, source_dir, source_problems, trained_source, weights_dir
from .tasks import task_problems
from .techniques import StageContext, technique_for
from .techniques.distill import trained_while_quantized
from .techniques.quantize import quantize_config
from .versions import MIN_MCORE_EXPORT, MIN_MCORE_PRUNE

CheckReport = RunPlan
"""The name the check's result had before it became the run's plan."""
StageCheck = StagePlan


def recipe_layout(recipe: Recipe) -> ParallelLayout:
    """The recipe's layout, or a single GPU."""
    return recipe.layout if recipe.layout is not None else ParallelLayout()


# --------------------------------------------------------------------------- the check
def check_recipe(recipe: Recipe, *, env: Environment | None = None, layout: ParallelLayout | None = None,
                 backend: BackendName | None = None) -> RunPlan:
    """Every problem of ``recipe`` on this machine (or ``env``), without building anything: the run's plan.

    ``layout``: check with this layout instead of the recipe's. The world (size, rank) is torchrun's.
    """
    from .resolve import launch_world

    env = env or Environment.detect()
    errors: list[RecipeError] = []
    warnings: list[str] = []
    stages_out: list[StagePlan] = []
    backend = backend or choose_backend(recipe, env)
    device = choose_device(recipe, env)
    world_size, rank, local_rank = launch_world()
    base = RunPlan(label=recipe.label, backend=backend, device=device, dtype=choose_dtype(recipe, device),
                   environment=env, world_size=world_size, rank=rank, local_rank=local_rank)
    try:
        archs = stage_archs(recipe)
    except RecipeError as err:
        return attrs.evolve(base, errors=(err,))
    if layout is None:
        layout = recipe_layout(recipe)
    megatron = backend == "megatron"
    cuda = recipe.device == "cuda" or (recipe.device == "auto" and env.cuda)

    errors += source_problems(recipe, archs[0], env, backend)
    errors += backend_problems(backend, env, cuda=cuda, world_size=world_size)
    errors += run_gates.data_problems(recipe)
    if megatron:
        errors += run_gates.megatron_build_problems(archs[0])
    errors += task_problems(recipe, backend)
    if recipe.deterministic:
        errors += env_problems(os.environ)

    cal = recipe.calibration
    saves = save_decisions(recipe)
    source_quantized, source_trained = quantized_source(recipe.source), trained_source(recipe.source)
    for i, stage in enumerate(recipe.stages):
        path = f"stages[{i}]"
        arch = archs[i]
        technique = technique_for(stage)
        stage_layout = None
        if megatron:
            stage_layout, errs = _stage_layout(arch, layout, technique.name, path, recipe)
            errors += errs
        windows = None
        if technique.calibrates:
            windows = CalibrationWindows(
                num_samples=getattr(stage, "calibration_samples", None) or cal.num_samples,
                seq_length=getattr(stage, "calibration_seq_length", None) or cal.seq_length,
                batch_size=cal.batch_size)
        trained_before, trained_after = (trained_while_quantized(
            recipe.stages, j, source_quantized=source_quantized, source_trained=source_trained) for j in (i, i + 1))
        planned = StagePlan(index=i, label=stage.label, technique=technique.name, stage=stage, arch=arch,
                            layout=stage_layout, calibration=windows, save=saves[i],
                            snap_to_grid=technique.name == "export" and getattr(stage, "format", None) == "hf"
                            and trained_before, trained_while_quantized=trained_after)
        not_here = technique.backend_problem(backend, path)
        if not_here is not None:
            errors.append(not_here)
            stages_out.append(planned)
            continue
        missing = technique.environment_problem(stage, env, path)
        if missing is not None:
            errors.append(missing)
        found = technique.check(stage, StageContext(recipe=recipe, index=i, arch=arch, archs=archs, backend=backend,
                                                    env=env, cuda=cuda, layout=stage_layout))
        errors += found.errors
        warnings += found.warnings
        stages_out.append(attrs.evolve(planned, coverage=found.coverage, config_source=found.config_source,
                                       quant_config=found.quant_config, memory=found.memory))
    return attrs.evolve(base, errors=tuple(errors), warnings=tuple(warnings), stages=tuple(stages_out),
                        weights_dir=weights_dir(recipe, archs[0]), source_dir=source_dir(recipe),
                        hf_reference=hf_reference(recipe, archs[0]), source_quantized=source_quantized)


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


__all__ = ["MIN_MCORE_EXPORT", "MIN_MCORE_PRUNE", "CheckReport", "Environment", "RunPlan", "StageCheck", "StagePlan",
           "check_recipe", "quantize_config", "recipe_layout"]
