"""The Megatron-Core backend of ``run_post_training``: ``run(recipe, plan)`` executes a checked plan.

The plan (names, versions, layouts, pattern coverage, composed configs) was checked before anything is
built; ``run`` does the distributed setup for the first stage's layout, model from the architecture, weights, calibration
windows, and the stages in order. Stages hand the model over in memory; a stage writes a Megatron
distributed checkpoint only when its plan's save decision says so (``plan/save.py``). Between stages whose
layouts differ (a TP=2 quantization followed by a pipeline-only export) the model goes through a temporary
checkpoint with its ModelOpt state (the hand-over the stage's details report; in host memory when
:mod:`.handover` finds that safe), the parallel groups are rebuilt and the model is re-loaded resharded.
Everything else is written under ``plan.staging_dir``; the caller renames it to the output folder when ``run``
returns.

Each finished stage is recorded in the staging folder's journal (``plan.journal``) with the checkpoint its
save decision wrote (an export records the checkpoint of the model it exported). After a kill the same
command builds the model from the last recorded checkpoint (its own architecture, a pruned one included, in
the layout of the next stage) and skips the finished stages. No extra checkpoint is written for resuming: at
real size one costs minutes, so what a stopped run can reuse is what the recipe's ``save`` policy kept; a
stage handed over in memory (``save: none``, or ``auto`` before an export) means starting again, and the
run's notes say so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ...errors import SpecError
from ...plan.run_plan import RunPlan
from ...spec.arch import ModelArch
from ...spec.layout import ParallelLayout
from ...spec.recipe import Builtin, HFCheckpoint, MegatronCheckpoint, RandomInit, Recipe
from ..cached_memory import release_cached_memory
from ..evaluate import add_change
from ..result import PostTrainingResult, StageResult, peak_memory, reset_peak_memory


def run(recipe: Recipe, plan: RunPlan) -> PostTrainingResult:
    from ...plan.save import changes_model
    from ...plan.techniques import technique_for
    from .. import data, distributed
    from ..tasks.items import read_items
    from . import build, stages
    from .steps import MegatronRun

    t_start = time.perf_counter()
    if not plan.ok or not plan.stages:
        raise SpecError("the plan did not pass its check", path="stages")
    dtype = plan.dtype
    device = plan.device
    spec = build.spec_for_run(recipe, te_available=build.has_transformer_engine())
    distributed.init_process_group(device=device, ranks=(plan.rank, plan.world_size, plan.local_rank))
    staging = plan.staging()
    journal, point = _open_journal(recipe, plan, staging)
    start = point.start
    done = [StageResult.from_dict(s["result"]) for s in journal.stages[:start]]
    timings: dict[str, float] = dict(journal.extra.get("timings", {}))
    metrics: dict[str, float | None] = dict(journal.extra.get("metrics", {}))
    tasks: dict[str, dict[str, Any]] = {k: dict(v) for k, v in journal.extra.get("tasks", {}).items()}

    arch = plan.arch
    current = _layout_at(recipe, plan, start)
    distributed.set_layout(current, seed=recipe.seed, device=device)
    timings["setup"] = time.perf_counter() - t_start  # process group, parallel state; run_post_training adds the imports

    # ---- model and weights
    t = time.perf_counter()
    src = recipe.source
    hf_ref = plan.hf_reference  # ~ expanded by the plan, as check expanded it
    if point.state is not None:  # the model as the last finished stage's checkpoint holds it
        arch = _saved_arch(point.state)
        model = build.build_model(arch, current, dtype=dtype, device=device, spec=spec,
                                    deterministic=recipe.deterministic)
        model = build.load_checkpoint(model, point.state)
    else:
        if isinstance(src, RandomInit):
            distributed.seed_weights(src.seed, device=device)
        model = build.build_model(arch, current, dtype=dtype, device=device, spec=spec,
                                    deterministic=recipe.deterministic)
        if hf_ref is not None and isinstance(src, HFCheckpoint | Builtin):
            build.import_hf(model, hf_ref, dtype=dtype, workspace=str(staging / ".import"))
        elif isinstance(src, MegatronCheckpoint) and plan.source_dir is not None:
            model = build.load_checkpoint(model, plan.source_dir)
        elif isinstance(src, Builtin):
            raise SpecError("the built-in reference weights are not installed", path="source")
    timings["load"] = time.perf_counter() - t

    t = time.perf_counter()
    if isinstance(src, RandomInit):
        tokenizer = data.random_init_tokenizer(arch.vocab.size)
    else:
        tokenizer = data.load_tokenizer(
            hf_ref, path="source.hf_reference" if isinstance(src, MegatronCheckpoint) else "source.path")
    calib = data.token_windows(recipe.calibration, tokenizer)
    timings["data"] = time.perf_counter() - t
    eval_batches = None
    if recipe.evaluation is not None:
        ev = data.token_windows(recipe.evaluation, tokenizer, path="evaluation")
        eval_batches = data.batches(ev, recipe.evaluation.batch_size)
        if "perplexity_before" not in metrics:  # a resumed run measured it before its first stage
            t = time.perf_counter()
            metrics["perplexity_before"] = stages.perplexity(model, eval_batches, progress=plan.progress)
            timings["evaluate_before"] = time.perf_counter() - t
    items = read_items(recipe.tasks)  # once: the measurements before and after the stages use these
    if recipe.tasks and not all("before" in tasks.get(task.name, {}) for task in recipe.tasks):
        t = time.perf_counter()
        _measure_tasks("before", recipe, items, model, arch, tokenizer, staging, plan.progress, metrics, tasks)
        timings["tasks_before"] = time.perf_counter() - t

    archs = list(plan.stage_archs)
    if start:  # resumed: the checkpoint's architecture (a pruned size may have been chosen at run time)
        archs[start:] = [arch] * (len(archs) - start)
    run = MegatronRun(recipe=recipe, plan=plan, model=model, layout=current, spec=spec, tokenizer=tokenizer,
                      windows=calib, hf_reference=hf_ref, archs=archs, eval_batches=eval_batches)
    finished = [sp.stage for sp in plan.stages[:start]]
    run.quantized = any(st.technique in ("quantize", "auto_quantize") for st in finished)
    run.changed = any(changes_model(st) and st.technique not in ("quantize", "auto_quantize") for st in finished)
    del model  # the run holds it now (a hand-over between layouts must be able to free it)
    results: list[StageResult] = list(done)
    keep_teacher_at = _keep_teacher_at(recipe)
    release_cached_memory()  # what loading and the measurements before left cached, before the first stage's NCCL
    for sp in plan.stages[start:]:
        stage = sp.stage
        if distributed.is_main():
            import shutil

            shutil.rmtree(run.out_dir(sp), ignore_errors=True)  # what a stopped run left of this stage
        distributed.barrier()
        stage_arch = run.archs[sp.index]
        handover = None
        if sp.layout is not None and sp.layout != run.layout:
            handover = _hand_over(run, sp, stage_arch, dtype=dtype, device=device, spec=spec, seed=recipe.seed,
                                  deterministic=recipe.deterministic)
            run.layout = sp.layout
        if sp.index == keep_teacher_at:
            run.keep_teacher(sp)
        reset_peak_memory(device)
        t = time.perf_counter()
        step = technique_for(stage).executor("megatron")(run, stage, sp)
        seconds = time.perf_counter() - t - step.excluded_seconds
        summary = step.quantizer_summary
        if summary is None:
            summary = stages.quantizer_summary(run.model) if run.quantized or plan.source_quantized else {}
        results.append(StageResult(
            name=stage.label, technique=stage.technique, seconds=seconds,
            peak_memory_bytes=distributed.max_over_ranks(peak_memory(device)),
            params_before=stage_arch.params_total,
            params_after=step.params_after if step.params_after is not None else stage_arch.params_total,
            effective_bits=step.effective_bits, quantizer_summary=summary, outputs=step.outputs,
            details={"layout": run.layout.short(), **({"handover": handover} if handover else {}), **step.details},
        ))
        if distributed.is_main():
            journal.extra.update(metrics=metrics, timings=timings, tasks=tasks)
            journal.finish_stage(sp.index, results[-1].to_dict(), _state_after(journal, plan, sp.index, step.outputs))
        release_cached_memory()  # on every rank, before the next stage, its hand-over or the measurements after
        distributed.barrier()

    if eval_batches is not None and (run.quantized or run.changed):
        t = time.perf_counter()
        metrics["perplexity_after"] = stages.perplexity(run.model, eval_batches, progress=plan.progress)
        timings["evaluate_after"] = time.perf_counter() - t
        add_change(metrics)
    if recipe.tasks and (run.quantized or run.changed):
        t = time.perf_counter()
        _measure_tasks("after", recipe, items, run.model, run.archs[-1], tokenizer, staging, plan.progress, metrics,
                       tasks)
        timings["tasks_after"] = time.perf_counter() - t
    distributed.barrier()
    return PostTrainingResult(
        recipe_name=recipe.label, recipe_hash=recipe.content_hash(), backend="megatron", device=device,
        output_dir=str(plan.output_dir), stages=tuple(results), metrics=metrics,
        seconds=time.perf_counter() - t_start, timings=timings, calibration_hash=data.data_hash(calib), tasks=tasks,
        resumed_from=start or None, notes=(point.note,) if point.note else (),
    )


def _keep_teacher_at(recipe: Recipe) -> int | None:
    """The stage before which the run keeps a copy of the model: the first compression stage, when a later
    distill stage learns from the model as it was before compression."""
    from ...plan.techniques.distill import first_compression

    for j, stage in enumerate(recipe.stages):
        if getattr(stage, "teacher", None) == "before_compression":
            return first_compression(recipe.stages, j)
    return None


UNSAVED = ("the save policy handed it over in memory; save: all writes each stage's checkpoint, so a stopped "
           "Megatron-Core run continues after any stage")


def _open_journal(recipe: Recipe, plan: RunPlan, staging: Path) -> tuple[Any, Any]:
    """The staging folder's journal and where this run starts, decided on rank 0 and the same on every rank."""
    from ...plan.journal import Journal, ResumePoint
    from .. import distributed

    journal = Journal.open(staging, recipe_hash=recipe.content_hash(), backend="megatron")
    shared = None
    if distributed.is_main():
        staging.mkdir(parents=True, exist_ok=True)
        # the model is measured after the last stage: a resumed run needs it again
        point = journal.begin(len(plan.stages), final_model_needed=recipe.evaluation is not None or bool(recipe.tasks),
                              unsaved=UNSAVED)
        teacher_at = _keep_teacher_at(recipe)
        if point.start and teacher_at is not None and point.start > teacher_at:
            journal.stages.clear()  # the teacher is the model before compression: only the source gives it again
            journal.begin(len(plan.stages))
            point = ResumePoint(note=f"a stopped run finished {point.start} stage(s), but a distill stage learns from "
                                     f"the model before stages[{teacher_at}], which only a run from the beginning "
                                     "has; starting from the beginning")
        for p in staging.glob(".relayout-*"):  # a hand-over between layouts a kill interrupted
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        if plan.output_dir is not None:  # the same, put in host memory (/dev/shm) or MTR_HANDOVER_DIR
            from .handover import remove_stale

            remove_stale(plan.output_dir)
        shared = (point.start, None if point.state is None else str(point.state), point.note, journal.stages,
                  journal.extra)
    start, state, note, journal.stages, journal.extra = distributed.broadcast_object(shared)
    return journal, ResumePoint(start=start, state=None if state is None else Path(state), note=note)


