"""The Hugging Face backend's executor of each technique (named in the technique registry,
``plan/techniques``): one function per technique, taking the run's state, the stage and its plan."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs

from ...errors import SpecError
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
    task_items: list[Any] = attrs.Factory(list)
    """Each evaluation task's items, read once for the run (``runtime.tasks.items.read_items``)."""
    metrics: dict[str, float | None] = attrs.Factory(dict)
    timings: dict[str, float] = attrs.Factory(dict)
    tasks: dict[str, dict[str, Any]] = attrs.Factory(dict)
    """Evaluation tasks' results by name and phase (``runtime.tasks.run.record``)."""
    quantized: bool = False
    trained: bool = False
    """Whether a distill stage trained the model (it is measured after the stages, as a quantized one is)."""
    measured_after: bool = False
    teacher: Any = None
    """The model as it was before the first compression stage, kept for ``teacher: before_compression``."""

    @property
    def changed(self) -> bool:
        """Whether the stages changed the model's outputs (quantized or trained): it is measured after them."""
        return self.quantized or self.trained

    def teacher_for(self, stage: Distill, sp: StagePlan) -> Any:
        """The stage's teacher: the kept copy, a named checkpoint loaded now, or None (``teacher: none``)."""
        from . import distill as d

        if not stage.has_teacher:
            return None
        src = stage.teacher_source
        if src is None:
            if self.teacher is None:  # pragma: no cover - the backend keeps it when a stage needs it
                raise SpecError("the model before compression was not kept", path=f"{sp.path}.teacher")
            return self.teacher
        return d.load_teacher(src, self.plan, path=f"{sp.path}.teacher")

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
            record("after", evaluate_tasks(self.recipe.tasks, self.task_items, lm, self.tokenizer,
                                           seed=self.recipe.seed),
                   self.metrics, self.tasks)
            self.timings["tasks_after"] = time.perf_counter() - t
        self.measured_after = True


def _quantized(run: HFRun, sp: StagePlan, details: dict[str, Any], batches: list[Any]) -> StepResult:
    from . import quantize

    details["calibration_windows"] = sum(int(b.shape[0]) for b in batches)
    run.quantized = True
    outputs = _save(run, sp, details)
    return StepResult(details=details, outputs=outputs, effective_bits=quantize.effective_bits(run.model),
                      quantizer_summary=quantize.quantizer_summary(run.model))


def _save(run: HFRun, sp: StagePlan, details: dict[str, Any]) -> tuple[str, ...]:
    """The stage's model with its ModelOpt state (``mto.save``) when the plan's save decision says so
    (``plan/save.py``: the recipe's save, as on Megatron-Core); ``details["checkpoint"]`` says what and why."""
    if sp.save is None:
        return ()
    details["checkpoint"] = sp.save.to_dict()
    if not sp.save.save:
        return ()
    import modelopt.torch.opt as mto

    out = run.plan.stage_dir(sp.index, sp.label)
    out.mkdir(parents=True, exist_ok=True)
    mto.save(run.model, str(out / "modelopt_model.pth"))
    details["checkpoint"]["path"] = f"{out.name}/modelopt_model.pth"
    return (out.name,)


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
    from ..quant_grid import snap_to_grid
    from . import export as ex

    excluded = 0.0
    if run.changed and not run.measured_after:  # measured before the export changes nothing, for clarity
        t = time.perf_counter()
        run.evaluate_after()
        excluded = time.perf_counter() - t
    details: dict[str, Any] = {"format": stage.format}
    if sp.snap_to_grid:
        details["snapped_to_grid"] = snap_to_grid(run.model)  # the export writes what the trained model computes
    out = run.plan.staging() / stage.folder
    files = ex.export(run.model, run.tokenizer, out, fmt=stage.format, dtype=stage.dtype, path=sp.path)
    details.update(files=files, quant_config=ex.read_quant_config(out))
    return StepResult(details=details, outputs=(stage.folder,), excluded_seconds=excluded)


def distill(run: HFRun, stage: Distill, sp: StagePlan) -> StepResult:
    """Distillation (or, with ``teacher: none``, training on the LM loss) of the run's model in place."""
    from . import distill as d
    from . import evaluate

    teacher = run.teacher_for(stage, sp)
    excluded = 0.0
    measured: dict[str, Any] = {}

    def measure(key: str, label: str) -> None:  # held-out perplexity around the stage, timed apart from it
        nonlocal excluded
        if run.eval_batches is not None:
            t = time.perf_counter()
            measured[key] = evaluate.perplexity(run.model, run.eval_batches, device=run.plan.device, label=label,
                                                progress=run.plan.progress)
            excluded += time.perf_counter() - t

    measure("perplexity_before_stage", "evaluate before distill")
    run.model, details = d.train(run.model, teacher, stage, calibration=run.recipe.calibration,
                                 tokenizer=run.tokenizer, device=run.plan.device, seed=run.recipe.seed,
                                 path=sp.path, progress=run.plan.progress)
    details["teacher"] = _teacher_label(stage)
    run.trained = True
    run.measured_after = False
    measure("perplexity_after_stage", "evaluate after distill")
    details.update(measured)
    outputs = _save(run, sp, details)
    return StepResult(details=details, outputs=outputs, excluded_seconds=excluded)


def _teacher_label(stage: Distill) -> str:
    src = stage.teacher_source
    if src is None:
        return str(stage.teacher)
    return f"{src.type}:{getattr(src, 'path', 'builtin')}"
