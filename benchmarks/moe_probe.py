"""Calibration speed of qwen3-30b-a3b at EP2 against the calibration batch: the quantize stage alone (``save: none``,
no export), ``--forwards`` forward passes at each ``--batches`` value, ``deterministic: true`` (and once more without
it at the largest batch, with ``--nondeterministic-too``); prints one JSON line per run.

Why: the MoE calibrates at about 1,000 tokens/s at batch 8 (each of the 48 layers runs its 64 local experts one after
another), so 512 windows take more than a 600 s device call. If the cost is per forward pass rather than per token, a
larger batch fits 512 windows into one call, for both programs alike. Run on 2 GPUs:

    python3 benchmarks/moe_probe.py --text .scale/scale_calib.jsonl --batches 8,32 --out /tmp/moe_probe
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe_yaml(text: str, windows: int, batch: int, out: Path, deterministic: bool = True) -> str:
    from modelopt_typed_recipes.spec.recipe import Recipe
    from modelopt_typed_recipes.spec.serde import to_yaml

    return to_yaml(Recipe.from_dict({
        "name": f"moe-probe-b{batch}{'' if deterministic else '-nondet'}", "model": "qwen3-30b-a3b", "source": {"type": "random", "seed": 0},
        "stages": [{"technique": "quantize", "format": "nvfp4"}], "save": "none",
        "calibration": {"files": [str(Path(text).resolve())], "num_samples": windows, "seq_length": 2048,
                        "batch_size": batch},
        "layout": {"expert_parallel": 2, "data_parallel": 2}, "output_dir": str(out), "backend": "megatron",
        "device": "cuda", "deterministic": deterministic, "cpu_threads": 16,
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True)
    p.add_argument("--forwards", type=int, default=4, help="batches per run (windows = forwards x batch), dealt "
                   "across the 2 data-parallel replicas: 2 forward passes on each rank")
    p.add_argument("--batches", default="8,48")
    p.add_argument("--nondeterministic-too", action="store_true", help="one more run at the largest batch without "
                   "deterministic: true")
    p.add_argument("--out", default="/tmp/moe_probe")
    p.add_argument("--dry-run", action="store_true", help="write the recipes and print the commands only")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in a.batches.split(",")]
    runs = [(b, True) for b in batches] + ([(max(batches), False)] if a.nondeterministic_too else [])
    for batch, deterministic in runs:
        name = f"b{batch}" + ("" if deterministic else "-nondet")
        windows = a.forwards * batch
        folder = out / name
        recipe = out / f"{name}.yaml"
        recipe.write_text(recipe_yaml(a.text, windows, batch, folder, deterministic))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
               "modelopt_typed_recipes", "run", str(recipe), "--json", "--no-progress"]
        if a.dry_run:
            print(" ".join(cmd), flush=True)
            continue
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.environ.get(
            "PYTHONPATH", str(ROOT))})
        wall = time.perf_counter() - t
        (out / f"{name}.log").write_text(done.stdout + done.stderr)
        row: dict = {"batch": batch, "windows": windows, "deterministic": deterministic, "rc": done.returncode,
                     "wall_s": round(wall, 2)}
        try:
            res = json.loads(done.stdout[done.stdout.index("{"):])
            q = res["stages"][0]
            row.update(quantize_s=q["seconds"], peak_bytes=q.get("peak_memory_bytes"),
                       tokens_per_s=round(windows * 2048 / q["seconds"]))
        except (ValueError, KeyError, IndexError) as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
