"""``run_post_training``: one call from a recipe to finished, manifest-bearing outputs.

Order of work, so that mistakes cost nothing:

1. read the recipe (object, YAML path or dict) and apply overrides;
2. checks that need no heavy import: architecture and stage sizes, CUDA for CUDA-only formats, the
   checkpoint directory, calibration/evaluation text present and non-empty, the planner's full check
   (ModelOpt names, versions, layouts, pattern coverage);
3. only then the backend (Megatron-Core or Hugging Face) is imported and run, writing into a staging
   folder beside the output folder; manifests are added and the folder is renamed into place. On any
   failure the staging folder is removed: no partial output is ever left behind.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import RecipeError, SpecError
from ..spec.recipe import Recipe
from ..spec.serde import apply_overrides, from_dict
from .backend import RunPlan, load_backend
from .data import check_text
from .manifest import MANIFEST_NAME, build_manifest, write_manifest
from .result import PostTrainingResult

if TYPE_CHECKING:
    from ..plan.environment import Environment


def load_recipe(recipe: Recipe | str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Recipe:
    """A validated :class:`Recipe` from an object, a YAML/JSON file or a dict, with dotted overrides."""
    if isinstance(recipe, Recipe):
        out = recipe
    elif isinstance(recipe, str | Path):
        out = Recipe.load(recipe)
    elif isinstance(recipe, Mapping):
        out = from_dict(dict(recipe), Recipe)
    else:
        raise SpecError(f"expected a Recipe, a YAML path or a dict, got {type(recipe).__name__}")
    if overrides:
        out = apply_overrides(out, dict(overrides))
    return out


# --------------------------------------------------------------------------- planning (no heavy imports)
def _env() -> Environment:
    from ..plan.environment import Environment

    return Environment.detect()


def _staging_for(output: Path) -> Path:
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return output.parent / f".{output.name}.partial-{run_id}"


def _check_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise SpecError(f"output_dir {str(output)!r} is a file", path="output_dir")
    if output.is_dir() and any(output.iterdir()) and not (output / MANIFEST_NAME).is_file():
        raise SpecError(
            f"output_dir {str(output)!r} exists and was not written by modelopt-typed-recipes",
            path="output_dir",
            hint="choose an empty or new folder (a folder with our manifest.json is replaced when a run succeeds)",
        )


def plan_run(recipe: Recipe, *, progress: bool = True) -> RunPlan:
    """Every check that needs no model, then the plan; raises the first problem as a typed error."""
    from ..plan import backend_choice
    from ..plan.archs import stage_archs
    from ..plan.sources import source_problems
    from ..plan.techniques import technique_for

    archs = stage_archs(recipe)  # unknown names, impossible prune sizes
    env = _env()
    problem = backend_choice.device_problem(recipe, env)
    if problem is not None:
        raise problem
    device = backend_choice.choose_device(recipe, env)
    if device == "cpu":
        for i, stage in enumerate(recipe.stages):
            problem = technique_for(stage).cuda_problem(stage, f"stages[{i}]")
            if problem is not None:
                raise problem
    backend = backend_choice.choose_backend(recipe, env)
    for problem in backend_choice.backend_problems(backend, env, cuda=device == "cuda"):
        raise problem
    for problem in source_problems(recipe, archs[0], env, backend):
        raise problem
    check_text(recipe.calibration, path="calibration")
    if recipe.evaluation is not None:
        check_text(recipe.evaluation, path="evaluation")
    output = Path(recipe.output_dir).expanduser().resolve()
    _check_output(output)

    from ..plan.check import check_recipe

    plan = check_recipe(recipe, env=attrs.evolve(env, cuda=device == "cuda"), backend=backend)
    plan.raise_first()
    return attrs.evolve(plan, device=device, output_dir=output, staging_dir=_staging_for(output), progress=progress)


# --------------------------------------------------------------------------- the run
def run_post_training(recipe: Recipe | str | Path | Mapping[str, Any], *, progress: bool = True,
                      **overrides: Any) -> PostTrainingResult:
    """Run a recipe end to end and return what happened.

    ``recipe``: a :class:`Recipe`, a YAML/JSON file or a dict. ``overrides``: field replacements, dotted
    keys allowed through a dict (``run_post_training("r.yaml", output_dir="out", **{"calibration.num_samples": 16})``).
    Raises a :class:`~modelopt_typed_recipes.errors.RecipeError` subclass for any bad input, before the
    model is built; leaves no output folder behind when anything fails.
    """
    t0 = time.perf_counter()
    rec = load_recipe(recipe, overrides)
    plan = plan_run(rec, progress=progress)
    t_plan = time.perf_counter() - t0
    backend = load_backend(plan.backend)
    check = getattr(backend, "check", None)
    if check is not None:
        check(rec, plan)

    staging, output = plan.staging_dir, plan.output_dir
    if staging is None or output is None:  # pragma: no cover - plan_run sets both
        raise SpecError("the plan has no output folder", path="output_dir")
    created = [p for p in (output.parent, *output.parent.parents) if not p.exists()]
    main = plan.rank == 0
    try:
        if main:
            staging.mkdir(parents=True, exist_ok=True)
        result = backend.run(rec, plan)
        timings = {"startup": _seconds_since_process_start() - (time.perf_counter() - t0), "plan": t_plan,
                   **result.timings}
        result = attrs.evolve(result, output_dir=str(output), seconds=time.perf_counter() - t0, timings=timings)
        if main:
            for stage in result.stages:
                for rel in stage.outputs:
                    target = staging / rel
                    if target.is_dir():
                        write_manifest(target, build_manifest(rec, plan, result, stage))
            result = attrs.evolve(result, manifest=MANIFEST_NAME)
            write_manifest(staging, build_manifest(rec, plan, result))
            _replace(staging, output)
    except BaseException:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
            for p in sorted(created, key=lambda q: len(q.parts), reverse=True):
                try:
                    p.rmdir()
                except OSError:
                    pass
        raise
    return result


def _seconds_since_process_start() -> float:
    """Wall time since this process started (interpreter start and imports before ``run_post_training``)."""
    import psutil

    return time.time() - psutil.Process().create_time()


def _replace(staging: Path, output: Path) -> None:
    """Move the finished staging folder to ``output``; an earlier run's output there is replaced."""
    if output.exists():
        old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        output.rename(old)
        staging.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(output)


__all__ = ["RecipeError", "load_recipe", "plan_run", "run_post_training"]
