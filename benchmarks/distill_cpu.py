"""QAD on the CPU, Hugging Face backend: PTQ alone against PTQ then distillation, on reference-llama.

Runs two recipes with the same calibration and held-out windows (reference-heldout, 32 windows of 256 tokens,
as benchmarks/accuracy.md): FORMAT -> export, and FORMAT -> distill -> export (teacher: the model before
quantization). Writes the results (metrics and the distill stage's details) as JSON under OUT.

    python benchmarks/distill_cpu.py [--format int4_awq] [--steps 30] [--out benchmarks/raw/session5/distill_cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any


def recipe(fmt: str, out: Path, distill: dict[str, Any] | None) -> dict[str, Any]:
    stages: list[dict[str, Any]] = [{"technique": "quantize", "format": fmt}]
    if distill is not None:
        stages.append({"technique": "distill", **distill})
    stages.append({"technique": "export"})
    return {"model": "reference-llama", "source": "builtin", "stages": stages, "output_dir": str(out),
            "backend": "hf", "device": "cpu",
            "calibration": {"dataset": "reference-train", "num_samples": 32, "seq_length": 256, "batch_size": 8},
            "evaluation": {"dataset": "reference-heldout", "num_samples": 32, "seq_length": 256, "batch_size": 8}}


def main() -> None:
    import torch

    from modelopt_typed_recipes.runtime.api import run_post_training

    ap = argparse.ArgumentParser()
    ap.add_argument("--format", default="int4_awq")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--seq-length", type=int, default=128)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--out", default="benchmarks/raw/session5/distill_cpu")
    ap.add_argument("--work", default="/tmp/distill_cpu")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    distill = {"steps": args.steps, "micro_batch_size": args.micro_batch_size, "seq_length": args.seq_length,
               "learning_rate": args.learning_rate, "min_learning_rate": args.learning_rate / 100}
    runs: dict[str, Any] = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                                        "threads": torch.get_num_threads()}, "args": vars(args)}
    for name, d in (("ptq", None), ("qad", distill)):
        t = time.perf_counter()
        doc = recipe(args.format, Path(args.work) / name, d)
        result = run_post_training(doc, progress=False, force=True)
        runs[name] = {"recipe": doc, "wall_seconds": time.perf_counter() - t, "metrics": result.metrics,
                      "stages": [s.to_dict() for s in result.stages]}
        print(name, json.dumps(result.metrics), flush=True)
    (out / f"distill_cpu_{args.format}.json").write_text(json.dumps(runs, indent=1, default=str))
    qad = next(s for s in runs["qad"]["stages"] if s["technique"] == "distill")["details"]
    base = runs["ptq"]["metrics"]["perplexity_before"]
    print(json.dumps({"base": base, "ptq_export": runs["ptq"]["metrics"]["perplexity_export"],
                      "ptq_in_memory": runs["ptq"]["metrics"]["perplexity_after"],
                      "qad_in_memory": runs["qad"]["metrics"]["perplexity_after"],
                      "qad_export": runs["qad"]["metrics"]["perplexity_export"],
                      "tokens": qad["tokens"], "tokens_per_second": qad["tokens_per_second"],
                      "train_seconds": qad["train_seconds"]}, indent=1))


if __name__ == "__main__":
    main()
