"""What a backend refuses of a recipe's evaluation tasks, found with the rest of the plan (no model built).

The tasks themselves are checked as data by ``spec/evaluation.py`` and ``Recipe``; their text and MMLU
folders by the runtime's pre-flight (``runtime/tasks/items.check_tasks``), which needs ``datasets``.
"""

from __future__ import annotations

from ..errors import CompatibilityError, RecipeError
from ..spec.evaluation import Generate
from ..spec.recipe import Recipe


def task_problems(recipe: Recipe, backend: str) -> list[RecipeError]:
    """One error per task the chosen backend cannot run."""
    out: list[RecipeError] = []
    for i, task in enumerate(recipe.tasks):
        if backend == "megatron" and isinstance(task, Generate) and not task.greedy:
            out.append(CompatibilityError(
                "the Megatron-Core backend generates greedily (ModelOpt's megatron_generate)",
                path=f"tasks[{i}].greedy", hint="greedy: true, or backend: hf"))
    return out
