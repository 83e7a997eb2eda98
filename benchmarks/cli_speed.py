"""Wall time of the architecture CLI against importing ModelOpt's quantization module (the baseline a
user pays today before anything happens), measured in one run on this machine.

Usage: python benchmarks/cli_speed.py [--runs 7]   (prints medians in ms and ratios to the baseline)
Targets: list <= 150 ms, show <= 200 ms median. Output is piped (not a terminal), so tables are plain text;
the `list (terminal, rich)` row runs `list` under a pseudo-terminal, where the rich table is drawn.
"""

from __future__ import annotations

import argparse
import os
import platform
import pty
import statistics
import subprocess
import sys
import time

PY = sys.executable
CASES = [
    ("list", [PY, "-m", "modelopt_typed_recipes", "list"], False),
    ("list (terminal, rich)", [PY, "-m", "modelopt_typed_recipes", "list"], True),
    ("show qwen3-8b", [PY, "-m", "modelopt_typed_recipes", "show", "qwen3-8b"], False),
    ("flags qwen3-8b", [PY, "-m", "modelopt_typed_recipes", "flags", "qwen3-8b"], False),
    ("python -c pass (interpreter floor)", [PY, "-c", "pass"], False),
    ("import modelopt.torch.quantization (baseline)", [PY, "-c", "import modelopt.torch.quantization"], False),
]
TARGETS_MS = {"list": 150, "show qwen3-8b": 200}


def _once(argv: list[str], tty: bool) -> float:
    start = time.perf_counter()
    if tty:
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(argv[0], argv)
        while True:
            try:
                if not os.read(fd, 65536):
                    break
            except OSError:
                break
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
    else:
        rc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    elapsed = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"{' '.join(argv)} exited {rc}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
          f"{args.runs} runs each after 1 warm-up; median wall time")
    medians: dict[str, float] = {}
    for label, argv, tty in CASES:
        _once(argv, tty)  # warm the file cache
        times = [_once(argv, tty) for _ in range(args.runs)]
        medians[label] = statistics.median(times) * 1000
    base = medians["import modelopt.torch.quantization (baseline)"]
    print(f"{'command':48} {'median ms':>10} {'vs baseline':>12} {'target':>8}")
    for label, ms in medians.items():
        target = TARGETS_MS.get(label)
        verdict = "" if target is None else (f"<= {target} {'ok' if ms <= target else 'MISSED'}")
        print(f"{label:48} {ms:10.1f} {ms / base:11.3f}x {verdict:>8}")


if __name__ == "__main__":
    main()
