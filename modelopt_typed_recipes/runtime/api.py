"""``run_post_training``: one call from a recipe to finished, manifest-bearing outputs.

Order of work, so that mistakes cost nothing:

1. read the recipe (object, YAML path or dict) and apply overrides;
2. checks that need no heavy import: architecture and stage sizes, CUDA for CUDA-only formats, what a
   stage needs installed (each technique's ``environment_problem``: pulp's solver for auto-quantize), the
   checkpoint directory, calibration/evaluation text present and non-empty, the planner's full check
   (ModelOpt names, versions, layouts, pattern coverage);
3. only then the backend (Megatron-Core or Hugging Face) is imported and run, writing into a staging
   folder beside the output folder; manifests are added and the folder is renamed into place. On any
   failure the staging folder is removed: no partial output is ever left behind.

Whose folder it is, the lock, leftovers, the swap and machine faults are ``plan.outputs``' job; the stage
journal that lets a killed run continue is ``plan.journal``'s.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ..errors import OutputError, RecipeError, SpecError
from ..plan import outputs
from ..spec.recipe import Recipe
from ..spec.serde import apply_overrides, from_dict
from . import cpu_threads, determinism
from .backend import RunPlan, load_backend
from .data import check_text
from .manifest import build_manifest, write_manifest
from .quiet import library_output
from .result import PostTrainingResult

if TYPE_CHECKING:
    from ..plan.environment import Environment

T = TypeVar("T")


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


def plan_run(recipe: Recipe, *, progress: bool = True) -> RunPlan:
    """Every check that needs no model, then the plan; raises the first problem as a typed error."""
    from ..plan import backend_choice
    from ..plan.archs import stage_archs
    from ..plan.resolve import launch_world
    from ..plan.sources import source_problems
    from ..plan.techniques import technique_for

    archs = stage_archs(recipe)  # unknown names, impossible prune sizes
    env = _env()
    problem = backend_choice.device_problem(recipe, env)
    if problem is not None:
        raise problem
    device = backend_choice.choose_device(recipe, env)
    if device == "cpu":  # each technique's environment_problem is asked once, by check_recipe below
        for i, stage in enumerate(recipe.stages):
            problem = technique_for(stage).cuda_problem(stage, f"stages[{i}]")
            if problem is not None:
                raise problem
    backend = backend_choice.choose_backend(recipe, env)
    for problem in backend_choice.backend_problems(backend, env, cuda=device == "cuda", world_size=launch_world()[0]):
        raise problem
    for problem in source_problems(recipe, archs[0], env, backend):
        raise problem
    check_text(recipe.calibration, path="calibration")
    if recipe.evaluation is not None:
        check_text(recipe.evaluation, path="evaluation")
    if recipe.tasks:
        from .tasks.items import check_tasks

        check_tasks(recipe.tasks)
    output = outputs.user_path(recipe.output_dir, path="output_dir").resolve()
    outputs.check_output(output)

    from ..plan.check import check_recipe

    plan = check_recipe(recipe, env=attrs.evolve(env, cuda=device == "cuda"), backend=backend)
    plan.raise_first()
    return attrs.evolve(plan, device=device, output_dir=output, staging_dir=outputs.staging_dir(output, recipe.content_hash()), progress=progress)


# --------------------------------------------------------------------------- the run
RESUMING_BACKENDS = ("hf", "megatron")
"""Backends that journal their stages (``plan.journal``) and continue a stopped run; the others start again."""


def run_post_training(recipe: Recipe | str | Path | Mapping[str, Any], *, progress: bool = True,
                      force: bool = False, verbose: bool = False, **overrides: Any) -> PostTrainingResult:
    """Run a recipe end to end and return what happened.

    ``recipe``: a :class:`Recipe`, a YAML/JSON file or a dict. ``overrides``: field replacements, dotted
    keys allowed through a dict (``run_post_training("r.yaml", output_dir="out", **{"calibration.num_samples": 16})``).
    Raises a :class:`~modelopt_typed_recipes.errors.RecipeError` subclass for any bad input, before the
    model is built; leaves no output folder behind when anything fails. When ``output_dir`` already holds
    this recipe's finished outputs (same hash) nothing is redone (``result.reused``) unless ``force``; a run
    of the same recipe that was killed continues from its last finished stage (``result.notes`` says so).
    Library warnings and ModelOpt's printed notes are kept off stdout (``verbose=True`` shows them as the
    libraries emit them).
    """
    with library_output(verbose=verbose):
        return _run(recipe, progress=progress, force=force, overrides=overrides)


def _run(recipe: Recipe | str | Path | Mapping[str, Any], *, progress: bool, force: bool,
         overrides: Mapping[str, Any]) -> PostTrainingResult:
    t0 = time.perf_counter()
    startup = _startup()  # taken by the process's first run whatever becomes of it (a failure, a reused result)
    rec = load_recipe(recipe, overrides)
    plan = plan_run(rec, progress=progress)
    t_plan = time.perf_counter() - t0
    recipe_hash = rec.content_hash()
    staging, output = plan.staging_dir, plan.output_dir
    if staging is None or output is None:  # pragma: no cover - plan_run sets both
        raise SpecError("the plan has no output folder", path="output_dir")
    done = None if force else outputs.finished(output, recipe_hash)
    if done is not None:
        return PostTrainingResult.from_dict(done["result"], reused=True, output_dir=str(output), notes=(
            (f"{output} already holds the outputs of this recipe (hash {recipe_hash}); nothing was redone "
             "(force=True / --force redoes it)"),))
    # determinism before the backend's first torch import; cpu_threads imports torch first: ``setup`` starts here
    t_setup = time.perf_counter()
    with determinism.applied(rec.deterministic) as det, cpu_threads.applied(rec.cpu_threads) as threads:
        return _execute(rec, plan, det, threads, recipe_hash=recipe_hash, staging=staging, output=output,
                        t0=t0, t_plan=t_plan, t_setup=t_setup, startup=startup)


def _execute(rec: Recipe, plan: RunPlan, det: determinism.Determinism, threads: cpu_threads.CpuThreads, *,
             recipe_hash: str, staging: Path, output: Path, t0: float, t_plan: float, t_setup: float,
             startup: float) -> PostTrainingResult:
    """The run proper, once it is known that something is to be done: backend, output folder, stages, swap."""
    backend = load_backend(plan.backend)  # ModelOpt (with Megatron-Core or transformers) is first imported here
    imports = time.perf_counter() - t_setup  # with torch's, in cpu_threads.applied
    check = getattr(backend, "check", None)
    if check is not None:
        check(rec, plan)

    created = [p for p in (output.parent, *output.parent.parents) if not p.exists()]
    main = plan.rank == 0
    identity = outputs.run_identity(recipe_hash)
    notes: list[str] = []
    if plan.world_size > 1:  # the ranks agree on the output folder through the process group (below)
        from . import distributed

        distributed.init_process_group(device=plan.device, ranks=(plan.rank, plan.world_size, plan.local_rank))
    try:
        with contextlib.ExitStack() as held:
            def claim() -> tuple[dict[str, Any] | None, list[str]]:
                """Rank 0 takes the folder: the lock, leftovers, whose folder it is, a finished run waiting."""
                said: list[str] = []
                with outputs.faults_as_errors(output.parent):
                    output.parent.mkdir(parents=True, exist_ok=True)
                    held.enter_context(outputs.OutputLock(output, identity))
                    outputs.clean_leftovers(output, keep=staging)
                    outputs.check_output(output)
                    ready = outputs.read_manifest(staging)
                    if ready is not None and ready["run"].get("recipe_hash") == recipe_hash and ready.get("result"):
                        return ready, said
                    if plan.backend not in RESUMING_BACKENDS and staging.is_dir() and any(staging.iterdir()):
                        shutil.rmtree(staging)
                        said.append(f"a stopped run of this recipe was found in {staging}; the {plan.backend} "
                                    "backend does not continue stopped runs yet, so this run started again")
                    staging.mkdir(parents=True, exist_ok=True)
                return None, said

            ready, said = on_main(plan, claim)
            notes += said
            with outputs.faults_as_errors(output.parent):
                if ready is not None:
                    # a run finished but was stopped before its swap: only the swap is left
                    result = PostTrainingResult.from_dict(ready["result"], output_dir=str(output))
                    notes.append(f"a finished run of this recipe was waiting in {staging}; put in place")
                else:
                    result = backend.run(rec, plan)
                    if rec.gate is not None:  # before any manifest or rename: a model below the bar leaves nothing
                        rec.gate.enforce(result.metrics)
                    timings = {"startup": startup, "plan": t_plan,
                               "setup": imports + result.timings.get("setup", 0.0),
                               **{k: v for k, v in result.timings.items() if k != "setup"}}
                    result = attrs.evolve(result, output_dir=str(output), seconds=time.perf_counter() - t0,
                                          timings=timings, determinism=det.facts(), cpu_threads=threads.facts(),
                                          notes=(*result.notes, *determinism.notes(det)))

            def put_in_place() -> list[str]:
                with outputs.faults_as_errors(output.parent):
                    if ready is None:
                        _write_manifests(rec, plan, result, identity)
                    return outputs.publish(staging, output)

            kept = on_main(plan, put_in_place)
            if kept:
                notes.append(f"files that no run of ours wrote were kept: {', '.join(kept[:5])}")
    except BaseException as exc:
        waiting = isinstance(exc, OutputError) and "finished run waits" in exc.hint
        if main and not waiting and not isinstance(exc, KeyboardInterrupt | outputs.OutputLockedError):
            shutil.rmtree(staging, ignore_errors=True)
            for p in sorted(created, key=lambda q: len(q.parts), reverse=True):
                with contextlib.suppress(OSError):
                    p.rmdir()
        raise
    return attrs.evolve(result, manifest=outputs.MANIFEST_NAME, notes=(*result.notes, *notes))


def on_main(plan: RunPlan, work: Callable[[], T]) -> T:
    """``work()`` on rank 0 alone, its result or its typed error the same on every rank.

    The output folder is rank 0's to hold (its lock, its swap); the other ranks wait here, in the process
    group, for what it found: a second launch to a locked folder fails on every rank with the same
    :class:`OutputLockedError`, instead of rank 0 failing while the others wait for it forever."""
    if plan.world_size == 1:
        return work()
    from . import distributed

    value: Any = None
    failure: dict[str, str] | None = None
    if plan.rank == 0:
        try:
            value = work()
        except RecipeError as exc:
            failure = exc.to_dict()
            distributed.broadcast_object((None, failure))
            raise
        except BaseException as exc:
            failure = OutputError(f"rank 0 stopped with {type(exc).__name__}: {exc}", path="output_dir").to_dict()
            distributed.broadcast_object((None, failure))
            raise
    value, failure = distributed.broadcast_object((value, failure))
    if failure is not None:
        from .. import errors

        kind = getattr(errors, failure["type"], None)
        kind = kind if isinstance(kind, type) and issubclass(kind, RecipeError) else RecipeError
        raise kind(failure["message"], path=failure["path"], hint=failure["hint"])
    return value


_startup_counted = False


def _startup() -> float:
    """Seconds from the process's start to now, the start of a run (interpreter, imports, command line), for the
    process's first run only: a later recipe of the same command or notebook paid none, and counting the earlier
    runs as its startup made the second of the README's two recipes report the first one's whole run. Called as
    a run starts, so a first run that fails or is reused takes it too (counted at its end, it was left to the
    next run, with the failed run in it)."""
    global _startup_counted
    if _startup_counted:
        return 0.0
    _startup_counted = True
    return max(0.0, _seconds_since_process_start())


def _seconds_since_process_start() -> float:
    """Wall time since this process started (interpreter start and imports before ``run_post_training``)."""
    import psutil

    return time.time() - psutil.Process().create_time()


def _write_manifests(rec: Recipe, plan: RunPlan, result: PostTrainingResult, identity: dict[str, Any]) -> None:
    """Each stage folder's manifest, then the run's own, listing every file the run wrote."""
    from ..plan.journal import JOURNAL_NAME

    staging = plan.staging()
    for stage in result.stages:
        for rel in stage.outputs:
            target = staging / rel
            if target.is_dir():
                write_manifest(target, build_manifest(rec, plan, result, stage, run=identity))
    for name in (JOURNAL_NAME, ".resume"):  # the stage journal and saved models are for resuming, not outputs
        p = staging / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    result = attrs.evolve(result, manifest=outputs.MANIFEST_NAME)
    write_manifest(staging, build_manifest(rec, plan, result, run=identity, files=outputs.inventory(staging)))


__all__ = ["RecipeError", "load_recipe", "plan_run", "run_post_training"]
