"""Planning above the specs: resolve the environment, validate layouts per stage, estimate memory,
build launch commands. Pure Python: nothing here imports torch, Megatron-Core or ModelOpt."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "plan": ("modelopt_typed_recipes.plan.launch", "plan"),
    "LaunchPlan": ("modelopt_typed_recipes.plan.launch", "LaunchPlan"),
    "resolve": ("modelopt_typed_recipes.plan.resolve", "resolve"),
    "Resolved": ("modelopt_typed_recipes.plan.resolve", "Resolved"),
    "replan": ("modelopt_typed_recipes.plan.rules", "replan"),
    "check": ("modelopt_typed_recipes.plan.rules", "check"),
    "estimate": ("modelopt_typed_recipes.plan.memory", "estimate"),
    "get_gpu": ("modelopt_typed_recipes.plan.gpus", "get_gpu"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'modelopt_typed_recipes.plan' has no attribute {name!r}")
