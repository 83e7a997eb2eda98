"""Named architectures, launch profiles and recipes (plain data) and their registries."""

from __future__ import annotations

from ..spec.arch import ModelArch
from .registry import Registry


def _arch_keys(arch: ModelArch) -> list[str]:
    keys = [arch.name]
    if arch.hf_id:
        keys.append(arch.hf_id)
    keys.extend(arch.aliases)
    return keys


def _builtin_archs() -> list[ModelArch]:
    from .models import all_models

    return all_models()


ARCHITECTURES: Registry[ModelArch] = Registry(
    "architecture",
    keys=_arch_keys,
    entry_point_group="modelopt_typed_recipes.architectures",
    loaders=[_builtin_archs],
)


def get_arch(name: str) -> ModelArch:
    """Look an architecture up by short name, HF id (any case) or alias."""
    return ARCHITECTURES.get(name)


def register(arch: ModelArch, *, replace: bool = False) -> ModelArch:
    """Add a user architecture; names and aliases must be new unless ``replace``."""
    return ARCHITECTURES.register(arch, replace=replace)


def list_archs(*, kind: str | None = None, family: str | None = None) -> list[ModelArch]:
    out = list(ARCHITECTURES)
    if kind is not None:
        out = [a for a in out if a.kind == kind]
    if family is not None:
        out = [a for a in out if a.family.lower() == family.lower()]
    return out
