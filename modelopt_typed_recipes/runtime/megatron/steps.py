"""The Megatron-Core backend's executor of each technique (named in the technique registry,
``plan/techniques``): one function per technique, taking the run's state, the stage and its plan.

The ModelOpt calls themselves are in :mod:`.stages`; these functions feed them the plan's inputs (its
composed config, its calibration windows) and record what the stage did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from ...errors import CompatibilityError, SpecError
from ..result import StepResult

if TYPE_CHECKING:
    from pathlib import Path

    from ...plan.run_plan import RunPlan, StagePlan
    from ...spec.arch import ModelArch
    from ...spec.layout import ParallelLayout
    from ...spec.recipe import Recipe
    from ...spec.techniques import AutoQuantize, Distill, Export, Prune, Quantize


@attrs.define(kw_only=True)
class MegatronRun:
    """What the stages of one Megatron-Core run share: the model, its layout, the data, the flags."""

    recipe: Recipe
    plan: RunPlan
    model: Any
    layout: ParallelLayout
    """The layout the model is built with now."""
    spec: str
    """The layer spec (``local``, ``modelopt``, ``te``)."""
    tokenizer: Any
    windows: Any
    """The recipe's calibration windows (token ids)."""
    hf_reference: str | None
    """The Hugging Face folder with the source's config and tokenizer (export needs it)."""
    archs: list[ModelArch]
    """The architecture each stage starts from (a prune stage replaces the later ones with its result)."""
    eval_batches: list[Any] | None = None
    quantized: bool = False
    """A stage of this run quantized the model (the measurements after are then worth taking)."""
    changed: bool = False
    teacher: Any = None
    """The model as it was before the first compression stage, kept when a later distill stage learns from it."""
    teacher_info: dict[str, Any] = attrs.field(factory=dict)
    """What keeping it cost (bytes on each rank, seconds), for the distill stage's details."""
    teacher_layout: ParallelLayout | None = None

    def keep_teacher(self, sp: StagePlan) -> None:
        """Keep a copy of the model as it is now (before stage ``sp``, the first compression stage)."""
        import time

        from . import distill as md

        t = time.perf_counter()
        self.teacher = md.copy_model(self.model, self.archs[sp.index], self.layout, dtype=self.plan.dtype,
                                     device=self.plan.device, spec=self.spec,
                                     deterministic=self.recipe.deterministic)
        self.teacher_layout = self.layout
        self.teacher_info = {"teacher": "before_compression", "kept_before": sp.label,
                             "bytes_per_rank": md.model_bytes(self.teacher), "where": self.plan.device,
                             "copy_seconds": round(time.perf_counter() - t, 3)}

    def calibration_batches(self, sp: StagePlan, *, place: tuple[int, int] = (0, 1)) -> list[Any]:
        """The stage's calibration batches; ``place``: (this replica, replicas) from :func:`data_parallel_place`
        to read only this data-parallel replica's share of the windows (``data.data_parallel_share``; for
        ``mtq.quantize`` and ``mtq.auto_quantize``, which max-reduce their amax and sum their scores across the
        replicas); the default reads every window."""
        from ..data import stage_batches

        replica, replicas = place
        return stage_batches(sp.calibration, self.recipe.calibration, self.tokenizer, self.windows,
                             replica=replica, replicas=replicas)

    def out_dir(self, sp: StagePlan) -> Path:
        return self.plan.stage_dir(sp.index, sp.label)

    def save_checkpoint(self, sp: StagePlan, arch: ModelArch) -> tuple[tuple[str, ...], dict[str, Any]]:
        """The stage's model as a Megatron distributed checkpoint (with its ModelOpt state) when the plan's
        save decision says so (``plan/save.py``); returns (outputs, details saying what was written and why)."""
        import time

        from . import build

        if sp.save is None:
            return (), {}
        info: dict[str, Any] = sp.save.to_dict()
        if not sp.save.save:
            return (), {"checkpoint": info}
        t = time.perf_counter()  # a later run that exports the checkpoint snaps weights trained while quantized
        ckpt = build.save_checkpoint(self.model, self.out_dir(sp) / "checkpoint", arch=arch, spec=self.spec,
                                     trained_while_quantized=sp.trained_while_quantized)
        info.update(path=str(ckpt.relative_to(self.plan.staging())), seconds=time.perf_counter() - t)
        return (info["path"],), {"checkpoint": info}


