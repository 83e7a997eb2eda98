"""Calibration windows: one loader for both backends, and a stage's own sample count/length honoured."""

from __future__ import annotations

from modelopt_typed_recipes.plan.check import Environment, check_recipe
from modelopt_typed_recipes.runtime import data
from modelopt_typed_recipes.spec.recipe import RandomInit, Recipe, TextData
from modelopt_typed_recipes.spec.techniques import AutoQuantize, Export, Quantize


def _windows(cal, *stages):
    """The calibration windows the run's plan gives each stage (None: the stage reads no calibration data)."""
    rec = Recipe(model="tiny-dense", source=RandomInit(), stages=stages, calibration=cal, output_dir="/tmp/x",
                 backend="hf")
    return [s.calibration for s in check_recipe(rec, env=Environment()).stages]


def test_stage_batches_honour_a_stage_s_own_calibration_size() -> None:
    cal = TextData(dataset="reference-train", num_samples=8, seq_length=64, batch_size=4)
    tok = data.load_tokenizer(None)
    windows = data.token_windows(cal, tok)
    (plan,) = _windows(cal, Quantize(format="fp8"))
    default = data.stage_batches(plan, cal, tok, windows)
    assert [tuple(b.shape) for b in default] == [(4, 64), (4, 64)]
    (plan,) = _windows(cal, Quantize(format="fp8", calibration_samples=6, calibration_seq_length=32))
    mine = data.stage_batches(plan, cal, tok, windows)
    assert [tuple(b.shape) for b in mine] == [(4, 32), (2, 32)]
    # the same text: the stage's windows are the first tokens of the recipe's
    assert mine[0][0].tolist() == windows[0, :32].tolist()
    auto_plan, export_plan = _windows(cal, AutoQuantize(effective_bits=6.0, formats=("int4_awq", "fp8"),
                                                        calibration_samples=4), Export())
    auto = data.stage_batches(auto_plan, cal, tok, windows)
    assert [tuple(b.shape) for b in auto] == [(4, 64)]
    assert export_plan is None  # export reads no calibration data
    assert [tuple(b.shape) for b in data.stage_batches(export_plan, cal, tok, windows)] == [(4, 64), (4, 64)]