def _layout_at(recipe: Recipe, plan: RunPlan, index: int) -> ParallelLayout:
    """The layout stage ``index`` runs in (the last one a stage up to it set; the first stage's otherwise)."""
    layout = plan.stages[0].layout or recipe.layout or ParallelLayout()
    for sp in plan.stages[: index + 1]:
        if sp.layout is not None:
            layout = sp.layout
    return layout


def _saved_arch(checkpoint: Path) -> ModelArch:
    """The architecture a stage checkpoint was written with (``build.save_checkpoint`` stores it beside)."""
    from ...spec.serde import load_file

    return load_file(checkpoint / "model_arch.yaml", ModelArch)


def _state_after(journal: Any, plan: RunPlan, index: int, outputs: tuple[str, ...]) -> Path | None:
    """The checkpoint of the model after stage ``index``: the one it wrote, else (an export, which leaves the
    model as it is) the one the stage before it recorded; None when the model is only in memory."""
    staging = plan.staging()
    own = next((staging / o for o in outputs if o.endswith("/checkpoint")), None)
    if own is not None or plan.stages[index].stage.technique != "export" or index == 0:
        return own
    before = journal.stages[index - 1].get("state") if len(journal.stages) >= index else None
    return staging / before if before else None


def _measure_tasks(phase: str, recipe: Recipe, items: list[Any], model: Any, arch: ModelArch, tokenizer: Any,
                   staging: Path, progress: bool, metrics: dict[str, float | None],
                   tasks: dict[str, dict[str, Any]]) -> None:
    """The recipe's evaluation tasks on the model as it is now (every rank; the results agree)."""
    from ..tasks.run import evaluate_tasks, record
    from .tasks import MegatronTaskModel

    lm = MegatronTaskModel(model, max_length=arch.max_position_embeddings, workspace=staging, progress=progress)
    record(phase, evaluate_tasks(recipe.tasks, items, lm, tokenizer, seed=recipe.seed), metrics, tasks)