def data_parallel_place() -> tuple[int, int]:
    """(this rank's data-parallel replica, the number of replicas); (0, 1) before Megatron-Core's groups exist."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0, 1
    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


def quantize(run: MegatronRun, stage: Quantize, sp: StagePlan) -> StepResult:
    from . import stages

    if sp.quant_config is None:
        raise SpecError("the plan has no ModelOpt config for this stage: it failed its check", path=sp.path)
    place = data_parallel_place()
    batches = run.calibration_batches(sp, place=place)
    cfg = stages.quantize(run.model, stage, batches, config=sp.quant_config.config, progress=run.plan.progress)
    fmt = stage.quant_format
    run.quantized = True
    outputs, saved = run.save_checkpoint(sp, run.archs[sp.index])
    return StepResult(details={"algorithm": cfg.get("algorithm"),
                               "calibration_windows": calibration_windows(batches, place), **saved},
                      effective_bits=fmt.weight_bits if fmt else None, outputs=outputs)


def calibration_windows(batches: list[Any], place: tuple[int, int]) -> dict[str, int]:
    """What a stage's details say of its calibration: the windows this replica ran, and how many replicas shared
    them (the others ran theirs); ``place`` as the batches were read with."""
    return {"this_replica": sum(int(b.shape[0]) for b in batches), "data_parallel": place[1]}


def auto_quantize(run: MegatronRun, stage: AutoQuantize, sp: StagePlan) -> StepResult:
    from . import stages

    place = data_parallel_place()  # read once: the windows dealt, the score steps and the details agree
    batches = run.calibration_batches(sp, place=place)
    best = stages.auto_quantize(run.model, stage, batches, replicas=place[1],
                                progress=run.plan.progress, path=sp.path)
    run.quantized = True
    outputs, saved = run.save_checkpoint(sp, run.archs[sp.index])
    return StepResult(details={**best, "calibration_windows": calibration_windows(batches, place), **saved},
                      effective_bits=best.get("effective_bits"), outputs=outputs)


def prune(run: MegatronRun, stage: Prune, sp: StagePlan) -> StepResult:
    from . import stages

    score: Callable[[Any], float] | None = None
    if stage.is_search and run.eval_batches is not None:
        eb = run.eval_batches

        def score(m: Any) -> float:
            return -stages.perplexity(m, eb, progress=False)

    run.model, new_arch = stages.prune(run.model, stage, run.archs[sp.index], run.calibration_batches(sp),
                                       progress=run.plan.progress, score_func=score)
    run.changed = True
    pruned: dict[str, Any] = {"num_layers": new_arch.num_layers, "hidden_size": new_arch.hidden_size,
                              "ffn_hidden_size": new_arch.ffn_hidden_size,
                              "num_attention_heads": new_arch.attention.num_heads}
    if new_arch.moe is not None:
        pruned.update(num_moe_experts=new_arch.moe.num_experts, moe_ffn_hidden_size=new_arch.moe.ffn_hidden_size)
    run.archs[sp.index + 1:] = [new_arch] * (len(run.archs) - sp.index - 1)
    outputs, saved = run.save_checkpoint(sp, new_arch)
    return StepResult(details={"pruned_arch": pruned, "layer_spec": run.spec, **saved},
                      params_after=new_arch.params_total, outputs=outputs)


def _teacher_for(run: MegatronRun, stage: Distill, sp: StagePlan) -> tuple[Any, dict[str, Any]]:
    """The teacher of a distill stage: the copy kept before compression, a named checkpoint built for this
    layout, or None (train on the language-model loss)."""
    import time

    from . import build
    from . import distill as md

    if not stage.has_teacher:
        return None, {"teacher": "none"}
    if stage.teacher == "before_compression":
        if run.teacher is None:
            raise SpecError("no teacher was kept: teacher: before_compression needs a quantize or prune stage "
                            "before this one", path=f"{sp.path}.teacher")
        if run.teacher_layout != run.layout:
            raise CompatibilityError(
                f"the teacher was kept at {run.teacher_layout.short() if run.teacher_layout else '?'} and this stage "
                f"runs at {run.layout.short()}", path=f"{sp.path}.teacher",
                hint="run the stages from the compression stage to the distill stage with one layout")
        return run.teacher, dict(run.teacher_info)
    src = stage.teacher_source
    t = time.perf_counter()
    arch, load = _teacher_source(src, sp, dtype=run.plan.dtype)
    teacher = build.build_model(arch, run.layout, dtype=run.plan.dtype, device=run.plan.device, spec=run.spec,
                                deterministic=run.recipe.deterministic)
    teacher = load(teacher)
    teacher.requires_grad_(False)
    return teacher.eval(), {"teacher": type(src).__name__, "arch": arch.name, "bytes_per_rank": md.model_bytes(teacher),
                            "load_seconds": round(time.perf_counter() - t, 3)}


def _teacher_source(src: Any, sp: StagePlan, *, dtype: str) -> tuple[ModelArch, Callable[[Any], Any]]:
    """The architecture of a named teacher checkpoint and the function that loads its weights into a model."""
    from ...bridges.hf_config import load_hf_config
    from ...plan.outputs import user_path
    from ...plan.sources import read_recorded_arch
    from ...spec.recipe import Builtin, HFCheckpoint, MegatronCheckpoint
    from ..data import REFERENCE_DIR
    from . import build

    where = f"{sp.path}.teacher"
    if isinstance(src, Builtin | HFCheckpoint):  # ~ expanded as check expands it
        folder = str(REFERENCE_DIR) if isinstance(src, Builtin) else str(user_path(src.path, path=f"{where}.path"))
        def load_hf(m: Any) -> Any:
            build.import_hf(m, folder, dtype=dtype)
            return m

        return load_hf_config(folder), load_hf
    if isinstance(src, MegatronCheckpoint):
        ckpt = user_path(src.path, path=f"{where}.path")
        arch = read_recorded_arch(ckpt, f"{where}.path")  # as the check read it
        if arch is None and src.hf_reference is not None:
            arch = load_hf_config(user_path(src.hf_reference, path=f"{where}.hf_reference"))
        elif arch is None:
            raise SpecError(f"{src.path!r} does not say its architecture (no model_arch.yaml)", path=f"{where}.path",
                            hint="set teacher.hf_reference to the teacher's Hugging Face folder")
        return arch, lambda m: build.load_checkpoint(m, str(ckpt))
    raise SpecError(f"unknown teacher {src!r}", path=where)


def distill(run: MegatronRun, stage: Distill, sp: StagePlan) -> StepResult:
    from megatron.core import parallel_state

    from ..data import training_windows
    from . import distill as md
    from . import stages

    teacher, info = _teacher_for(run, stage, sp)
    dp = parallel_state.get_data_parallel_world_size()
    seq = stage.window_length(run.recipe.calibration.seq_length)
    steps = stage.total_steps(seq, dp)
    train = md.Training.of(stage, steps)
    windows, distinct = training_windows(stage, run.recipe.calibration, run.tokenizer,
                                         needed=steps * train.windows_per_step * dp, seed=run.recipe.seed,
                                         path=sp.path)
    details: dict[str, Any] = {"teacher": info, "qad": run.quantized or run.plan.source_quantized,
                               "after_prune": run.changed}
    if run.eval_batches is not None:
        details["perplexity_before_stage"] = stages.perplexity(run.model, run.eval_batches, progress=False)
    run.model, report = md.distill(run.model, teacher, windows, train, md.KDLoss.of(stage),
                                   progress=run.plan.progress)
    if teacher is not None and teacher is not run.teacher:
        del teacher
    if stage.teacher == "before_compression" and not _later_needs_kept_teacher(run, sp):
        run.teacher = None  # freed before the next stage (its memory is the model's size again)
    run.changed = True
    if run.eval_batches is not None:
        details["perplexity_after_stage"] = stages.perplexity(run.model, run.eval_batches, progress=False)
    curve = report.pop("curve")
    details.update(
        steps=report["steps"], tokens=report["tokens"], seq_length=seq, micro_batch_size=stage.micro_batch_size,
        gradient_accumulation_steps=stage.gradient_accumulation_steps, data_parallel=dp,
        training_windows=distinct, epochs=round(windows.shape[0] / distinct, 3),
        tokens_per_second=report["tokens_per_second"], train_seconds=report["seconds"],
        loss_first=report["loss_first"], loss_last=report["loss_last"],
        loss_curve=[round(r["loss"], 5) for r in curve[:: max(1, len(curve) // 50)]],
        lr_first=curve[0]["lr"] if curve else None, lr_last=curve[-1]["lr"] if curve else None,
        grad_norm_last=curve[-1]["grad_norm"] if curve else None, precision="bf16 weights, fp32 master weights"
        if run.plan.dtype == "bf16" else run.plan.dtype)
    outputs, saved = run.save_checkpoint(sp, run.archs[sp.index])
    return StepResult(details={**details, **saved}, outputs=outputs)


def _later_needs_kept_teacher(run: MegatronRun, sp: StagePlan) -> bool:
    return any(getattr(later.stage, "teacher", None) == "before_compression"
               for later in run.plan.stages[sp.index + 1:])


def export(run: MegatronRun, stage: Export, sp: StagePlan) -> StepResult:
    from ...spec.recipe import RandomInit
    from .. import distributed
    from ..data import ByteTokenizer
    from ..quant_grid import snap_to_grid
    from . import stages

    arch = run.archs[sp.index]
    details: dict[str, Any] = {}
    ref = run.hf_reference
    if ref is None and isinstance(run.recipe.source, RandomInit):  # the architecture and the tokenizer suffice
        ref = str(run.plan.staging() / ".hf-reference")
        if distributed.is_main():
            stages.write_hf_reference(ref, arch, run.tokenizer)
        which = "byte" if isinstance(run.tokenizer, ByteTokenizer) else "reference"
        details["hf_reference"] = f"written from the architecture with the {which} tokenizer (random weights)"
    elif ref is None:
        raise CompatibilityError("export needs the source Hugging Face directory (config and tokenizer)",
                                 path="source.hf_reference", hint="set source.hf_reference")
    out_dir = run.out_dir(sp)
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    if sp.snap_to_grid:
        # the export writes what the trained model computes; every rank snaps its part, the counts are the whole
        # model's (summed over the ranks, each weight once)
        details["snapped_to_grid"] = snap_to_grid(run.model, counts_here=distributed.counts_here)
    stages.export_hf(run.model, ref, str(out_dir), dtype=stage.dtype,
                     vllm_fakequant=stage.format == "vllm_fakequant",
                     moe_router_dtype=arch.moe.router_dtype if arch.moe else None)
    if ref != run.hf_reference and distributed.is_main():
        import shutil

        shutil.rmtree(ref, ignore_errors=True)  # a stand-in for the source folder, not an output
    if run.changed and distributed.is_main():  # pruned: the exporter leaves MoE sizes at the source's
        fixed = stages.sync_exported_config(out_dir, arch)
        if fixed:
            details["config_synced"] = {k: list(v) for k, v in fixed.items()}
    distributed.barrier()
    return StepResult(details=details, outputs=(str(out_dir.relative_to(run.plan.staging())),))

