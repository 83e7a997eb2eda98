"""pulp's CBC solver, which ``mtq.auto_quantize`` chooses its formats with after all calibration and scoring: one
environment fact (probed lazily), one technique hook, and both ``check`` and ``run`` refuse a machine without it
at the stage, with the fix, before any model is built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelopt_typed_recipes.cli import main
from modelopt_typed_recipes.errors import CompatibilityError
from modelopt_typed_recipes.plan import environment
from modelopt_typed_recipes.plan.check import check_recipe
from modelopt_typed_recipes.plan.environment import Environment
from modelopt_typed_recipes.runtime import api
from modelopt_typed_recipes.spec.recipe import Recipe
from modelopt_typed_recipes.spec.serde import from_dict

AQ = {"technique": "auto_quantize", "effective_bits": 7.8, "formats": ["int4_awq", "fp8"], "score_size": 8}
MISSING = "pulp's CBC solver is not available here"
FIX = "pip install --force-reinstall --no-deps pulp"


def recipe_doc(tmp: Path, stages: list[dict]) -> dict:
    return {"model": "tiny-dense", "source": {"type": "random", "seed": 0}, "stages": stages,
            "calibration": {"dataset": "reference-train", "num_samples": 8, "seq_length": 64, "batch_size": 4},
            "output_dir": str(tmp / "out"), "backend": "hf", "device": "cpu"}


def no_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "probe_lp_solver", lambda: MISSING)


# --------------------------------------------------------------------------- the probe
def test_probe_finds_the_solver_of_the_installed_pulp() -> None:
    pytest.importorskip("pulp")
    assert environment.probe_lp_solver() is None


def test_probe_names_a_pulp_that_does_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pulp", None)  # import pulp raises ImportError
    assert environment.probe_lp_solver().startswith("pulp does not import here")


def test_probe_names_a_pulp_without_its_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    pulp = pytest.importorskip("pulp")
    monkeypatch.setattr(pulp.PULP_CBC_CMD, "available", lambda self: False)
    assert environment.probe_lp_solver() == MISSING


def test_a_stated_fact_is_not_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "probe_lp_solver", lambda: pytest.fail("probed"))
    assert Environment(lp_solver=True).lp_solver_problem() is None
    assert Environment(lp_solver=False).lp_solver_problem() == MISSING


def test_pulp_is_imported_only_for_a_stage_that_needs_it() -> None:
    """Detecting the machine and checking a recipe without auto-quantize never import pulp (about 0.1 s)."""
    code = ("import sys\n"
            "from modelopt_typed_recipes.plan.environment import Environment\n"
            "from modelopt_typed_recipes.plan.check import check_recipe\n"
            "from modelopt_typed_recipes.cli.refs import named_recipe\n"
            "check_recipe(named_recipe('reference-llama:fp8'), env=Environment.detect())\n"
            "print('pulp' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


# --------------------------------------------------------------------------- check and run refuse alike
def _solver_errors(plan) -> list[CompatibilityError]:
    return [e for e in plan.errors if isinstance(e, CompatibilityError) and "CBC" in e.message]


def test_check_recipe_refuses_auto_quantize_without_the_solver(tmp_path: Path) -> None:
    aq = from_dict(recipe_doc(tmp_path, [AQ, {"technique": "export"}]), Recipe)
    (err,) = _solver_errors(check_recipe(aq, env=Environment(modelopt="0.47.0", lp_solver=False)))
    assert err.path == "stages[0]" and FIX in err.hint and "auto-quantize" in err.message
    assert _solver_errors(check_recipe(aq, env=Environment(modelopt="0.47.0", lp_solver=True))) == []
    # a stage that does not search formats does not need it
    fp8 = from_dict(recipe_doc(tmp_path, [{"technique": "quantize", "format": "fp8"}]), Recipe)
    assert _solver_errors(check_recipe(fp8, env=Environment(modelopt="0.47.0", lp_solver=False))) == []


@pytest.mark.parametrize("as_json", [False, True])
def test_check_command_reports_the_missing_solver(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch,
                                                  as_json: bool) -> None:
    no_solver(monkeypatch)
    f = tmp_path / "aq.yaml"
    f.write_text(json.dumps(recipe_doc(tmp_path, [AQ, {"technique": "export"}])))
    code = main(["check", str(f), *(["--json"] if as_json else [])])
    out = capsys.readouterr().out
    assert code == 2
    if as_json:
        errors = [e for e in json.loads(out)["errors"] if "CBC" in e["message"]]
        assert [(e["path"], FIX in e["hint"]) for e in errors] == [("stages[0]", True)]
    else:
        assert f"error stages[0]: {MISSING}" in out and FIX in out


def test_run_refuses_auto_quantize_without_the_solver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_solver(monkeypatch)
    with pytest.raises(CompatibilityError) as info:
        api.run_post_training(recipe_doc(tmp_path, [AQ, {"technique": "export"}]), progress=False)
    assert info.value.path == "stages[0]" and MISSING in str(info.value) and FIX in info.value.hint
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_run_probes_the_solver_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """plan_run leaves the question to check_recipe: one probe (pulp's import and a solver start) per stage."""
    from modelopt_typed_recipes.spec.recipe import Recipe

    calls: list[int] = []
    monkeypatch.setattr(environment, "probe_lp_solver", lambda: calls.append(1) and None)
    api.plan_run(Recipe.from_dict(recipe_doc(tmp_path, [AQ, {"technique": "export"}])), progress=False)
    assert len(calls) == 1
