"""modelopt-typed-recipes: typed, validated recipes for ModelOpt post-training on Megatron-Core.

Everything a notebook needs is importable from here::

    from modelopt_typed_recipes import Recipe, Quantize, Export, check, run_post_training

Importing this package is cheap: names load on first use, and torch, Megatron-Core and ModelOpt load only
when a run needs them. Type checkers see the real types (the imports under ``TYPE_CHECKING``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .catalog import get_arch, list_archs, register
    from .catalog.recipes import NamedRecipe, get_recipe, list_recipes
    from .errors import (
        CompatibilityError,
        DataError,
        LayoutError,
        RecipeError,
        ResourceError,
        SpecError,
        UnknownNameError,
    )
    from .plan.check import check_recipe as check
    from .plan.environment import Environment
    from .plan.launch import LaunchPlan, plan
    from .plan.run_plan import RunPlan, StagePlan
    from .runtime.api import load_recipe, run_post_training
    from .runtime.result import PostTrainingResult, StageResult
    from .spec.arch import ModelArch
    from .spec.layout import ParallelLayout
    from .spec.recipe import Builtin, HFCheckpoint, MegatronCheckpoint, RandomInit, Recipe, TextData
    from .spec.techniques import AutoQuantize, Distill, Export, Prune, Quantize

_LAZY: dict[str, tuple[str, str]] = {
    # architectures and named recipes
    "ModelArch": ("spec.arch", "ModelArch"),
    "get_arch": ("catalog", "get_arch"),
    "list_archs": ("catalog", "list_archs"),
    "register": ("catalog", "register"),
    "NamedRecipe": ("catalog.recipes", "NamedRecipe"),
    "get_recipe": ("catalog.recipes", "get_recipe"),
    "list_recipes": ("catalog.recipes", "list_recipes"),
    # recipes
    "Recipe": ("spec.recipe", "Recipe"),
    "TextData": ("spec.recipe", "TextData"),
    "HFCheckpoint": ("spec.recipe", "HFCheckpoint"),
    "MegatronCheckpoint": ("spec.recipe", "MegatronCheckpoint"),
    "RandomInit": ("spec.recipe", "RandomInit"),
    "Builtin": ("spec.recipe", "Builtin"),
    "Quantize": ("spec.techniques", "Quantize"),
    "AutoQuantize": ("spec.techniques", "AutoQuantize"),
    "Prune": ("spec.techniques", "Prune"),
    "Distill": ("spec.techniques", "Distill"),
    "Export": ("spec.techniques", "Export"),
    "ParallelLayout": ("spec.layout", "ParallelLayout"),
    # checking, planning, running
    "check": ("plan.check", "check_recipe"),
    "Environment": ("plan.environment", "Environment"),
    "RunPlan": ("plan.run_plan", "RunPlan"),
    "StagePlan": ("plan.run_plan", "StagePlan"),
    "LaunchPlan": ("plan.launch", "LaunchPlan"),
    "load_recipe": ("runtime.api", "load_recipe"),
    "run_post_training": ("runtime.api", "run_post_training"),
    "PostTrainingResult": ("runtime.result", "PostTrainingResult"),
    "StageResult": ("runtime.result", "StageResult"),
    # errors
    "RecipeError": ("errors", "RecipeError"),
    "SpecError": ("errors", "SpecError"),
    "UnknownNameError": ("errors", "UnknownNameError"),
    "LayoutError": ("errors", "LayoutError"),
    "CompatibilityError": ("errors", "CompatibilityError"),
    "ResourceError": ("errors", "ResourceError"),
    "DataError": ("errors", "DataError"),
}

__all__ = ["AutoQuantize", "Builtin", "CompatibilityError", "DataError", "Distill", "Environment", "Export", "HFCheckpoint",
    "LaunchPlan", "LayoutError", "MegatronCheckpoint", "ModelArch", "NamedRecipe", "ParallelLayout",
    "PostTrainingResult", "Prune", "Quantize", "RandomInit", "Recipe", "RecipeError", "ResourceError", "RunPlan",
    "SpecError", "StagePlan", "StageResult", "TextData", "UnknownNameError", "__version__", "check", "get_arch",
    "get_recipe", "list_archs", "list_recipes", "load_recipe", "plan", "register", "run_post_training"]

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        if name == "plan":  # the subpackage, callable as plan.launch.plan (see plan/__init__.py)
            return importlib.import_module(f"{__name__}.plan")
        if name in _LAZY:
            module, attr = _LAZY[name]
            value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
