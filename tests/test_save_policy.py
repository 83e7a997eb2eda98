"""Which stages write a checkpoint (``plan/save.py``): the recipe's ``save`` policy, a stage's own ``save``,
and the reasons the manifest gives. Pure data: no torch."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelopt_typed_recipes.errors import SpecError
from modelopt_typed_recipes.plan.save import save_decisions
from modelopt_typed_recipes.spec.recipe import SAVE_POLICIES, RandomInit, Recipe
from modelopt_typed_recipes.spec.serde import from_dict, to_dict
from modelopt_typed_recipes.spec.techniques import Export, Prune, Quantize


def recipe(*stages, **kw) -> Recipe:
    return Recipe(model="tiny-dense", source=RandomInit(), stages=stages, output_dir="o", **kw)


def saved(r: Recipe) -> list[bool | None]:
    return [None if d is None else d.save for d in save_decisions(r)]


def test_auto_saves_only_what_the_user_keeps():
    # an export follows: it is the deliverable, the quantized model is handed over in memory
    r = recipe(Quantize(format="fp8"), Export())
    assert saved(r) == [False, None]
    assert save_decisions(r)[0].reason == "save: auto: stages[1] exports the final model"
    # no export: the quantized model is the result
    assert saved(recipe(Quantize(format="fp8"))) == [True]
    # prune -> quantize -> export: nothing written besides the export
    r = recipe(Prune(num_layers=1), Quantize(format="fp8"), Export())
    assert saved(r) == [False, False, None]
    assert save_decisions(r)[0].reason == "save: auto: handed over in memory to stages[1]"
    # prune -> quantize without export: only the final model
    assert saved(recipe(Prune(num_layers=1), Quantize(format="fp8"))) == [False, True]


def test_policies_and_stage_overrides():
    stages = (Prune(num_layers=1), Quantize(format="fp8"), Export())
    assert saved(recipe(*stages, save="all")) == [True, True, None]
    assert saved(recipe(*stages, save="none")) == [False, False, None]
    assert saved(recipe(*stages, save="final")) == [False, True, None]
    r = recipe(Prune(num_layers=1, save=True), Quantize(format="fp8", save=False), save="all")
    assert saved(r) == [True, False]
    assert [d.reason for d in save_decisions(r)] == ["stages[0].save: true", "stages[1].save: false"]


def test_save_is_typed_in_yaml_and_python():
    doc = to_dict(recipe(Quantize(format="fp8", save=True), Export(), save="final"))
    assert doc["save"] == "final" and doc["stages"][0]["save"] is True
    assert from_dict(doc, Recipe).save == "final"
    with pytest.raises(SpecError) as err:
        from_dict({**doc, "save": "always"}, Recipe)
    assert err.value.path == "save" and "auto" in str(err.value)
    with pytest.raises(SpecError) as err:
        from_dict({**doc, "stages": [{"technique": "quantize", "format": "fp8", "save": "yes"}]}, Recipe)
    assert "stages[0]" in str(err.value.path) and "save" in str(err.value.path)
    with pytest.raises(SpecError, match="true, false or unset"):
        Quantize(format="fp8", save="yes")  # type: ignore[arg-type]


@given(policy=st.sampled_from(SAVE_POLICIES), export=st.booleans(), prune=st.booleans(),
       own=st.sampled_from([None, True, False]))
def test_every_model_stage_gets_one_decision_with_a_reason(policy, export, prune, own):
    stages = [*([Prune(num_layers=1)] if prune else []), Quantize(format="fp8", save=own), *([Export()] if export else [])]
    r = recipe(*stages, save=policy)
    decisions = save_decisions(r)
    assert len(decisions) == len(stages)
    for stage, d in zip(stages, decisions, strict=True):
        assert (d is None) == (stage.technique == "export")
        if d is not None:
            assert d.reason
    q = decisions[len(stages) - 1 - int(export)]
    if own is not None:
        assert q.save is own
    else:  # the last model stage is written unless nothing is asked or an export delivers it under auto
        assert q.save is (policy in ("all", "final") or (policy == "auto" and not export))
