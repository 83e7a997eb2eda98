"""The output folder under several ranks, on the CPU with 2 real processes (gloo): rank 0 holds the folder,
the other ranks learn through the process group what it found. A launch to a folder another run holds fails
on every rank with the same typed error (no rank left waiting); a finished run waiting for its swap is put
in place once, and every rank ends with its result.

The ranks run the Megatron-Core backend (the one a multi-process launch is for; ``check`` refuses the Hugging Face
backend there) through ``tests/_megatron_cpu_cli.py``: gloo, the test-only CPU shim, a machine said to have CUDA.
Neither test builds a model: the folder is decided before any work."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from _ranks import launch_ranks, two_rank_recipe
from modelopt_typed_recipes.plan import outputs
from modelopt_typed_recipes.runtime.api import load_recipe

pytest.importorskip("megatron.core")

ROOT = Path(__file__).resolve().parent.parent


def _recipe(tmp_path: Path) -> Path:
    return two_rank_recipe(tmp_path, "ranks-output")


def _two_ranks(recipe: Path | str, out: Path, cli: tuple[str, ...] = ("tests/_megatron_cpu_cli.py",)
               ) -> list[subprocess.CompletedProcess[str]]:
    """``run RECIPE --json --output-dir OUT`` as ranks 0 and 1 of one world (the environment torchrun sets)."""
    return launch_ranks([*cli, "run", str(recipe), "--json", "--no-progress", "--output-dir", str(out)], 2, cwd=ROOT,
                        OMP_NUM_THREADS="1")


def test_a_launch_to_a_held_folder_fails_on_every_rank(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with outputs.OutputLock(out.resolve(), outputs.run_identity("another-run")):
        ranks = _two_ranks(_recipe(tmp_path), out)
    for rank, proc in enumerate(ranks):
        assert proc.returncode == 2, (rank, proc.stderr[-3000:])
        assert f"is being written by another run (pid {os.getpid()}" in proc.stderr, (rank, proc.stderr[-3000:])
    assert json.loads(ranks[0].stdout)["errors"][0]["type"] == "OutputLockedError"
    assert ranks[1].stdout == ""  # one JSON document, from rank 0
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_a_finished_run_waiting_for_its_swap_is_put_in_place_once(tmp_path: Path) -> None:
    from modelopt_typed_recipes.runtime.result import PostTrainingResult

    out = (tmp_path / "out").resolve()
    recipe = _recipe(tmp_path)
    recipe_hash = load_recipe(recipe, {"output_dir": str(out)}).content_hash()
    staging = outputs.staging_dir(out, recipe_hash)
    (staging / "export").mkdir(parents=True)
    (staging / "export" / "config.json").write_text("{}")
    result = PostTrainingResult(recipe_name="ranks-output", recipe_hash=recipe_hash, backend="megatron", device="cpu",
                                output_dir=str(staging), stages=(), metrics={"perplexity_after": 41.0})
    (staging / outputs.MANIFEST_NAME).write_text(json.dumps({
        "schema": outputs.MANIFEST_SCHEMA, "run": outputs.run_identity(recipe_hash),
        "files": outputs.inventory(staging), "result": result.to_dict()}))
    ranks = _two_ranks(recipe, out)
    for rank, proc in enumerate(ranks):
        assert proc.returncode == 0, (rank, proc.stderr[-3000:])
        assert "a finished run of this recipe was waiting" in proc.stderr, (rank, proc.stderr[-3000:])
    doc = json.loads(ranks[0].stdout)
    assert doc["metrics"]["perplexity_after"] == 41.0 and doc["output_dir"] == str(out)
    assert (out / "export" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml"]  # no staging, no lock left


def test_the_hugging_face_backend_is_refused_on_every_rank_before_any_work(tmp_path: Path) -> None:
    """Each rank would run the whole recipe into the same staging folder: every rank stops at ``check``'s typed
    error naming ``backend`` and the fix, and nothing is written (no lock, no staging folder)."""
    out = tmp_path / "out"
    ranks = _two_ranks("examples/reference-fp8.yaml", out, cli=("-m", "modelopt_typed_recipes"))
    for rank, proc in enumerate(ranks):
        assert proc.returncode == 2, (rank, proc.stderr[-3000:])
        assert "error: backend: the Hugging Face backend runs a recipe in one process, but this launch has 2 " \
               "processes" in proc.stderr, (rank, proc.stderr[-3000:])
    [error] = json.loads(ranks[0].stdout)["errors"]
    assert error["type"] == "CompatibilityError" and "backend: megatron" in error["hint"]
    assert "without torchrun" in error["hint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
