"""The Hugging Face backend of ``run_post_training``: ``check(recipe, plan)`` and ``run(recipe, plan)``.

One process, one device. Load (shipped weights, a local HF checkpoint, or random init from the
registry architecture), measure held-out perplexity, run the stages (quantize or auto-quantize with
ModelOpt, then export), measure again on the fake-quantized model and on the re-loaded export.
Everything is written under ``plan.staging_dir``. Each finished stage is recorded in the staging folder's
journal (``plan.journal``) with the model saved after it (ModelOpt's ``mto.save``: the quantized model's
ModelOpt state and weights), so the same command after a kill continues with the next stage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ...plan.run_plan import RunPlan
from ...spec.recipe import RandomInit, Recipe
from ..cached_memory import release_cached_memory
from ..evaluate import add_change
from ..result import PostTrainingResult, StageResult, peak_memory, reset_peak_memory
from ..tasks.run import TaskResult

# perplexity of an unmodified model on the same windows, kept for the process (several recipes, one model)
_BASELINES: dict[tuple[str, ...], float] = {}
# the same for evaluation tasks: (model, dtype, device, task content hash, items digest) -> the task's result before
# the stages; the items digest tells apart other questions read from the same folder (runtime.tasks.items)
_TASK_BASELINES: dict[tuple[str, ...], TaskResult] = {}


def check(recipe: Recipe, plan: RunPlan) -> None:
    """What only this backend can tell (it needs transformers); everything else was checked by the plan."""
    if isinstance(recipe.source, RandomInit):
        from .model import hf_config_for

        hf_config_for(plan.arch)  # CompatibilityError when transformers has no class for this architecture


def run(recipe: Recipe, plan: RunPlan) -> PostTrainingResult:
    import shutil

    import modelopt.torch.opt as mto
    import torch

    from ...plan.journal import Journal
    from ...plan.techniques import technique_for
    from ...plan.techniques.distill import teacher_span
    from ...spec.serde import content_hash
    from ..data import batches, data_hash, token_windows
    from ..tasks.items import items_digest, read_items
    from ..tasks.run import evaluate_tasks, record
    from . import evaluate, export
    from .model import count_params, load_model
    from .steps import HFRun

    t_run = time.perf_counter()
    torch.manual_seed(recipe.seed)
    device, progress = plan.device, plan.progress
    staging = plan.staging()
    journal = Journal.open(staging, recipe_hash=recipe.content_hash(), backend="hf")
    # without an export stage the model is measured after the last stage: a resumed run needs it again
    point = journal.begin(len(plan.stages),
                          final_model_needed=recipe.export is None and recipe.evaluation is not None)
    done = [StageResult.from_dict(s["result"]) for s in journal.stages[:point.start]]
    timings: dict[str, float] = dict(journal.extra.get("timings", {}))
    metrics: dict[str, float | None] = dict(journal.extra.get("metrics", {}))

    t = time.perf_counter()
    model, tokenizer, folder = load_model(recipe, plan.arch, plan.weights_dir, device=device, dtype=plan.dtype)
    if point.state is not None:  # the model as the last finished stage left it
        mto.restore(model, str(point.state))
    timings["load"] = time.perf_counter() - t

    cal = recipe.calibration
    windows = token_windows(cal, tokenizer, path="calibration")
    cal_hash = data_hash(windows)
    eval_batches = None
    model_key = str(folder or f"random:{getattr(recipe.source, 'seed', 0)}:{plan.arch.name}")
    if recipe.evaluation is not None:
        ev = recipe.evaluation
        eval_windows = token_windows(ev, tokenizer, path="evaluation")
        eval_batches = batches(eval_windows, ev.batch_size)
        key = (model_key, data_hash(eval_windows), plan.dtype, device)
        t = time.perf_counter()
        if "perplexity_before" in metrics:  # measured before the stopped run's stages
            _BASELINES.setdefault(key, metrics["perplexity_before"])  # type: ignore[arg-type]
        if key not in _BASELINES:
            _BASELINES[key] = evaluate.perplexity(model, eval_batches, device=device, label="evaluate original",
                                                  progress=progress)
        metrics["perplexity_before"] = _BASELINES[key]
        metrics["eval_tokens"] = float(eval_windows.shape[0] * (eval_windows.shape[1] - 1))
        timings["evaluate_before"] = time.perf_counter() - t
    tasks: dict[str, dict[str, Any]] = {}
    items = read_items(recipe.tasks)  # once: the cache keys and every phase use these
    if recipe.tasks:
        t = time.perf_counter()
        keys = [(model_key, plan.dtype, device, content_hash(task), items_digest(asked))
                for task, asked in zip(recipe.tasks, items, strict=True)]
        todo = [i for i, k in enumerate(keys) if k not in _TASK_BASELINES]
        fresh = evaluate_tasks(recipe.tasks, items, evaluate.HFTaskModel(model, device=device, progress=progress),
                               tokenizer, seed=recipe.seed, only=todo)
        for i in todo:
            _TASK_BASELINES[keys[i]] = fresh[recipe.tasks[i].name]
        record("before", {task.name: _TASK_BASELINES[k] for task, k in zip(recipe.tasks, keys, strict=True)},
               metrics, tasks)
        timings["tasks_before"] = time.perf_counter() - t

    run = HFRun(recipe=recipe, plan=plan, model=model, tokenizer=tokenizer, windows=windows,
                eval_batches=eval_batches, task_items=items, metrics=metrics, timings=timings,
                tasks=tasks, measured_after="perplexity_after" in metrics,  # a resumed run measured it
                quantized=any(s.technique in ("quantize", "auto_quantize") for s in done))
    stages: list[StageResult] = list(done)
    run.trained = any(s.technique == "distill" for s in done)
    keep_at, keep_until = teacher_span(recipe.stages)
    if keep_at is not None and keep_until is not None and point.start > keep_at and point.start <= keep_until:
        run.teacher = _rebuilt_teacher(recipe, plan, journal, keep_at)  # a resumed run after the copy was made
    release_cached_memory()  # what loading and the measurements before left cached, before the first stage
    for sp in plan.stages[point.start:]:
        stage = sp.stage
        if sp.index == keep_at:
            from .distill import frozen_copy

            run.teacher = frozen_copy(run.model)
        for half_written in {plan.stage_dir(sp.index, sp.label), staging / getattr(stage, "folder", "")} - {staging}:
            shutil.rmtree(half_written, ignore_errors=True)  # what a stopped run left of this stage
        reset_peak_memory(device)
        t = time.perf_counter()
        before = count_params(model)
        step = technique_for(stage).executor("hf")(run, stage, sp)
        seconds = time.perf_counter() - t - step.excluded_seconds
        stages.append(StageResult(
            name=stage.label, technique=stage.technique, seconds=seconds, peak_memory_bytes=peak_memory(device),
            params_before=before, params_after=count_params(run.model), effective_bits=step.effective_bits,
            quantizer_summary=step.quantizer_summary or {}, outputs=step.outputs, details=dict(step.details),
        ))
        if keep_until is not None and sp.index >= keep_until:
            run.teacher = None  # no later stage learns from it
        journal.extra.update(metrics=metrics, timings=timings)
        journal.finish_stage(sp.index, stages[-1].to_dict(), _save_state(run.model, plan, sp.index, sp.label,
                                                                         len(plan.stages)))
        release_cached_memory()  # the stage's freed blocks (and a teacher dropped above) before the next work

    if run.changed and not run.measured_after:
        run.evaluate_after()
    exp = recipe.export
    if (eval_batches is not None or recipe.tasks) and exp is not None and exp.format == "hf":
        t = time.perf_counter()
        reloaded, counts = export.load_export(staging / exp.folder, device=device)
        timings["reload_export"] = time.perf_counter() - t
        if eval_batches is not None:
            t = time.perf_counter()
            metrics["perplexity_export"] = evaluate.perplexity(reloaded, eval_batches, device=device,
                                                               label="evaluate re-loaded export", progress=progress)
            timings["evaluate_export"] = time.perf_counter() - t
        if recipe.tasks:
            t = time.perf_counter()
            lm = evaluate.HFTaskModel(reloaded, device=device, progress=progress)
            record("export", evaluate_tasks(recipe.tasks, items, lm, tokenizer, seed=recipe.seed), metrics, tasks)
            timings["tasks_export"] = time.perf_counter() - t
        stages[-1].details["reloaded_layers"] = counts
    add_change(metrics)

    return PostTrainingResult(
        recipe_name=recipe.label, recipe_hash=recipe.content_hash(), backend="hf", device=device,
        output_dir=str(staging), stages=tuple(stages), metrics=metrics, seconds=time.perf_counter() - t_run,
        timings=timings, calibration_hash=cal_hash, resumed_from=point.start or None,
        notes=(point.note,) if point.note else (), tasks=tasks,
    )


def _rebuilt_teacher(recipe: Recipe, plan: RunPlan, journal: Any, keep_at: int) -> Any:
    """The model before stage ``keep_at`` again, for a resumed run: the source's weights, with the ModelOpt
    state the stage before it saved (none when it is the first stage)."""
    import modelopt.torch.opt as mto

    from ...errors import SpecError
    from .distill import frozen_copy
    from .model import load_model

    model, _tok, _folder = load_model(recipe, plan.arch, plan.weights_dir, device=plan.device, dtype=plan.dtype)
    if keep_at > 0:
        state = journal.stages[keep_at - 1].get("state")
        if state is None or not (plan.staging() / state).exists():
            raise SpecError(f"the model before stages[{keep_at}] (the distillation teacher) was not saved by the "
                            "stopped run", path=f"stages[{keep_at}]",
                            hint=f"delete {plan.staging()} to start the run again")
        mto.restore(model, str(plan.staging() / state))
    return frozen_copy(model)


def _save_state(model: Any, plan: RunPlan, index: int, label: str, n_stages: int) -> Path | None:
    """The model after stage ``index`` on disk, for a resumed run: the stage's own ``modelopt_model.pth``
    when it wrote one, else (when a stage follows) ``mto.save`` into the staging folder's ``.resume/``."""
    import modelopt.torch.opt as mto

    own = plan.stage_dir(index, label) / "modelopt_model.pth"
    if own.is_file():
        return own
    if index + 1 >= n_stages:
        return None
    state = plan.staging() / ".resume" / f"after-{index + 1:02d}.pth"
    state.parent.mkdir(parents=True, exist_ok=True)
    tmp = state.with_name(state.name + ".tmp")
    mto.save(model, str(tmp))
    tmp.replace(state)  # a kill during the save leaves no half file under the final name
    return state
