"""The Hugging Face backend of ``run_post_training``: ``check(recipe, plan)`` and ``run(recipe, plan)``.

One process, one device. Load (shipped weights, a local HF checkpoint, or random init from the
registry architecture), measure held-out perplexity, run the stages (quantize or auto-quantize with
ModelOpt, then export), measure again on the fake-quantized model and on the re-loaded export.
Everything is written under ``plan.staging_dir``.
"""

from __future__ import annotations

import time

from ...plan.run_plan import RunPlan
from ...spec.recipe import RandomInit, Recipe
from ..evaluate import add_change
from ..result import PostTrainingResult, StageResult, peak_memory, reset_peak_memory

# perplexity of an unmodified model on the same windows, kept for the process (several recipes, one model)
_BASELINES: dict[tuple[str, ...], float] = {}


def check(recipe: Recipe, plan: RunPlan) -> None:
    """What only this backend can tell (it needs transformers); everything else was checked by the plan."""
    if isinstance(recipe.source, RandomInit):
        from .model import hf_config_for

        hf_config_for(plan.arch)  # CompatibilityError when transformers has no class for this architecture


def run(recipe: Recipe, plan: RunPlan) -> PostTrainingResult:
    import torch

    from ...plan.techniques import technique_for
    from ..data import batches, data_hash, token_windows
    from . import evaluate, export
    from .model import count_params, load_model
    from .steps import HFRun

    t_run = time.perf_counter()
    torch.manual_seed(recipe.seed)
    timings: dict[str, float] = {}
    device, progress = plan.device, plan.progress
    staging = plan.staging()

    t = time.perf_counter()
    model, tokenizer, folder = load_model(recipe, plan.arch, plan.weights_dir, device=device, dtype=plan.dtype)
    timings["load"] = time.perf_counter() - t

    cal = recipe.calibration
    windows = token_windows(cal, tokenizer, path="calibration")
    cal_hash = data_hash(windows)
    eval_batches = None
    metrics: dict[str, float | None] = {}
    if recipe.evaluation is not None:
        ev = recipe.evaluation
        eval_windows = token_windows(ev, tokenizer, path="evaluation")
        eval_batches = batches(eval_windows, ev.batch_size)
        key = (str(folder or f"random:{getattr(recipe.source, 'seed', 0)}:{plan.arch.name}"), data_hash(eval_windows),
               plan.dtype, device)
        t = time.perf_counter()
        if key not in _BASELINES:
            _BASELINES[key] = evaluate.perplexity(model, eval_batches, device=device, label="evaluate original",
                                                  progress=progress)
        metrics["perplexity_before"] = _BASELINES[key]
        metrics["eval_tokens"] = float(eval_windows.shape[0] * (eval_windows.shape[1] - 1))
        timings["evaluate_before"] = time.perf_counter() - t

    run = HFRun(recipe=recipe, plan=plan, model=model, tokenizer=tokenizer, windows=windows,
                eval_batches=eval_batches, metrics=metrics, timings=timings)
    stages: list[StageResult] = []
    for sp in plan.stages:
        stage = sp.stage
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

    if eval_batches is not None and run.quantized and "perplexity_after" not in metrics:
        run.evaluate_after()
    exp = recipe.export
    if eval_batches is not None and exp is not None and exp.format == "hf":
        t = time.perf_counter()
        reloaded, counts = export.load_export(staging / exp.folder, device=device)
        timings["reload_export"] = time.perf_counter() - t
        t = time.perf_counter()
        metrics["perplexity_export"] = evaluate.perplexity(reloaded, eval_batches, device=device,
                                                           label="evaluate re-loaded export", progress=progress)
        timings["evaluate_export"] = time.perf_counter() - t
        stages[-1].details["reloaded_layers"] = counts
    add_change(metrics)

    from ...spec.serde import content_hash

    return PostTrainingResult(
        recipe_name=recipe.label, recipe_hash=content_hash(recipe), backend="hf", device=device,
        output_dir=str(staging), stages=tuple(stages), metrics=metrics, seconds=time.perf_counter() - t_run,
        timings=timings, calibration_hash=cal_hash,
    )
