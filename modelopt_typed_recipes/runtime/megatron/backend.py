"""The Megatron-Core backend of ``run_post_training``: ``run(recipe, plan)`` executes a checked plan.

The plan (names, versions, layouts, pattern coverage, composed configs) was checked before anything is
built; ``run`` does the distributed setup for the first stage's layout, model from the architecture, weights, calibration
windows, and the stages in order. Stages hand the model over in memory; a stage writes a Megatron
distributed checkpoint only when its plan's save decision says so (``plan/save.py``). Between stages whose
layouts differ (a TP=2 quantization followed by a pipeline-only export) the model goes through a temporary
checkpoint with its ModelOpt state (the hand-over the stage's details report), the parallel groups are
rebuilt and the model is re-loaded resharded. Everything is written under ``plan.staging_dir``; the caller
renames it to the output folder when ``run`` returns.
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
from ..evaluate import add_change
from ..result import PostTrainingResult, StageResult, peak_memory, reset_peak_memory


def _hf_reference(recipe: Recipe) -> str | None:
    src = recipe.source
    if isinstance(src, HFCheckpoint):
        return src.path
    if isinstance(src, MegatronCheckpoint):
        return src.hf_reference
    if isinstance(src, Builtin):
        from ..data import REFERENCE_DIR

        return str(REFERENCE_DIR) if (REFERENCE_DIR / "config.json").is_file() else None
    return None


def run(recipe: Recipe, plan: RunPlan) -> PostTrainingResult:
    from ...plan.techniques import technique_for
    from .. import data, distributed
    from . import build, stages
    from .steps import MegatronRun

    t_start = time.perf_counter()
    if not plan.ok or not plan.stages:
        raise SpecError("the plan did not pass its check", path="stages")
    dtype = plan.dtype
    device = plan.device
    spec = build.spec_for_run(recipe, te_available=build.has_transformer_engine())
    distributed.init_process_group(device=device, ranks=(plan.rank, plan.world_size, plan.local_rank))
    timings: dict[str, float] = {}
    staging = plan.staging()
    if distributed.is_main():
        staging.mkdir(parents=True, exist_ok=True)
    distributed.barrier()

    arch = plan.arch
    current = plan.stages[0].layout or recipe.layout or ParallelLayout()
    distributed.set_layout(current, seed=recipe.seed, device=device)
    timings["setup"] = time.perf_counter() - t_start  # torch and Megatron-Core are first imported here

    # ---- model and weights
    t = time.perf_counter()
    src = recipe.source
    if isinstance(src, RandomInit):
        distributed.seed_weights(src.seed, device=device)
    model = build.build_model(arch, current, dtype=dtype, device=device, spec=spec)
    hf_ref = _hf_reference(recipe)
    if hf_ref is not None and isinstance(src, HFCheckpoint | Builtin):
        build.import_hf(model, hf_ref, dtype=dtype, workspace=str(staging / ".import"))
    elif isinstance(src, MegatronCheckpoint):
        model = build.load_checkpoint(model, src.path)
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
    metrics: dict[str, float | None] = {}
    if recipe.evaluation is not None:
        ev = data.token_windows(recipe.evaluation, tokenizer, path="evaluation")
        eval_batches = data.batches(ev, recipe.evaluation.batch_size)
        t = time.perf_counter()
        metrics["perplexity_before"] = stages.perplexity(model, eval_batches, progress=plan.progress)
        timings["evaluate_before"] = time.perf_counter() - t
    tasks: dict[str, dict[str, Any]] = {}
    if recipe.tasks:
        t = time.perf_counter()
        _measure_tasks("before", recipe, model, arch, tokenizer, staging, plan.progress, metrics, tasks)
        timings["tasks_before"] = time.perf_counter() - t

    run = MegatronRun(recipe=recipe, plan=plan, model=model, layout=current, spec=spec, tokenizer=tokenizer,
                      windows=calib, hf_reference=hf_ref, archs=list(plan.stage_archs), eval_batches=eval_batches)
    del model  # the run holds it now (a hand-over between layouts must be able to free it)
    results: list[StageResult] = []
    keep_teacher_at = _keep_teacher_at(recipe)
    for sp in plan.stages:
        stage = sp.stage
        stage_arch = run.archs[sp.index]
        handover = None
        if sp.layout is not None and sp.layout != run.layout:
            t = time.perf_counter()
            handover_dir = staging / f".relayout-{sp.index}"
            build.save_checkpoint(run.model, handover_dir, arch=stage_arch)
            run.model = None  # the last reference: freed, reference cycles included, before the new layout is built
            run.model = _reload(stage_arch, sp.layout, handover_dir, dtype=dtype, device=device, spec=spec,
                                seed=recipe.seed)
            handover = {"from": run.layout.short(), "to": sp.layout.short(), "seconds": time.perf_counter() - t,
                        "via": "a temporary Megatron distributed checkpoint, deleted once re-loaded"}
            run.layout = sp.layout
        if sp.index == keep_teacher_at:
            run.keep_teacher(sp)
        reset_peak_memory(device)
        t = time.perf_counter()
        step = technique_for(stage).executor("megatron")(run, stage, sp)
        seconds = time.perf_counter() - t - step.excluded_seconds
        summary = step.quantizer_summary
        if summary is None:
            summary = stages.quantizer_summary(run.model) if run.quantized else {}
        results.append(StageResult(
            name=stage.label, technique=stage.technique, seconds=seconds,
            peak_memory_bytes=distributed.max_over_ranks(peak_memory(device)),
            params_before=stage_arch.params_total,
            params_after=step.params_after if step.params_after is not None else stage_arch.params_total,
            effective_bits=step.effective_bits, quantizer_summary=summary, outputs=step.outputs,
            details={"layout": run.layout.short(), **({"handover": handover} if handover else {}), **step.details},
        ))

    if eval_batches is not None and (run.quantized or run.changed):
        t = time.perf_counter()
        metrics["perplexity_after"] = stages.perplexity(run.model, eval_batches, progress=plan.progress)
        timings["evaluate_after"] = time.perf_counter() - t
        add_change(metrics)
    if recipe.tasks and (run.quantized or run.changed):
        t = time.perf_counter()
        _measure_tasks("after", recipe, run.model, run.archs[-1], tokenizer, staging, plan.progress, metrics, tasks)
        timings["tasks_after"] = time.perf_counter() - t
    distributed.barrier()
    return PostTrainingResult(
        recipe_name=recipe.label, recipe_hash=recipe.content_hash(), backend="megatron", device=device,
        output_dir=str(plan.output_dir), stages=tuple(results), metrics=metrics,
        seconds=time.perf_counter() - t_start, timings=timings, calibration_hash=data.data_hash(calib), tasks=tasks,
    )


def _keep_teacher_at(recipe: Recipe) -> int | None:
    """The stage before which the run keeps a copy of the model: the first compression stage, when a later
    distill stage learns from the model as it was before compression."""
    from ...plan.techniques.distill import first_compression

    for j, stage in enumerate(recipe.stages):
        if getattr(stage, "teacher", None) == "before_compression":
            return first_compression(recipe.stages, j)
    return None


def _measure_tasks(phase: str, recipe: Recipe, model: Any, arch: ModelArch, tokenizer: Any, staging: Path,
                   progress: bool, metrics: dict[str, float | None], tasks: dict[str, dict[str, Any]]) -> None:
    """The recipe's evaluation tasks on the model as it is now (every rank; the results agree)."""
    from ..tasks.run import evaluate_tasks, record
    from .tasks import MegatronTaskModel

    lm = MegatronTaskModel(model, max_length=arch.max_position_embeddings, workspace=staging, progress=progress)
    record(phase, evaluate_tasks(recipe.tasks, lm, tokenizer, seed=recipe.seed), metrics, tasks)


def _reload(arch: ModelArch, new: ParallelLayout, tmp: Path, *, dtype: str, device: str, spec: str,
            seed: int) -> Any:
    """The second half of a move between layouts: the old model is gone (collected here, with its reference
    cycles, so two copies never share the GPU), groups rebuilt for ``new``, the hand-over checkpoint (with the
    ModelOpt state) loaded and deleted."""
    import gc

    import torch

    from .. import distributed
    from . import build

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    distributed.set_layout(new, seed=seed, device=device)
    fresh = build.build_model(arch, new, dtype=dtype, device=device, spec=spec)
    fresh = build.load_checkpoint(fresh, tmp)
    distributed.barrier()
    if distributed.is_main():
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)  # a hand-over between layouts, not an output
    return fresh
