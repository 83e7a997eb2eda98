"""modelopt-typed-recipes: typed, validated recipes for ModelOpt post-training on Megatron-Core.

Importing this package is cheap: torch, Megatron-Core and ModelOpt load only when a run needs them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ModelArch": ("modelopt_typed_recipes.spec.arch", "ModelArch"),
    "get_arch": ("modelopt_typed_recipes.catalog", "get_arch"),
    "register": ("modelopt_typed_recipes.catalog", "register"),
    "list_archs": ("modelopt_typed_recipes.catalog", "list_archs"),
    "RecipeError": ("modelopt_typed_recipes.errors", "RecipeError"),
    "SpecError": ("modelopt_typed_recipes.errors", "SpecError"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'modelopt_typed_recipes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
