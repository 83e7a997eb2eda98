"""The plan of one run: one frozen, typed object that ``check`` prints and the backends execute.

``check_recipe`` (:mod:`.check`) makes it; ``run_post_training`` adds the folders and hands it to a
backend, which only executes it: the backend, device, dtype and world come from here, and per stage its
layout, composed ModelOpt config and calibration windows. Nothing downstream re-checks or re-derives them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import RecipeError, SpecError
from ..spec.layout import ParallelLayout

if TYPE_CHECKING:
    from ..bridges.modelopt_names import ComposedConfig
    from ..spec.arch import ModelArch
    from ..spec.techniques import Stage
    from .backend_choice import BackendName, Device, Dtype
    from .coverage import Coverage
    from .environment import Environment
    from .save import SaveDecision


@attrs.frozen(kw_only=True)
class CalibrationWindows:
    """The calibration text a stage sees: the recipe's windows, or its own count / length."""

    num_samples: int
    seq_length: int
    batch_size: int


@attrs.frozen(kw_only=True)
class StagePlan:
    """One stage as it will run."""

    index: int
    label: str
    technique: str
    """The technique's one name (``quantize``, ``auto_quantize``, ``prune``, ``export``)."""
    stage: Stage
    """The stage's spec."""
    arch: ModelArch
    """The architecture the stage starts from."""
    layout: ParallelLayout | None = None
    """The layout the stage runs with on the Megatron-Core backend (None on Hugging Face or when invalid)."""
    coverage: Coverage | None = None
    config_source: str | None = None
    """The ModelOpt preset or recipe the stage uses."""
    quant_config: ComposedConfig | None = None
    """The ModelOpt config a Quantize stage gives ``mtq.quantize`` (composed once, by the plan)."""
    calibration: CalibrationWindows | None = None
    """The stage's calibration windows (None: the stage reads no calibration data)."""
    save: SaveDecision | None = None
    """Whether the stage writes its model as a checkpoint, and why (``plan/save.py``; None: the stage leaves the
    model as it is, as export does)."""
    memory: dict[str, Any] | None = None
    """The stage's per-rank memory plan (``plan.memory``'s summary; distillation on Megatron-Core), or None."""
    snap_to_grid: bool = False
    """An HF export after quantization-aware training: the trained weights go onto their quantizers' grid first
    (``plan.techniques.distill.trained_while_quantized``; ``runtime.quant_grid`` says why)."""
    trained_while_quantized: bool = False
    """After this stage the weights were trained while quantized and not calibrated since: a checkpoint the stage
    saves records it, so a later run's export snaps them (``plan.sources.trained_source``)."""

    @property
    def path(self) -> str:
        return f"stages[{self.index}]"

    def to_dict(self) -> dict[str, Any]:
        from ..spec.serde import to_dict

        return {
            "index": self.index,
            "label": self.label,
            "technique": self.technique,
            "layout": to_dict(self.layout) if self.layout is not None else None,
            "config": self.config_source,
            "coverage": self.coverage.to_dict() if self.coverage is not None else None,
            "save": self.save.to_dict() if self.save is not None else None,
            "memory": self.memory,
            "snap_to_grid": self.snap_to_grid,
        }


@attrs.frozen(kw_only=True)
class RunPlan:
    """A recipe resolved against this machine: every problem found, and what each stage will do."""

    label: str
    """The recipe's label (its name, or its stages)."""
    backend: BackendName
    device: Device
    dtype: Dtype
    environment: Environment
    stages: tuple[StagePlan, ...] = ()
    errors: tuple[RecipeError, ...] = ()
    warnings: tuple[str, ...] = ()
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    """From the launcher (torchrun, then Slurm), read in one place: :func:`.resolve.launch_world`."""
    weights_dir: Path | None = None
    """The Hugging Face folder the run loads weights from (the source's, or the shipped weights); None for
    random init or a Megatron checkpoint."""
    source_dir: Path | None = None
    """The source checkpoint's folder, ``~`` expanded (``plan.sources.source_dir``; None for other sources)."""
    hf_reference: str | None = None
    """The Hugging Face folder (or Hub id) a Megatron-Core run imports, tokenizes and exports with, ``~`` expanded
    (``plan.sources.hf_reference``)."""
    source_quantized: bool = False
    """The source arrives quantized, its quantizers restored with it (``plan.sources.quantized_source``)."""
    output_dir: Path | None = None
    """Where the outputs end up (absent until the run succeeds); set by ``run_post_training``."""
    staging_dir: Path | None = None
    """Where the backend writes; a sibling of ``output_dir``, renamed to it on success."""
    progress: bool = True
    """Show progress bars (rich) while calibrating and evaluating."""

    # ----------------------------------------------------------------- the check's view
    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def recipe(self) -> str:
        """The recipe's label (the name ``CheckReport`` had for it)."""
        return self.label

    @property
    def coverage(self) -> dict[str, Any]:
        return {f"stages[{s.index}]": s.coverage.to_dict() for s in self.stages if s.coverage is not None}

    def raise_first(self) -> None:
        if self.errors:
            raise self.errors[0]

    def to_dict(self) -> dict[str, Any]:
        from ..spec.serde import to_dict

        return {
            "ok": self.ok,
            "recipe": self.label,
            "backend": self.backend,
            "errors": [e.to_dict() for e in self.errors],
            "warnings": list(self.warnings),
            "coverage": self.coverage,
            "stages": [s.to_dict() for s in self.stages],
            "environment": to_dict(self.environment),
        }

    # ----------------------------------------------------------------- the run's view
    @property
    def arch(self) -> ModelArch:
        """The architecture the run starts from."""
        return self.stage_archs[0]

    @property
    def stage_archs(self) -> tuple[ModelArch, ...]:
        """The architecture each stage starts from (a prune stage changes it for later stages)."""
        if not self.stages:
            raise SpecError("the plan has no stages: it failed its check", path="model")
        return tuple(s.arch for s in self.stages)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the outputs."""
        return self.rank == 0

    def staging(self) -> Path:
        """The staging folder (a plan made by ``run_post_training`` has one)."""
        if self.staging_dir is None:
            raise SpecError("this plan has no output folder (run_post_training's planning sets it)",
                            path="output_dir")
        return self.staging_dir

    def stage_dir(self, index: int, label: str) -> Path:
        """A stage's own output folder inside the staging folder (``01-quantize-fp8``)."""
        return self.staging() / f"{index + 1:02d}-{label}"
