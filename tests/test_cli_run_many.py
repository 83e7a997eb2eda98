"""``run --json`` with several recipes: every recipe's result or typed error is reported, in order, even when
one fails at run time (before, a later failure dropped the earlier results); the exit code is 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--set", "calibration.num_samples=4", "--set", "calibration.seq_length=32", "--set",
         "evaluation.num_samples=4", "--set", "evaluation.seq_length=32"]


def test_a_failing_recipe_does_not_drop_the_others(tmp_path: Path) -> None:
    taken = tmp_path / "reference-int4-awq"  # the first recipe's folder holds someone else's files
    taken.mkdir()
    (taken / "index.html").write_text("<html>")
    proc = subprocess.run(
        [sys.executable, "-m", "modelopt_typed_recipes", "run", "examples/reference-int4-awq.yaml",
         "examples/reference-fp8.yaml", "--json", "--no-progress", "--output-dir", str(tmp_path), *SMALL],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    docs = json.loads(proc.stdout)
    assert [d["recipe_file"] for d in docs] == ["examples/reference-int4-awq.yaml", "examples/reference-fp8.yaml"]
    failed, done = docs
    assert failed["ok"] is False and failed["errors"][0]["type"] == "OutputError"
    assert failed["errors"][0]["path"] == "output_dir"
    assert done["ok"] is True and done["metrics"]["perplexity_export"] > 0
    assert (tmp_path / "reference-fp8" / "manifest.json").is_file()
    assert (taken / "index.html").read_text() == "<html>" and sorted(p.name for p in taken.iterdir()) == ["index.html"]
    assert "error: examples/reference-int4-awq.yaml: output_dir:" in proc.stderr
