"""Every YAML example in examples/ loads, validates and checks with only environment errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.plan.check import Environment, check_recipe
from modelopt_typed_recipes.spec.recipe import Recipe

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
GPU_TE = Environment(cuda=True, megatron_core="0.19.2", modelopt="0.47.0", transformer_engine=True)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_checks_on_its_target(path):
    recipe = Recipe.load(path)
    assert recipe.stages and recipe.archs_per_stage(get_arch)
    report = check_recipe(recipe, env=GPU_TE)
    assert report.ok, [e.message for e in report.errors]


def test_prune_example_hands_the_pruned_arch_to_later_stages():
    recipe = Recipe.load(next(p for p in EXAMPLES if "prune" in p.name))
    assert [a.num_layers for a in recipe.archs_per_stage(get_arch)] == [6, 4, 4]
