"""Planning above the specs: check a recipe into the run's plan, resolve the environment, validate layouts
per stage, estimate memory, build launch commands. Pure Python: nothing here imports torch, Megatron-Core
or ModelOpt.

The package is also callable: ``plan("qwen3-30b-a3b", 8, stage="quantize")`` is :func:`.launch.plan`, so
``from modelopt_typed_recipes import plan`` gives the launch planner (the CLI's ``plan`` command).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .check import check_recipe
    from .environment import Environment
    from .gpus import get_gpu
    from .launch import LaunchPlan, plan
    from .memory import estimate
    from .resolve import Resolved, resolve
    from .rules import check, replan
    from .run_plan import RunPlan, StagePlan

_LAZY = {
    "plan": ("modelopt_typed_recipes.plan.launch", "plan"),
    "LaunchPlan": ("modelopt_typed_recipes.plan.launch", "LaunchPlan"),
    "resolve": ("modelopt_typed_recipes.plan.resolve", "resolve"),
    "Resolved": ("modelopt_typed_recipes.plan.resolve", "Resolved"),
    "replan": ("modelopt_typed_recipes.plan.rules", "replan"),
    "check": ("modelopt_typed_recipes.plan.rules", "check"),
    "check_recipe": ("modelopt_typed_recipes.plan.check", "check_recipe"),
    "RunPlan": ("modelopt_typed_recipes.plan.run_plan", "RunPlan"),
    "StagePlan": ("modelopt_typed_recipes.plan.run_plan", "StagePlan"),
    "Environment": ("modelopt_typed_recipes.plan.environment", "Environment"),
    "estimate": ("modelopt_typed_recipes.plan.memory", "estimate"),
    "get_gpu": ("modelopt_typed_recipes.plan.gpus", "get_gpu"),
}

__all__ = ["Environment", "LaunchPlan", "Resolved", "RunPlan", "StagePlan", "check", "check_recipe", "estimate",
    "get_gpu", "plan", "replan", "resolve"]

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        if name in _LAZY:
            module, attr = _LAZY[name]
            return getattr(importlib.import_module(module), attr)
        raise AttributeError(f"module 'modelopt_typed_recipes.plan' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """This package, callable as the launch planner (the top-level ``plan`` name is this package)."""

    def __call__(self, *args: Any, **kwargs: Any) -> LaunchPlan:
        from .launch import plan as launch_plan

        return launch_plan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
