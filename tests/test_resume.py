"""Kill -9 a real run at every stage boundary and inside each stage; the same command continues (CPU, HF
backend, the shipped reference model, FP8 quantize -> HF export, small windows to stay fast).

One chain of runs to one output folder, each killed by ``tests/kill_at.py`` at the next moment and each
continuing from what the one before left (checked in the staging folder's journal), then an unkilled run
that puts the result in place; its perplexities must equal those of a run that was never stopped. Then:
the same command again is a no-op naming the folder, ``--force`` redoes it, and a second run while the
folder is locked is refused naming the holder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelopt_typed_recipes.plan import outputs
from modelopt_typed_recipes.plan.journal import JOURNAL_NAME

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--set", "calibration.num_samples=4", "--set", "calibration.seq_length=32", "--set",
         "evaluation.num_samples=4", "--set", "evaluation.seq_length=32", "--set", "calibration.batch_size=2",
         "--set", "evaluation.batch_size=2"]
RECIPE = "examples/reference-fp8.yaml"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def _cli(out: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    head = [sys.executable, "tests/kill_at.py", kill_at] if kill_at else [sys.executable, "-m",
                                                                           "modelopt_typed_recipes"]
    return subprocess.run([*head, "run", RECIPE, "--no-progress", "--json", "--output-dir", str(out), *SMALL,
                           *extra], capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)


def _staging(out: Path) -> Path:
    found = list(out.parent.glob(f".{out.name}.partial-*"))
    assert len(found) == 1, found
    return found[0]


def _journal(out: Path) -> list[str]:
    f = _staging(out) / JOURNAL_NAME
    return [s["result"]["name"] for s in json.loads(f.read_text())["stages"]] if f.is_file() else []


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same recipe run once without a stop (another folder: the hash differs only by output_dir)."""
    out = tmp_path_factory.mktemp("straight") / "out"
    proc = _cli(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_kill_at_every_boundary_and_inside_each_stage_then_resume(tmp_path: Path, straight: dict) -> None:
    out = tmp_path / "out"
    expect = [  # (moment, stages in the journal after the kill, what else must be in the staging folder)
        ("inside:stages[0]", [], None),
        ("after:stages[0]", ["quantize-fp8"], ".resume/after-01.pth"),
        ("inside:stages[1]", ["quantize-fp8"], "export/model.safetensors"),
        ("after:stages[1]", ["quantize-fp8", "export-hf"], "export/model.safetensors"),
        ("evaluating-export", ["quantize-fp8", "export-hf"], "export/model.safetensors"),
        ("before-swap", None, "manifest.json"),
    ]
    for moment, journal, present in expect:
        proc = _cli(out, kill_at=moment)
        assert proc.returncode == -9, (moment, proc.returncode, proc.stderr[-3000:])
        assert not out.exists(), moment  # never a partial output
        if journal is not None:
            assert _journal(out) == journal, moment
        if present:
            assert (_staging(out) / present).exists(), (moment, sorted(os.listdir(_staging(out))))
        assert outputs.lock_path(out).exists()  # the killed run's lock stays behind, and is reclaimed
    proc = _cli(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "a finished run of this recipe was waiting" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["resumed_from"] == 2  # the run killed before the swap had found every stage done
    for key in ("perplexity_before", "perplexity_after", "perplexity_export"):
        assert result["metrics"][key] == pytest.approx(straight["metrics"][key], rel=1e-6), key
    # nothing left beside the output: no staging, no swap folder, no lock
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    manifest = outputs.read_manifest(out)
    assert manifest is not None and set(manifest["files"]) == set(outputs.inventory(out))
    assert not any(name.startswith((".resume", JOURNAL_NAME)) for name in manifest["files"])


@pytest.mark.slow
def test_resume_after_the_first_stage_says_so_and_matches(tmp_path: Path, straight: dict) -> None:
    out = tmp_path / "out"
    assert _cli(out, kill_at="after:stages[0]").returncode == -9
    proc = _cli(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming a stopped run of this recipe: 1 stage(s) done, continuing with stages[1]" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["resumed_from"] == 1
    assert result["stages"][0]["name"] == "quantize-fp8"
    for key in ("perplexity_before", "perplexity_after", "perplexity_export"):
        assert result["metrics"][key] == pytest.approx(straight["metrics"][key], rel=1e-6), key

    again = _cli(out)  # finished: a no-op that says where the outputs are
    assert again.returncode == 0
    assert f"{out} already holds the outputs of this recipe" in again.stderr
    assert json.loads(again.stdout)["reused"] is True
    before = (out / "manifest.json").read_text()
    forced = _cli(out, "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    doc = json.loads(forced.stdout)
    assert doc["reused"] is False and doc["resumed_from"] is None
    assert (out / "manifest.json").read_text() != before  # a new run's manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_second_run_to_a_locked_folder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with outputs.OutputLock(out.resolve(), outputs.run_identity("someone-else")):
        proc = _cli(out)
    assert proc.returncode == 2
    assert f"is being written by another run (pid {os.getpid()}" in proc.stderr
    assert json.loads(proc.stdout)["errors"][0]["type"] == "OutputLockedError"
    assert not out.exists()


# --------------------------------------------------------------------------- GPU: the Megatron-Core backend
MEGATRON_RECIPE = """\
name: megatron-resume
model: reference-llama
source: {type: builtin}
stages: [{technique: quantize, format: fp8}, {technique: export}]
calibration: {dataset: reference-train, num_samples: 8, seq_length: 256, batch_size: 8}
evaluation: {dataset: reference-heldout, num_samples: 8, seq_length: 256, batch_size: 8}
backend: megatron
device: cuda
save: all
output_dir: outputs/megatron-resume   # each run gives --output-dir
"""


@pytest.mark.gpu
def test_megatron_run_killed_inside_export_continues(tmp_path: Path) -> None:
    """A real kill -9 of a Megatron-Core run (FP8 with save: all, then export) inside the export, after the
    quantize stage was recorded; the next run loads the quantize stage's checkpoint, skips the stage, redoes the
    export and ends with the perplexities of a run never stopped."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("megatron.core")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(MEGATRON_RECIPE)

    def cli(out: Path, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
        head = [sys.executable, "tests/kill_at.py", kill_at] if kill_at else [sys.executable, "-m",
                                                                               "modelopt_typed_recipes"]
        return subprocess.run([*head, "run", str(recipe), "--no-progress", "--json", "--output-dir", str(out)],
                              capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)

    straight = cli(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = json.loads(straight.stdout)["metrics"]
    out = tmp_path / "out"
    proc = cli(out, "inside:megatron-export")
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert _journal(out) == ["quantize-fp8"] and not out.exists()
    assert (_staging(out) / "01-quantize-fp8" / "checkpoint" / "metadata.json").is_file()
    assert (_staging(out) / "02-export-hf" / "config.json").is_file()  # half a stage, redone by the next run
    proc = cli(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming a stopped run of this recipe: 1 stage(s) done, continuing with stages[1]" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["resumed_from"] == 1 and [s["name"] for s in result["stages"]] == ["quantize-fp8", "export-hf"]
    for key in ("perplexity_before", "perplexity_after"):
        assert result["metrics"][key] == pytest.approx(expected[key], rel=1e-4), key
    assert (out / "02-export-hf" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml", "straight"]
