"""``result.timings``' ``startup`` and ``setup`` in one process that runs several recipes (a notebook, ``run A B``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelopt_typed_recipes.errors import RecipeError
from modelopt_typed_recipes.runtime import api, cpu_threads
from modelopt_typed_recipes.runtime.backend import load_backend


def _tiny(out: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "tiny-fp8", "model": "tiny-dense", "source": {"type": "random", "seed": 0},
            "stages": [{"technique": "quantize", "format": "fp8"}],
            "calibration": {"dataset": "reference-train", "num_samples": 4, "seq_length": 32, "batch_size": 4},
            "output_dir": str(out), "backend": "hf", "device": "cpu", **extra}


def test_startup_is_the_first_runs_even_when_it_failed_and_setup_holds_the_torch_import(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first recipe that failed (a gate, a check against the machine, a run-time error) or was reused left
    ``startup`` uncounted, so the next recipe's held the failed one's whole run. ``cpu_threads.applied`` is where
    a fresh process first imports torch (seconds): stood in for here by a pause, it was in no named timing."""
    monkeypatch.setattr(api, "_startup_counted", False)  # as in a fresh process
    load_backend("hf")  # ModelOpt and transformers imported already: only the pause below is left to time
    with pytest.raises(RecipeError):  # fails its checks against this machine: nvfp4 needs CUDA
        api.run_post_training(_tiny(tmp_path / "a", stages=[{"technique": "quantize", "format": "nvfp4"}]),
                              progress=False)
    applied = cpu_threads.applied

    @contextlib.contextmanager
    def slow_first_import(requested: str | int) -> Iterator[cpu_threads.CpuThreads]:
        time.sleep(0.5)
        with applied(requested) as state:
            yield state

    monkeypatch.setattr(cpu_threads, "applied", slow_first_import)
    timings = api.run_post_training(_tiny(tmp_path / "b"), progress=False).timings
    assert timings["startup"] == 0.0 and timings["setup"] >= 0.5, timings
