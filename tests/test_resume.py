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
from typing import Any

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


# --------------------------------------------------------------------------- the Megatron-Core backend
MEGATRON_RECIPE = """\
name: megatron-resume
model: reference-llama
source: {{type: builtin}}
stages: [{{technique: quantize, format: fp8}}, {{technique: export}}]
calibration: {{dataset: reference-train, num_samples: 8, seq_length: 256, batch_size: 8}}
evaluation: {{dataset: reference-heldout, num_samples: 8, seq_length: 256, batch_size: 8}}
backend: megatron
device: cuda
save: all
output_dir: outputs/megatron-resume   # each run gives --output-dir
{layout}"""
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _megatron_kill_and_resume(tmp_path: Path, head: Any, *, tp: int = 1, launch: tuple[str, ...] = (),
                              rel: float = 1e-4) -> dict:
    """A real kill -9 of a Megatron-Core run (FP8 with save: all, then export) inside the export, after the
    quantize stage was recorded; the next run loads the quantize stage's checkpoint, skips the stage, redoes the
    export and ends with the perplexities of a run never stopped. ``head(moment)``: the command up to ``run``
    (the CLI, or ``tests/kill_at.py MOMENT``); ``launch``: flags of the unkilled runs (``--launch`` under TP=2).
    ``rel``: how close the perplexities must be (bf16 GPU kernels may reduce in another order from run to run;
    another model would differ by percents). Returns the resumed run's result."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(MEGATRON_RECIPE.format(layout="layout: {tensor_parallel: 2}\n" if tp == 2 else ""))
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)

    survivors: list[str] = []
    stray: list[str] = []  # stdout besides the one JSON document (the --json contract): checked at the end

    def result_of(proc: subprocess.CompletedProcess[str]) -> dict:
        start = proc.stdout.find("{")
        doc, end = json.JSONDecoder().raw_decode(proc.stdout, max(start, 0))
        if (proc.stdout[:start] + proc.stdout[end:]).strip():
            stray.append(proc.stdout[:start][-500:] + " ... " + proc.stdout[end:][:500])
        return doc

    def cli(out: Path, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
        """One run in its own session, its output in files: a process the run left behind (none should be)
        cannot keep the test waiting for the end of a pipe; it is named, ended, and fails the test at the end."""
        extra = () if kill_at else launch
        logs = tmp_path.parent / f"{tmp_path.name}-logs"
        logs.mkdir(exist_ok=True)
        with open(logs / "stdout", "w+") as so, open(logs / "stderr", "w+") as se:
            proc = subprocess.Popen([*head(kill_at), "run", str(recipe), "--no-progress", "--json", "--output-dir",
                                     str(out), *extra], stdout=so, stderr=se, text=True, cwd=ROOT, env=env,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=600)
            finally:
                survivors.extend(_end_session(proc.pid))
            so.seek(0)
            se.seek(0)
            return subprocess.CompletedProcess(proc.args, rc, so.read(), se.read())

    straight = cli(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = result_of(straight)
    layouts = [s["details"]["layout"].split()[:2] for s in expected["stages"]]
    assert layouts == ([["TP1", "PP1"]] * 2 if tp == 1 else [["TP2", "PP1"], ["TP1", "PP2"]]), layouts
    out = tmp_path / "out"
    proc = cli(out, "inside:megatron-export")
    assert proc.returncode != 0, (proc.returncode, proc.stderr[-3000:])
    if proc.stdout.strip():
        stray.append(proc.stdout[-500:])
    if tp == 1:
        assert proc.returncode == -9, (proc.returncode, proc.stderr[-3000:])
    assert _journal(out) == ["quantize-fp8"] and not out.exists()
    assert (_staging(out) / "01-quantize-fp8" / "checkpoint" / "metadata.json").is_file()
    assert (_staging(out) / "02-export-hf" / "config.json").is_file()  # half a stage, redone by the next run
    assert outputs.lock_path(out).exists()  # the killed run's lock stays behind, and is reclaimed
    proc = cli(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming a stopped run of this recipe: 1 stage(s) done, continuing with stages[1]" in proc.stderr
    result = result_of(proc)
    assert result["resumed_from"] == 1 and [s["name"] for s in result["stages"]] == ["quantize-fp8", "export-hf"]
    assert result["stages"][0]["details"]["checkpoint"]["saved"] is True  # the killed run's record
    for key in ("perplexity_before", "perplexity_after"):
        assert result["metrics"][key] == pytest.approx(expected["metrics"][key], rel=rel), key
    assert (out / "02-export-hf" / "config.json").is_file()
    assert (out / "01-quantize-fp8" / "checkpoint" / "metadata.json").is_file()
    manifest = outputs.read_manifest(out)
    assert manifest is not None and set(manifest["files"]) == set(outputs.inventory(out))
    assert not any(name.startswith(JOURNAL_NAME) for name in manifest["files"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml", "straight"]  # no staging, no lock
    assert survivors == [], survivors  # a killed run leaves no process behind
    assert stray == [], stray  # stdout holds the JSON document alone
    return result


def _end_session(sid: int) -> list[str]:
    """The processes still in session ``sid`` (a finished run's), each ended with SIGKILL; their command lines."""
    import signal

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getsid(int(proc.name)) != sid:
                continue
            found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:300])
            os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue
    return found


def _needs_gpus(n: int) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("megatron.core")
    if torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} CUDA GPU(s)")


@pytest.mark.gpu
def test_megatron_run_killed_inside_export_continues(tmp_path: Path) -> None:
    """On one GPU, ModelOpt's real exporter (CUDA_VISIBLE_DEVICES picks the GPU)."""
    _needs_gpus(1)
    _megatron_kill_and_resume(tmp_path, lambda moment: [sys.executable, "tests/kill_at.py", moment] if moment
                              else [sys.executable, "-m", "modelopt_typed_recipes"], rel=1e-3)


@pytest.mark.gpu
def test_megatron_tp2_run_killed_inside_export_continues(tmp_path: Path) -> None:
    """TP=2 on two GPUs: the killed run under torchrun (each rank kills itself after the export), the others
    started by ``run --launch``; the resumed run loads the TP=2 checkpoint resharded into the export's PP=2."""
    _needs_gpus(2)
    _megatron_kill_and_resume(tmp_path, lambda moment: [*TORCHRUN, "tests/kill_at.py", moment] if moment
                              else [sys.executable, "-m", "modelopt_typed_recipes"], tp=2, launch=("--launch",),
                              rel=1e-3)


def _on_cpu(moment: str | None) -> list[str]:
    return [sys.executable, "tests/_megatron_cpu_cli.py", *(("--kill-at", moment) if moment else ())]


@pytest.mark.slow
def test_megatron_run_killed_inside_export_continues_on_cpu(tmp_path: Path) -> None:
    """The GPU test's run on the CPU (gloo, the test-only Megatron shim, ModelOpt's exporter replaced by a writer
    of its files: ``tests/_megatron_cpu_cli.py``), so that test's steps are known to hold before a GPU runs it."""
    pytest.importorskip("megatron.core")
    _megatron_kill_and_resume(tmp_path, _on_cpu)


@pytest.mark.slow
def test_megatron_tp2_run_killed_inside_export_continues_on_cpu(tmp_path: Path) -> None:
    """The TP=2 GPU test's runs on two gloo CPU ranks under torchrun (``--launch`` re-executes the plain CLI,
    which has no CPU shim, so every run here is started by torchrun itself)."""
    pytest.importorskip("megatron.core")
    _megatron_kill_and_resume(tmp_path, lambda moment: [*TORCHRUN, *_on_cpu(moment)[1:]], tp=2)
