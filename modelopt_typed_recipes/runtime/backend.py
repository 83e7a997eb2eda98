"""The contract between ``run_post_training`` and a backend (``runtime/hf``, ``runtime/megatron``).

A backend is a module ``modelopt_typed_recipes.runtime.<name>.backend`` with two functions:

- ``check(recipe, plan) -> None``: what only the backend can tell (it needs its heavy imports); raises typed
  errors; must not build a model or touch the GPU. Optional.
- ``run(recipe, plan) -> PostTrainingResult``: execute the plan's stages (each through the executor the
  technique registry names for this backend), writing only under ``plan.staging_dir``. Stage outputs are
  reported relative to ``plan.staging_dir``. The caller writes the manifests and renames the staging folder
  to ``plan.output_dir`` when ``run`` returns; if it raises, the staging folder is deleted, so a failed run
  leaves nothing behind.

The plan (:class:`~..plan.run_plan.RunPlan`) was checked before: the backend executes it and re-derives
nothing (layouts, ModelOpt configs, calibration windows, world size come from it).
"""

from __future__ import annotations

import importlib
from typing import Protocol, cast

from ..plan.backend_choice import BackendName
from ..plan.run_plan import RunPlan
from ..spec.recipe import Recipe
from .result import PostTrainingResult


class Backend(Protocol):
    def run(self, recipe: Recipe, plan: RunPlan) -> PostTrainingResult: ...


def load_backend(name: BackendName) -> Backend:
    """Import a backend module lazily (torch, ModelOpt and friends load only here).

    ModelOpt's quantization package is imported here, from a frame that holds no model: importing it imports
    PuLP, whose ``copt_api`` keeps a caught exception's traceback for the life of the process, and with it every
    frame of the importing call stack. Imported first inside a stage, it kept that stage's model alive (a move
    between layouts then had two models on the GPU)."""
    importlib.import_module("modelopt.torch.quantization")
    return cast(Backend, importlib.import_module(f"modelopt_typed_recipes.runtime.{name}.backend"))


__all__ = ["Backend", "BackendName", "RunPlan", "load_backend"]