def _hand_over(run: Any, sp: Any, arch: ModelArch, *, dtype: str, device: str, spec: str,
               seed: int, deterministic: bool = False) -> dict[str, Any]:
    """Move the run's model into stage ``sp``'s layout through a temporary checkpoint (in host memory when
    :mod:`.handover` finds it safe); return what the stage's details report, the seconds of each part included.
    The folder is deleted once re-loaded, and when anything fails between the save and the load."""
    import itertools

    from .. import distributed
    from . import build, handover

    # no cache release of its own: run's loop gave the stage before's cached blocks back (the writer's first
    # gather opens NCCL's point-to-point channels, whose buffers come from outside PyTorch's allocator)
    t = time.perf_counter()
    own = sum(x.numel() * x.element_size() for x in itertools.chain(run.model.parameters(), run.model.buffers()))
    total = distributed.sum_over_ranks(own)
    where = handover.place(total, staging=run.plan.staging(), output_dir=run.plan.output_dir or run.plan.staging(),
                           index=sp.index)
    times: dict[str, float] = {}
    try:
        build.save_checkpoint(run.model, where.folder, arch=arch, checks=False)  # read back at once, below
        times["save_s"] = time.perf_counter() - t
        run.model = None  # the last reference: freed, reference cycles included, before the new layout is built
        run.model = _reload(arch, sp.layout, where.folder, dtype=dtype, device=device, spec=spec, seed=seed,
                            deterministic=deterministic, times=times)
    finally:
        if distributed.is_main():
            handover.remove(where)
    return {"from": run.layout.short(), "to": sp.layout.short(), "seconds": time.perf_counter() - t,
            "via": f"a temporary Megatron distributed checkpoint in {where.choice.reason}; deleted once re-loaded",
            "where": where.choice.where, "folder": str(where.folder), "bytes": total, **times}


