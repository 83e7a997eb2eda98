"""The output folder under several ranks, on the CPU with 2 real processes (gloo): rank 0 holds the folder,
the other ranks learn through the process group what it found. A launch to a folder another run holds fails
on every rank with the same typed error (no rank left waiting); a finished run waiting for its swap is put
in place once, and every rank ends with its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelopt_typed_recipes.plan import outputs
from modelopt_typed_recipes.runtime.api import load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "examples/reference-fp8.yaml"


def _two_ranks(out: Path) -> list[subprocess.CompletedProcess[str]]:
    """``run RECIPE --json --output-dir OUT`` as ranks 0 and 1 of one world (the environment torchrun sets)."""
    from modelopt_typed_recipes.runtime.distributed import free_port

    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-m", "modelopt_typed_recipes", "run", RECIPE, "--json",
                                       "--no-progress", "--output-dir", str(out)], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    done = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:  # a rank left waiting: the failure this test exists for
            for q in procs:
                q.kill()
            raise AssertionError("a rank hung") from None
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done


def test_a_launch_to_a_held_folder_fails_on_every_rank(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with outputs.OutputLock(out.resolve(), outputs.run_identity("another-run")):
        ranks = _two_ranks(out)
    for rank, proc in enumerate(ranks):
        assert proc.returncode == 2, (rank, proc.stderr[-3000:])
        assert f"is being written by another run (pid {os.getpid()}" in proc.stderr, (rank, proc.stderr[-3000:])
    assert json.loads(ranks[0].stdout)["errors"][0]["type"] == "OutputLockedError"
    assert ranks[1].stdout == ""  # one JSON document, from rank 0
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_finished_run_waiting_for_its_swap_is_put_in_place_once(tmp_path: Path) -> None:
    from modelopt_typed_recipes.runtime.result import PostTrainingResult

    out = (tmp_path / "out").resolve()
    recipe_hash = load_recipe(RECIPE, {"output_dir": str(out)}).content_hash()
    staging = outputs.staging_dir(out, recipe_hash)
    (staging / "export").mkdir(parents=True)
    (staging / "export" / "config.json").write_text("{}")
    result = PostTrainingResult(recipe_name="reference-fp8", recipe_hash=recipe_hash, backend="hf", device="cpu",
                                output_dir=str(staging), stages=(), metrics={"perplexity_after": 41.0})
    (staging / outputs.MANIFEST_NAME).write_text(json.dumps({
        "schema": outputs.MANIFEST_SCHEMA, "run": outputs.run_identity(recipe_hash),
        "files": outputs.inventory(staging), "result": result.to_dict()}))
    ranks = _two_ranks(out)
    for rank, proc in enumerate(ranks):
        assert proc.returncode == 0, (rank, proc.stderr[-3000:])
        assert "a finished run of this recipe was waiting" in proc.stderr, (rank, proc.stderr[-3000:])
    doc = json.loads(ranks[0].stdout)
    assert doc["metrics"]["perplexity_after"] == 41.0 and doc["output_dir"] == str(out)
    assert (out / "export" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no lock left
