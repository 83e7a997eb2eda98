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
    recipe = Recipe.load(next(p for p in EXAMPLES if p.name == "reference-prune-fp8-megatron.yaml"))
    assert [a.num_layers for a in recipe.archs_per_stage(get_arch)] == [6, 4, 4]


def test_prune_distill_example_distils_the_pruned_model_from_the_unpruned_one():
    from modelopt_typed_recipes.plan.techniques.distill import teacher_span

    recipe = Recipe.load(next(p for p in EXAMPLES if p.name == "reference-prune-distill-fp8-megatron.yaml"))
    assert [s.technique for s in recipe.stages] == ["prune", "distill", "quantize", "export"]
    assert [a.num_layers for a in recipe.archs_per_stage(get_arch)] == [6, 4, 4, 4]
    assert teacher_span(recipe.stages) == (0, 1)  # the copy is made before the prune stage
    plan = check_recipe(recipe, env=GPU_TE)
    assert plan.ok and plan.stages[1].layout is not None and plan.stages[1].layout.pipeline_parallel == 1
