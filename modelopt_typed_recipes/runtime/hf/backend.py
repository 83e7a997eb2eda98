"""The Hugging Face backend of ``run_post_training``: ``check(recipe, plan)`` and ``run(recipe, plan)``.

One process, one device. Load (shipped weights, a local HF checkpoint, or random init from the
registry architecture), measure held-out perplexity, run the stages (quantize or auto-quantize with
ModelOpt, then export), measure again on the fake-quantized model and on the re-loaded export.
Everything is written under ``plan.staging_dir``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ...errors import CompatibilityError
from ...spec.recipe import RandomInit, Recipe
from ...spec.techniques import AutoQuantize, Export, Prune, Quantize
from ..backend import RunPlan
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

    from ..data import batches, data_hash, stage_batches, token_windows
    from . import evaluate, export, quantize
    from .model import count_params, load_model

    t_run = time.perf_counter()
    torch.manual_seed(recipe.seed)
    timings: dict[str, float] = {}
    device, progress = plan.device, plan.progress
    staging = Path(plan.staging_dir)

    t = time.perf_counter()
    model, tokenizer, folder = load_model(recipe, plan.arch, device=device, dtype=plan.dtype)
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

    stages: list[StageResult] = []
    quantized = False
    for i, stage in enumerate(recipe.stages):
        path = f"stages[{i}]"
        reset_peak_memory(device)
        t = time.perf_counter()
        before = count_params(model)
        outputs: list[str] = []
        details: dict[str, Any] = {}
        summary: dict[str, int] = {}
        bits = None
        if isinstance(stage, Quantize | AutoQuantize):
            cal_batches = stage_batches(stage, cal, tokenizer, windows)
            if isinstance(stage, Quantize):
                details = quantize.quantize(model, stage, cal_batches, path=path, device=device, progress=progress)
            else:
                details = quantize.auto_quantize(model, stage, cal_batches, path=path, device=device,
                                                 batch_size=cal.batch_size, progress=progress)
            details["calibration_windows"] = sum(int(b.shape[0]) for b in cal_batches)
            summary = quantize.quantizer_summary(model)
            bits = quantize.effective_bits(model)
            quantized = True
            if recipe.export is None:  # no export follows: keep the fake-quantized model with its ModelOpt state
                import modelopt.torch.opt as mto

                out = plan.stage_dir(i, stage.label)
                out.mkdir(parents=True, exist_ok=True)
                mto.save(model, str(out / "modelopt_model.pth"))
                outputs.append(out.name)
        elif isinstance(stage, Export):
            if eval_batches is not None and quantized:
                t_eval = time.perf_counter()
                metrics["perplexity_after"] = evaluate.perplexity(model, eval_batches, device=device,
                                                                  label="evaluate quantized", progress=progress)
                timings["evaluate_after"] = time.perf_counter() - t_eval
                t += time.perf_counter() - t_eval  # the stage's own time excludes the measurement
            out = staging / stage.folder
            files = export.export(model, tokenizer, out, fmt=stage.format, dtype=stage.dtype, path=path)
            outputs.append(stage.folder)
            details = {"format": stage.format, "files": files, "quant_config": export.read_quant_config(out)}
        else:  # Prune: refused by check()
            raise CompatibilityError("Minitron pruning runs on the Megatron-Core backend only", path=path)
        seconds = time.perf_counter() - t
        stages.append(StageResult(
            name=stage.label, technique=stage.technique, seconds=seconds, peak_memory_bytes=peak_memory(device),
            params_before=before, params_after=count_params(model), effective_bits=bits,
            quantizer_summary=summary, outputs=tuple(outputs), details=details,
        ))

    if eval_batches is not None and quantized and "perplexity_after" not in metrics:
        t = time.perf_counter()
        metrics["perplexity_after"] = evaluate.perplexity(model, eval_batches, device=device,
                                                          label="evaluate quantized", progress=progress)
        timings["evaluate_after"] = time.perf_counter() - t
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
