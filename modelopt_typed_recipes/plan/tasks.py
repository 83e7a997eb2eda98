"""What a backend refuses of a recipe's evaluation tasks, found with the rest of the plan (no model built).

The tasks themselves are checked as data by ``spec/evaluation.py`` and ``Recipe``; their text and MMLU
folders by the runtime's pre-flight (``runtime/tasks/items.check_tasks``), which needs ``datasets``.
"""

from __future__ import annotations

import importlib.util

from ..errors import CompatibilityError, RecipeError
from ..spec.evaluation import MMLU, Generate, LMEval
from ..spec.recipe import Recipe

LM_EVAL_NEEDS = ("lm_eval", "accelerate")
"""What lm-eval's Hugging Face model class imports (the ``lm-eval`` extra installs both)."""


def task_problems(recipe: Recipe, backend: str) -> list[RecipeError]:
    """One error per task the chosen backend cannot run."""
    out: list[RecipeError] = []
    for i, task in enumerate(recipe.tasks):
        if backend == "megatron" and isinstance(task, Generate) and not task.greedy:
            out.append(CompatibilityError(
                "the Megatron-Core backend generates greedily (ModelOpt's megatron_generate)",
                path=f"tasks[{i}].greedy", hint="greedy: true, or backend: hf"))
        if isinstance(task, MMLU) and importlib.util.find_spec("datasets") is None:
            scorer = "ModelOpt's megatron_mmlu on the Megatron-Core backend" if backend == "megatron" else "the task"
            out.append(CompatibilityError(
                f"the mmlu task reads its folder with the `datasets` package ({scorer} imports it), not installed here",
                path=f"tasks[{i}].task", hint="pip install datasets"))
        if isinstance(task, LMEval):
            if backend != "hf":
                out.append(CompatibilityError(
                    "lm-eval's Python API scores Hugging Face models; the Megatron-Core backend runs next_sentence, "
                    "mmlu and generate", path=f"tasks[{i}].task", hint="backend: hf, or task: mmlu"))
            missing = [m for m in LM_EVAL_NEEDS if importlib.util.find_spec(m) is None]
            if missing:
                out.append(CompatibilityError(
                    f"the lm_eval task needs {' and '.join(missing)}, not installed here", path=f"tasks[{i}].task",
                    hint="pip install 'modelopt-typed-recipes[lm-eval]'"))
    return out
