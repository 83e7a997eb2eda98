"""benchmarks/mmlu_gpu.py compare: the GPU part's checks fail when a Megatron-Core row was not scored by
ModelOpt's megatron_mmlu, when backends disagree beyond the tolerance, or when an expected run is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def row(backend: str, tp: int, scorer: str, correct: int) -> dict:
    m = {"accuracy": correct / 100, "correct": correct, "total": 100, "scorer": scorer}
    return {"backend": backend, "tp": tp, "format": "fp8", "seconds": 1.0, "mmlu": {"before": m, "after": m},
            "perplexity_before": 41.1, "perplexity_after": 41.2}


def compare(tmp_path: Path, rows: list[dict], *expect: str) -> tuple[int, list[str]]:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mmlu_gpu.py"), "compare", str(path),
                        "--summary", str(tmp_path / "s.json"), "--expect", *expect],
                       capture_output=True, text=True, timeout=60)
    return p.returncode, json.loads((tmp_path / "s.json").read_text())["problems"]


def test_compare_passes_agreeing_rows_and_names_each_problem(tmp_path: Path) -> None:
    good = [row("megatron", 1, "megatron_mmlu", 30), row("megatron", 2, "megatron_mmlu", 31),
            row("hf", 1, "log-likelihood", 29)]
    assert compare(tmp_path, good, "megatron-tp1", "megatron-tp2", "hf") == (0, [])
    rc, problems = compare(tmp_path, [row("megatron", 1, "log-likelihood", 30), good[2]], "megatron-tp1")
    assert rc == 1 and any("scored by log-likelihood, not megatron_mmlu" in p for p in problems)
    rc, problems = compare(tmp_path, [good[0], row("hf", 1, "log-likelihood", 50)], "megatron-tp2")
    assert rc == 1 and any("megatron-tp1 0.300 vs" in p or "hf 0.500 vs" in p for p in problems)
    assert any("megatron-tp2: no row" in p for p in problems)
