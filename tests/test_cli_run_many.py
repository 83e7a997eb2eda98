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


def test_timings_of_two_recipes_in_one_process(tmp_path: Path) -> None:
    """``startup`` is the process's start up to its first run only (the second recipe's used to hold the first
    one's whole run); ``setup`` holds the first imports of torch and ModelOpt on the Hugging Face backend too."""
    paths = []
    for fmt in ("fp8", "int8_sq"):
        recipe = {"name": f"tiny-{fmt}", "model": "tiny-dense", "source": {"type": "random", "seed": 0},
                  "stages": [{"technique": "quantize", "format": fmt}],
                  "calibration": {"dataset": "reference-train", "num_samples": 4, "seq_length": 32, "batch_size": 4},
                  "evaluation": {"dataset": "reference-heldout", "num_samples": 4, "seq_length": 32, "batch_size": 4},
                  "output_dir": "unused", "backend": "hf", "device": "cpu"}
        paths.append(tmp_path / f"tiny-{fmt}.json")
        paths[-1].write_text(json.dumps(recipe))
    proc = subprocess.run(
        [sys.executable, "-m", "modelopt_typed_recipes", "run", *map(str, paths), "--json", "--no-progress",
         "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = (d["timings"] for d in json.loads(proc.stdout))
    assert list(first)[:3] == ["startup", "plan", "setup"] and list(second)[:3] == ["startup", "plan", "setup"]
    assert 0 < first["startup"] < sum(first.values()) and second["startup"] == 0.0
    assert first["setup"] > 0.5 > second["setup"]  # torch + ModelOpt imported for the first recipe, then loaded
