"""The package type-checks (mypy, configured in pyproject.toml), and a user's script sees its real types.

Runs in the normal test command, so CI fails on a type error as on any other failure.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")
ROOT = Path(__file__).resolve().parents[1]


def test_mypy_passes_on_the_package() -> None:
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary",
                                "-p", "modelopt_typed_recipes"])
    assert status == 0, out + err


def test_top_level_names_have_their_real_types(tmp_path: Path) -> None:
    """A notebook's imports from the top level are typed (no Any from the lazy exports), checked as a user's
    script outside the repository sees the installed package."""
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent("""
        from modelopt_typed_recipes import (AutoQuantize, Export, ParallelLayout, PostTrainingResult, Prune, Quantize,
                                            Recipe, RecipeError, RunPlan, SpecError, check, get_arch, list_archs,
                                            load_recipe, plan, run_post_training)

        reveal_type(get_arch)
        reveal_type(check)
        reveal_type(run_post_training)
        reveal_type(plan)
        arch: int = get_arch("tiny-dense")
    """))
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", "--ignore-missing-imports",
                           "--follow-imports=silent", str(script)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    out = proc.stdout
    # the installed package is visible to type checkers (scripts/setup.sh adds the path entry they need)
    assert "Cannot find implementation" not in out, "re-run `bash scripts/setup.sh`:\n" + out
    assert 'def (name: str) -> modelopt_typed_recipes.spec.arch.ModelArch' in out, out
    assert "modelopt_typed_recipes.plan.run_plan.RunPlan" in out, out
    assert "modelopt_typed_recipes.runtime.result.PostTrainingResult" in out, out
    assert "modelopt_typed_recipes.plan.launch.LaunchPlan" in out, out
    assert 'variable has type "int"' in out, out  # a wrong use is caught, so nothing is Any
    assert 'Revealed type is "Any"' not in out, out


def test_top_level_import_stays_light() -> None:
    code = ("import sys, modelopt_typed_recipes as m; from modelopt_typed_recipes import Recipe, Quantize, check, plan; "
            "heavy = [k for k in sys.modules if k.split('.')[0] in ('torch', 'megatron', 'modelopt', 'transformers')]; "
            "assert not heavy, heavy; assert set(m.__all__) <= set(dir(m)); print(len(m.__all__))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_library_code_holds_no_assert() -> None:
    """``python -O`` strips asserts: library code narrows types or raises typed errors instead."""
    import ast

    found = []
    for path in sorted((ROOT / "modelopt_typed_recipes").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assert):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, found
