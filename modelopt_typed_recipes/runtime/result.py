"""What a run returns: per-stage facts, output paths and metrics, as frozen data with ``to_json``.

Both backends build these; ``run_post_training`` moves the outputs into place and returns them. Paths
inside are relative to ``output_dir`` so a result stays true after the staging folder is renamed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import attrs

Status = Literal["ok", "skipped", "failed"]


@attrs.frozen(kw_only=True)
class StageResult:
    """One stage as it ran."""

    name: str
    """The stage's label (``quantize-fp8``, ``export-hf``)."""
    technique: str
    seconds: float
    status: Status = "ok"
    peak_memory_bytes: int | None = None
    """Peak accelerator memory during the stage, on the most loaded rank (CPU runs: peak resident memory)."""
    params_before: int | None = None
    params_after: int | None = None
    effective_bits: float | None = None
    """Mean bits per weight of the quantized linear layers (None: not quantized)."""
    quantizer_summary: dict[str, int] = attrs.field(factory=dict)
    """Counts of enabled quantizers by kind (``weight``, ``input``, ``output``, ``kv``)."""
    outputs: tuple[str, ...] = ()
    """Folders or files written by the stage, relative to the run's ``output_dir``."""
    details: dict[str, Any] = attrs.field(factory=dict)
    """Backend-specific facts (ModelOpt algorithm, calibration batches, export format...)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "technique": self.technique,
            "seconds": round(self.seconds, 3),
            "status": self.status,
            "peak_memory_bytes": self.peak_memory_bytes,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "effective_bits": self.effective_bits,
            "quantizer_summary": dict(self.quantizer_summary),
            "outputs": list(self.outputs),
            "details": _jsonable(self.details),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageResult:
        """A stage read back from a journal or manifest (``to_dict``'s inverse)."""
        return cls(
            name=d["name"], technique=d["technique"], seconds=float(d["seconds"]), status=d.get("status", "ok"),
            peak_memory_bytes=d.get("peak_memory_bytes"), params_before=d.get("params_before"),
            params_after=d.get("params_after"), effective_bits=d.get("effective_bits"),
            quantizer_summary=dict(d.get("quantizer_summary") or {}), outputs=tuple(d.get("outputs") or ()),
            details=dict(d.get("details") or {}),
        )


@attrs.frozen(kw_only=True)
class StepResult:
    """What a technique's executor reports for its stage; the backend adds time, memory and parameter counts."""

    details: dict[str, Any] = attrs.Factory(dict)
    outputs: tuple[str, ...] = ()
    """Folders the stage wrote, relative to the staging folder."""
    effective_bits: float | None = None
    quantizer_summary: dict[str, int] | None = None
    """Enabled quantizers by kind (None: the backend counts them)."""
    params_after: int | None = None
    """Parameters after the stage (None: the backend counts them)."""
    excluded_seconds: float = 0.0
    """Time spent on measurements inside the stage, not counted as the stage's."""


@attrs.frozen(kw_only=True)
class PostTrainingResult:
    """The outcome of one recipe."""

    recipe_name: str
    recipe_hash: str
    backend: str
    device: str
    output_dir: str
    """Absolute path of the finished output folder."""
    stages: tuple[StageResult, ...]
    metrics: dict[str, float | None] = attrs.field(factory=dict)
    """``perplexity_before``, ``perplexity_after`` (fake-quantized model), ``perplexity_export`` (re-loaded);
    ``<task>_accuracy_<phase>`` for each evaluation task with an accuracy."""
    seconds: float = 0.0
    """Wall time of the whole run, loading and evaluation included."""
    timings: dict[str, float] = attrs.field(factory=dict)
    """Wall time of the steps outside stages (``load``, ``evaluate_before``, ``evaluate_after``...)."""
    calibration_hash: str | None = None
    tasks: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    """Evaluation tasks: name -> phase (``before``, ``after``, ``export``) -> accuracy, counts, scorer, texts."""
    manifest: str | None = None
    """Path of manifest.json, relative to ``output_dir``."""
    reused: bool = False
    """True when ``output_dir`` already held this recipe's finished outputs (same hash) and nothing was redone."""
    resumed_from: int | None = None
    """The stage this run continued from after an earlier run of the same recipe stopped (None: from the start)."""
    notes: tuple[str, ...] = ()
    """What the run decided about its output folder that a user should hear (resumed, reused, files kept)."""
    determinism: dict[str, Any] = attrs.field(factory=dict)
    """``deterministic: true`` as applied (``runtime/determinism.py``): ``requested``, whether PyTorch's
    deterministic algorithms were on, the environment it ran with, ops that had no deterministic kernel."""
    cpu_threads: dict[str, Any] = attrs.field(factory=dict)
    """The recipe's ``cpu_threads`` as applied (``runtime/cpu_threads.py``): ``requested``, the ``threads`` each rank
    used and why, the usable cores and ranks on the node, PyTorch's count before and ``OMP_NUM_THREADS``."""

    @property
    def deterministic(self) -> bool:
        """Whether the run asked for, and ran with, PyTorch's deterministic algorithms."""
        return bool(self.determinism.get("requested") and self.determinism.get("torch_deterministic_algorithms"))

    @property
    def outputs(self) -> list[str]:
        """Absolute paths of everything the stages wrote, the manifest first."""
        root = Path(self.output_dir)
        out = [str(root / self.manifest)] if self.manifest else []
        return out + [str(root / p) for s in self.stages for p in s.outputs]

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.stages)

    def stage(self, name_or_technique: str) -> StageResult:
        for s in self.stages:
            if name_or_technique in (s.name, s.technique):
                return s
        raise KeyError(name_or_technique)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe_name,
            "recipe_hash": self.recipe_hash,
            "backend": self.backend,
            "device": self.device,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "stages": [s.to_dict() for s in self.stages],
            "outputs": self.outputs,
            "output_dir": self.output_dir,
            "metrics": _jsonable(self.metrics),
            "calibration_hash": self.calibration_hash,
            "reused": self.reused,
            "resumed_from": self.resumed_from,
            "notes": list(self.notes),
            "tasks": _jsonable(self.tasks),
            "determinism": _jsonable(self.determinism),
            "cpu_threads": _jsonable(self.cpu_threads),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], **changes: Any) -> PostTrainingResult:
        """A result read back from a manifest (``to_dict``'s inverse; ``outputs`` is derived again)."""
        out = cls(
            recipe_name=d["recipe"], recipe_hash=d["recipe_hash"], backend=d["backend"], device=d["device"],
            output_dir=d["output_dir"], stages=tuple(StageResult.from_dict(s) for s in d.get("stages", ())),
            metrics=dict(d.get("metrics") or {}), seconds=float(d.get("seconds") or 0.0),
            timings=dict(d.get("timings") or {}), calibration_hash=d.get("calibration_hash"),
            tasks=dict(d.get("tasks") or {}),
            manifest="manifest.json" if d.get("outputs") else None, reused=bool(d.get("reused", False)),
            resumed_from=d.get("resumed_from"), determinism=dict(d.get("determinism") or {}),
            cpu_threads=dict(d.get("cpu_threads") or {}),
        )
        return attrs.evolve(out, **changes) if changes else out

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def reset_peak_memory(device: str) -> None:
    """Start a stage's peak-memory measurement (CUDA's allocator counter; the CPU's cannot be reset)."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> int:
    """``StageResult.peak_memory_bytes``: CUDA's peak allocation, or on the CPU the process's peak resident set."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):  # NaN is not JSON
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
