"""The Hugging Face backend's executor of each technique (named in the technique registry,
``plan/techniques``): one function per technique, taking the run's state, the stage and its plan."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs

from ...errors import CompatibilityError, SpecError
from ..result import StepResult

if TYPE_CHECKING:
    from ...plan.run_plan import RunPlan, StagePlan
    from ...spec.recipe import Recipe
    from ...spec.techniques import AutoQuantize, Distill, Export, Quantize


@attrs.define(kw_only=True)
class HFRun:
    """What the stages of one Hugging Face run share: the model, its tokenizer, the data, the measurements."""

    recipe: Recipe
    plan: RunPlan
    model: Any
    tokenizer: Any
    windows: Any
    """The recipe's calibration windows (token ids)."""
    eval_batches: list[Any] | None = None
    metrics: dict[str, float | None] = attrs.Factory(dict)
    timings: dict[str, float] = attrs.Factory(dict)
    tasks: dict[str, dict[str, Any]] = attrs.Factory(dict)
    """Evaluation tasks' results by name and phase (``runtime.tasks.run.record``)."""
    quantized: bool = False
    measured_after: bool = False

    def calibration_batches(self, sp: StagePlan) -> list[Any]:
        from ..data import stage_batches

        return stage_batches(sp.calibration, self.recipe.calibration, self.tokenizer, self.windows)

    def evaluate_after(self) -> None:
        """Perplexity and evaluation tasks of the quantized model, once (timed apart from the stages)."""
        from ..tasks.run import evaluate_tasks, record
        from . import evaluate

        if self.eval_batches is not None:
            t = time.perf_counter()
            self.metrics["perplexity_after"] = evaluate.perplexity(
                self.model, self.eval_batches, device=self.plan.device, label="evaluate quantized",
                progress=self.plan.progress)
            self.timings["evaluate_after"] = time.perf_counter() - t
        if self.recipe.tasks:
            t = time.perf_counter()
            lm = evaluate.HFTaskModel(self.model, device=self.plan.device, progress=self.plan.progress)
            record("after", evaluate_tasks(self.recipe.tasks, lm, self.tokenizer, seed=self.recipe.seed),
                   self.metrics, self.tasks)
            self.timings["tasks_after"] = time.perf_counter() - t
        self.measured_after = True


def _quantized(run: HFRun, sp: StagePlan, details: dict[str, Any], batches: list[Any]) -> StepResult:
    from . import quantize

    details["calibration_windows"] = sum(int(b.shape[0]) for b in batches)
    run.quantized = True
    outputs: tuple[str, ...] = ()
    if sp.save is not None:  # plan/save.py: the recipe's save, as on Megatron-Core
        details["checkpoint"] = sp.save.to_dict()
    if sp.save is not None and sp.save.save:  # the fake-quantized model with its ModelOpt state
        import modelopt.torch.opt as mto

        out = run.plan.stage_dir(sp.index, sp.label)
        out.mkdir(parents=True, exist_ok=True)
        mto.save(run.model, str(out / "modelopt_model.pth"))
        outputs = (out.name,)
        details["checkpoint"]["path"] = f"{out.name}/modelopt_model.pth"
    return StepResult(details=details, outputs=outputs, effective_bits=quantize.effective_bits(run.model),
                      quantizer_summary=quantize.quantizer_summary(run.model))


def quantize(run: HFRun, stage: Quantize, sp: StagePlan) -> StepResult:
    from . import quantize as q

    if sp.quant_config is None or sp.config_source is None:
        raise SpecError("the plan has no ModelOpt config for this stage: it failed its check", path=sp.path)
    batches = run.calibration_batches(sp)
    details = q.quantize(run.model, stage, batches, config=sp.quant_config.config, source=sp.config_source,
                         device=run.plan.device, progress=run.plan.progress)
    return _quantized(run, sp, details, batches)


def auto_quantize(run: HFRun, stage: AutoQuantize, sp: StagePlan) -> StepResult:
    from . import quantize as q

    batches = run.calibration_batches(sp)
    details = q.auto_quantize(run.model, stage, batches, path=sp.path, device=run.plan.device,
                              batch_size=run.recipe.calibration.batch_size, progress=run.plan.progress)
    return _quantized(run, sp, details, batches)


def export(run: HFRun, stage: Export, sp: StagePlan) -> StepResult:
    from . import export as ex

    excluded = 0.0
    if run.quantized and not run.measured_after:  # measured before the export changes nothing, for clarity
        t = time.perf_counter()
        run.evaluate_after()
        excluded = time.perf_counter() - t
    out = run.plan.staging() / stage.folder
    files = ex.export(run.model, run.tokenizer, out, fmt=stage.format, dtype=stage.dtype, path=sp.path)
    return StepResult(details={"format": stage.format, "files": files, "quant_config": ex.read_quant_config(out)},
                      outputs=(stage.folder,), excluded_seconds=excluded)


def distill(run: HFRun, stage: Distill, sp: StagePlan) -> StepResult:
    """Distillation on the Hugging Face backend: not built yet."""
    raise CompatibilityError("distillation on the Hugging Face backend is not built yet", path=sp.path)
