"""Test helper: what the tests of two real ranks share (the Megatron-Core backend on the CPU through
``tests/_megatron_cpu_cli.py``, gloo, one process per rank): the recipe they run, and an environment free of the
launch variables of whatever started pytest, so that the ranks' world is the one the test sets up."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

RECIPE_TEXT = """\
name: {name}
model: reference-llama
source: {{type: builtin}}
stages: [{{technique: quantize, format: fp8}}]
calibration: {{dataset: reference-train, num_samples: 4, seq_length: 64, batch_size: 4}}
layout: {{tensor_parallel: 2}}
backend: megatron
device: cuda
output_dir: outputs/{name}   # each run gives --output-dir
"""
"""FP8 quantization at TP=2: ``device: cuda`` as on a GPU machine (the CPU helper says the machine has CUDA)."""

LAUNCH_VARIABLES = ("OMP_NUM_THREADS", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                    "MASTER_PORT")
"""What torchrun sets for each rank (and ``OMP_NUM_THREADS``, which it sets to 1 when absent)."""


def two_rank_recipe(folder: Path, name: str) -> Path:
    """The recipe, named ``name``, written to ``folder/r.yaml``."""
    path = folder / "r.yaml"
    path.write_text(RECIPE_TEXT.format(name=name))
    return path


def rank_environ(**values: str) -> dict[str, str]:
    """This process's environment without the launch variables, with library warnings off, and ``values`` set."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    return {**env, "PYTHONWARNINGS": "ignore", **values}


def launch_ranks(args: list[str], ranks: int, *, cwd: Path, timeout: float = 240,
                 **values: str) -> list[subprocess.CompletedProcess[str]]:
    """``python ARGS`` as ranks 0..ranks-1 of one gloo world on this machine (the environment torchrun sets;
    one plain process when ``ranks`` is 1), each with :func:`rank_environ` and ``values``; a rank still running
    after ``timeout`` seconds kills them all and fails the test (a rank left waiting)."""
    import sys

    from modelopt_typed_recipes.runtime.distributed import free_port

    port = str(free_port())
    procs = []
    for rank in range(ranks):
        world = dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ranks), LOCAL_WORLD_SIZE=str(ranks),
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=port) if ranks > 1 else {}
        procs.append(subprocess.Popen([sys.executable, *args], cwd=cwd, env=rank_environ(**values, **world),
                                      text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    done = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank hung") from None
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done