def _reload(arch: ModelArch, new: ParallelLayout, tmp: Path, *, dtype: str, device: str, spec: str,
            seed: int, deterministic: bool = False, times: dict[str, float] | None = None) -> Any:
    """The second half of a move between layouts: the old model is gone (collected here, with its reference
    cycles, so two copies never share the GPU), groups rebuilt for ``new``, the hand-over checkpoint (with the
    ModelOpt state) loaded and deleted. ``times`` gets the seconds to build (``build_s``) and load (``load_s``)."""
    import gc

    from .. import distributed
    from . import build

    t = time.perf_counter()
    gc.collect()
    release_cached_memory()  # the old model's blocks, freed just now, are cached: back to the driver before
    # set_layout's new groups open NCCL communicators outside PyTorch's allocator
    distributed.set_layout(new, seed=seed, device=device)
    fresh = build.build_model(arch, new, dtype=dtype, device=device, spec=spec, deterministic=deterministic)
    t_built = time.perf_counter()
    fresh = build.load_checkpoint(fresh, tmp, checks=False)  # this job wrote it a moment ago
    distributed.barrier()
    if times is not None:
        times.update(build_s=t_built - t, load_s=time.perf_counter() - t_built)
    if distributed.is_main():
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)  # at once: host memory back before the next stage (_hand_over's
        # finally removes the scratch folder, and everything when this fails)
    return fresh
