#!/usr/bin/env python3
"""Wall time of the README's main command, as a median with its spread and the machine's load beside it.

The CPU machines this project runs on are shared, so one wall time says little: this runs the README's
``run`` command (both example recipes, fresh process each time, outputs in a scratch folder) ``--runs`` times
and prints, as JSON and as one README table cell, the median, minimum and maximum, with the 1-minute load
average (``/proc/loadavg``) read before and after each run.

    .venv/bin/python benchmarks/readme_timings.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["-m", "modelopt_typed_recipes", "run", "examples/reference-fp8.yaml", "examples/reference-int4-awq.yaml"]


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def one_run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mtr-timing-") as tmp:
        (Path(tmp) / "examples").symlink_to(ROOT / "examples")
        before = load1()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *COMMAND], cwd=tmp, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
        return {"seconds": time.perf_counter() - t0, "load_before": before, "load_after": load1()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run() for _ in range(args.runs)]
    secs = [r["seconds"] for r in runs]
    loads = [v for r in runs for v in (r["load_before"], r["load_after"])]
    summary = {"command": " ".join(["python", *COMMAND]), "runs": runs, "median_s": statistics.median(secs),
               "min_s": min(secs), "max_s": max(secs), "load_min": min(loads), "load_max": max(loads),
               "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(summary, indent=2))
    print(f"| ... | median {summary['median_s']:.0f} s (min {summary['min_s']:.0f}, max {summary['max_s']:.0f}; "
          f"{len(secs)} runs at load {summary['load_min']:.1f}-{summary['load_max']:.1f}) |")


if __name__ == "__main__":
    main()
