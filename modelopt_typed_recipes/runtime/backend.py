"""The contract between ``run_post_training`` and a backend (``runtime/hf``, ``runtime/megatron``).

A backend is a module ``modelopt_typed_recipes.runtime.<name>.backend`` with two functions:

- ``check(recipe, plan) -> None``: backend-specific pre-flight (versions, formats, files); raises typed
  errors; must not build a model or touch the GPU. Optional.
- ``run(recipe, plan) -> PostTrainingResult``: do the stages, writing only under ``plan.staging_dir``.
  Stage outputs are reported relative to ``plan.staging_dir``. The caller writes the manifests and
  renames the staging folder to ``plan.output_dir`` when ``run`` returns; if it raises, the staging folder
  is deleted, so a failed run leaves nothing behind.

The caller has already checked everything that needs only the recipe and the machine: names, files,
non-empty data, CUDA for CUDA-only formats.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs

from ..spec.arch import ModelArch
from ..spec.recipe import Recipe
from .result import PostTrainingResult

BackendName = Literal["hf", "megatron"]


@attrs.frozen(kw_only=True)
class RunPlan:
    """A recipe resolved against this machine: backend, device, dtype, per-stage architectures, folders."""

    backend: BackendName
    device: Literal["cpu", "cuda"]
    dtype: Literal["fp32", "bf16", "fp16"]
    arch: ModelArch
    """The architecture the run starts from."""
    stage_archs: tuple[ModelArch, ...]
    """The architecture each stage starts from (a prune stage changes it for later stages)."""
    output_dir: Path
    """Where the outputs end up (absent until the run succeeds)."""
    staging_dir: Path
    """Where the backend writes; a sibling of ``output_dir``, renamed to it on success."""
    progress: bool = True
    """Show progress bars (rich) while calibrating and evaluating."""
    world_size: int = 1
    rank: int = 0
    report: Any = None
    """The ``plan.check.CheckReport`` that ``plan_run`` made for this backend (reused, not recomputed)."""

    def stage_dir(self, index: int, label: str) -> Path:
        """A stage's own output folder inside the staging folder (``01-quantize-fp8``)."""
        return self.staging_dir / f"{index + 1:02d}-{label}"


class Backend(Protocol):
    def run(self, recipe: Recipe, plan: RunPlan) -> PostTrainingResult: ...


def load_backend(name: BackendName) -> Backend:
    """Import a backend module lazily (torch, ModelOpt and friends load only here)."""
    return importlib.import_module(f"modelopt_typed_recipes.runtime.{name}.backend")  # type: ignore[return-value]
