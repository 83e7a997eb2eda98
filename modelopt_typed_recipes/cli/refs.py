"""A recipe argument on the command line: a YAML/JSON file, or a named recipe (``Qwen/Qwen3-8B:fp8``).

``check``, ``run`` and ``cp`` read their RECIPE argument through :func:`load_ref`, so one name means the
same recipe everywhere. A named recipe carries stages and layout but no weights: it gets the built-in
weights when its model ships some (``reference-llama``), random weights otherwise (a dry run; give real
ones with ``--set 'source={type: hf, path: DIR}'`` or in the YAML that ``cp`` writes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..spec.recipe import Recipe

RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


def is_file_ref(ref: str) -> bool:
    """A path (by its suffix, or because it exists) rather than a registry name."""
    return Path(ref).suffix in RECIPE_SUFFIXES or Path(ref).is_file()


def named_recipe(ref: str) -> Recipe:
    """A named recipe made runnable: weights as the module docstring says, outputs under ``outputs/``."""
    from ..catalog import get_arch
    from ..catalog.models.reference import builtin_weights_dir
    from ..catalog.recipes import get_recipe
    from ..errors import UnknownNameError
    from ..spec.recipe import Builtin, RandomInit, TextData

    try:
        named = get_recipe(ref)
    except UnknownNameError as err:
        raise UnknownNameError(f"{ref!r} is neither a recipe file (.yaml, .yml, .json) nor a named recipe",
                               path="recipe", hint=err.hint or "`recipes` lists the named ones") from None
    builtin = builtin_weights_dir(get_arch(named.model).name) is not None
    fields: dict[str, Any] = {"source": Builtin() if builtin else RandomInit()}
    if builtin:  # the shipped model has held-out text too: measure before and after, as the examples do
        fields["evaluation"] = TextData(dataset="reference-heldout", num_samples=32)
    out = "outputs/" + named.name.replace("/", "_").replace(":", "-")
    return named.to_recipe(output_dir=out, **fields)


def load_ref(ref: str) -> Recipe:
    """The recipe a RECIPE argument names (typed errors for unreadable files and unknown names)."""
    return Recipe.load(ref) if is_file_ref(ref) else named_recipe(ref)
