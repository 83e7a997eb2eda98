"""The Megatron-Core backend of ``run_post_training``: ``check(recipe, plan)`` and ``run(recipe, plan)``.

``run`` checks first (names, versions, layouts, pattern coverage; nothing is built before that passes),
then: distributed setup for the first stage's layout, model from the architecture, weights, calibration
windows, and the stages in order. Between stages whose layouts differ (a TP=2 quantization followed by a
pipeline-only export) the model is saved as a Megatron distributed checkpoint with its ModelOpt state,
the parallel groups are rebuilt and the model is re-loaded resharded. Everything is written under
``plan.staging_dir``; the caller renames it to the output folder when ``run`` returns.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs

from ...errors import CompatibilityError, SpecError
from ...spec.recipe import Builtin, HFCheckpoint, MegatronCheckpoint, RandomInit, Recipe
from ...spec.techniques import AutoQuantize, Export, Prune, Quantize
from ..evaluate import add_change
from ..result import PostTrainingResult, StageResult, peak_memory, reset_peak_memory


def check(recipe: Recipe, plan: Any = None, *, layout: Any = None) -> Any:
    """Raise the first problem :func:`plan.check.check_recipe` finds for this backend; return the report.

    ``run_post_training`` already checked the recipe for this backend: its report rides on the plan.
    """
    if layout is None and getattr(plan, "report", None) is not None and plan.report.backend == "megatron":
        return plan.report
    from ...plan.check import Environment, check_recipe

    env = Environment.detect()
    if plan is not None and getattr(plan, "device", None) == "cuda" and not env.cuda:
        env = attrs.evolve(env, cuda=True)
    report = check_recipe(recipe, env=env, backend="megatron", layout=layout)
    report.raise_first()
    return report


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


def run(recipe: Recipe, plan: Any, *, layout: Any = None) -> PostTrainingResult:
    from ...plan.check import recipe_layout
    from .. import data, distributed
    from . import build, stages

    t_start = time.perf_counter()
    report = check(recipe, plan, layout=layout)
    layout = layout if layout is not None else recipe_layout(recipe)
    dtype = plan.dtype
    device = plan.device
    spec = build.spec_for_run(recipe, te_available=build.has_transformer_engine())
    distributed.init_process_group(device=device)
    timings: dict[str, float] = {}
    staging = Path(plan.staging_dir)
    if distributed.is_main():
        staging.mkdir(parents=True, exist_ok=True)
    distributed.barrier()

    archs = recipe.archs_per_stage()
    arch = archs[0]
    current = _first_layout(report, layout)
    distributed.set_layout(current, seed=recipe.seed, device=device)

    # ---- model and weights
    t = time.perf_counter()
    model = build.build_model(arch, current, dtype=dtype, device=device, spec=spec)
    src = recipe.source
    hf_ref = _hf_reference(recipe)
    if isinstance(src, HFCheckpoint) or (isinstance(src, Builtin) and hf_ref):
        build.import_hf(model, hf_ref, dtype=dtype, workspace=str(staging / ".import"))
    elif isinstance(src, MegatronCheckpoint):
        model = build.load_checkpoint(model, src.path)
    elif isinstance(src, Builtin):
        raise SpecError("the built-in reference weights are not installed", path="source")
    else:
        assert isinstance(src, RandomInit)
    timings["load"] = time.perf_counter() - t

    tokenizer = data.load_tokenizer(
        hf_ref, path="source.hf_reference" if isinstance(src, MegatronCheckpoint) else "source.path")
    calib = data.token_windows(recipe.calibration, tokenizer)
    eval_batches = None
    metrics: dict[str, float | None] = {}
    if recipe.evaluation is not None:
        ev = data.token_windows(recipe.evaluation, tokenizer, path="evaluation")
        eval_batches = data.batches(ev, recipe.evaluation.batch_size)
        t = time.perf_counter()
        metrics["perplexity_before"] = stages.perplexity(model, eval_batches, progress=plan.progress)
        timings["evaluate_before"] = time.perf_counter() - t

    results: list[StageResult] = []
    quantized = changed = False
    for i, stage in enumerate(recipe.stages):
        stage_arch = archs[i]
        want_layout = report.stages[i].layout
        if want_layout is not None:
            if want_layout != current:
                model = _relayout(model, stage_arch, current, want_layout, staging / f".relayout-{i}", dtype=dtype,
                                  device=device, spec=spec, seed=recipe.seed)
                current = want_layout
        out_dir = plan.stage_dir(i, stage.label)
        reset_peak_memory(device)
        t = time.perf_counter()
        details: dict[str, Any] = {"layout": current.short() if hasattr(current, "short") else str(current)}
        outputs: list[str] = []
        params_after = stage_arch.params_total
        bits = None
        if isinstance(stage, Quantize):
            cfg = stages.quantize(model, stage, data.stage_batches(stage, recipe.calibration, tokenizer, calib),
                                  progress=plan.progress, path=f"stages[{i}]")
            details["algorithm"] = cfg.get("algorithm")
            fmt = stage.quant_format
            bits = fmt.weight_bits if fmt is not None else None
            quantized = True
        elif isinstance(stage, AutoQuantize):
            best = stages.auto_quantize(model, stage, data.stage_batches(stage, recipe.calibration, tokenizer, calib),
                                        progress=plan.progress, path=f"stages[{i}]")
            details.update(best)
            bits = best.get("effective_bits")
            quantized = True
        elif isinstance(stage, Prune):
            score = None
            if stage.is_search and eval_batches is not None:
                eb = eval_batches

                def score(m: Any) -> float:
                    return -stages.perplexity(m, eb, progress=False)
            model, new_arch = stages.prune(model, stage, stage_arch,
                                           data.stage_batches(stage, recipe.calibration, tokenizer, calib),
                                           progress=plan.progress, score_func=score)
            params_after = new_arch.params_total
            changed = True
            details["pruned_arch"] = {"num_layers": new_arch.num_layers, "hidden_size": new_arch.hidden_size,
                                      "ffn_hidden_size": new_arch.ffn_hidden_size,
                                      "num_attention_heads": new_arch.attention.num_heads}
            if new_arch.moe is not None:
                details["pruned_arch"].update(num_moe_experts=new_arch.moe.num_experts,
                                              moe_ffn_hidden_size=new_arch.moe.ffn_hidden_size)
            details["layer_spec"] = spec
            if i + 1 < len(archs):
                archs = (*archs[: i + 1], *(new_arch for _ in archs[i + 1:]))
        elif isinstance(stage, Export):
            if hf_ref is None:
                raise CompatibilityError("export needs the source Hugging Face directory (config and tokenizer)",
                                         path="source", hint="use an hf source, or megatron with hf_reference")
            if distributed.is_main():
                out_dir.mkdir(parents=True, exist_ok=True)
            distributed.barrier()
            stages.export_hf(model, hf_ref, str(out_dir), dtype=stage.dtype,
                             vllm_fakequant=stage.format == "vllm_fakequant",
                             moe_router_dtype=stage_arch.moe.router_dtype if stage_arch.moe else None)
            if changed and distributed.is_main():  # pruned: the exporter leaves MoE sizes at the source's
                fixed = stages.sync_exported_config(out_dir, stage_arch)
                if fixed:
                    details["config_synced"] = {k: list(v) for k, v in fixed.items()}
            distributed.barrier()
            outputs.append(str(out_dir.relative_to(staging)))
        if isinstance(stage, Quantize | AutoQuantize | Prune):
            ckpt = build.save_checkpoint(model, out_dir / "checkpoint", arch=archs[min(i + 1, len(archs) - 1)]
                                         if isinstance(stage, Prune) else stage_arch, spec=spec)
            outputs.append(str(ckpt.relative_to(staging)))
        seconds = time.perf_counter() - t
        summary = stages.quantizer_summary(model) if quantized else {}
        results.append(StageResult(
            name=stage.label, technique=stage.technique, seconds=seconds, peak_memory_bytes=peak_memory(device),
            params_before=stage_arch.params_total, params_after=params_after, effective_bits=bits,
            quantizer_summary=summary, outputs=tuple(outputs), details=details,
        ))

    if eval_batches is not None and (quantized or changed):
        t = time.perf_counter()
        metrics["perplexity_after"] = stages.perplexity(model, eval_batches, progress=plan.progress)
        timings["evaluate_after"] = time.perf_counter() - t
        add_change(metrics)
    distributed.barrier()
    return PostTrainingResult(
        recipe_name=recipe.label, recipe_hash=recipe.content_hash(), backend="megatron", device=device,
        output_dir=str(plan.output_dir), stages=tuple(results), metrics=metrics,
        seconds=time.perf_counter() - t_start, timings=timings, calibration_hash=data.data_hash(calib),
    )


def _first_layout(report: Any, layout: Any) -> Any:
    first = report.stages[0].layout if report.stages else None
    return first if first is not None else layout


def _relayout(model: Any, arch: Any, old: Any, new: Any, tmp: Path, *, dtype: str, device: str, spec: str,
              seed: int) -> Any:
    """Move the model to another layout: dist checkpoint (with ModelOpt state) out, groups rebuilt, back in."""
    import gc

    import torch

    from .. import distributed
    from . import build

    build.save_checkpoint(model, tmp, arch=arch)
    del model
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
