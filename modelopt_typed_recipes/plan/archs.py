"""A recipe's architectures, resolved against the registry in one place (``spec/`` takes the resolver, so it
never imports the catalog; the runtime asks the plan, never the catalog)."""

from __future__ import annotations

from ..catalog import get_arch
from ..spec.arch import ModelArch
from ..spec.recipe import Recipe


def stage_archs(recipe: Recipe) -> tuple[ModelArch, ...]:
    """The architecture each stage starts from (unknown names and impossible prune sizes raise typed errors)."""
    return recipe.archs_per_stage(get_arch)


def reference_vocab_size() -> int:
    """Token ids the reference tokenizer (the one that ships with the package) can produce."""
    return get_arch("reference-llama").vocab.size
