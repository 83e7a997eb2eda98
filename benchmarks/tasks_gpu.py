#!/usr/bin/env python3
"""Task accuracy per format on the GPU: reference-llama through the Megatron-Core backend.

For each format (the rows of ``accuracy_gpu.md``) one ``run_post_training`` call on the Megatron-Core backend
measures, before and after quantization, on the same weights:

* held-out perplexity (32 windows x 256 tokens, as ``accuracy_gpu.md``'s perplexity table);
* ``next_sentence`` (the built-in task: the true next sentence of a held-out passage among four, chance 25 %)
  through ModelOpt's ``megatron_prefill``;
* ``mmlu`` on an MMLU-format fixture (the ``cais/mmlu`` layout, written from held-out items of another seed)
  through ModelOpt's ``megatron_mmlu``, as Megatron-LM's ``mmlu.sh`` runs it (0-shot).

Rows are appended to ``$OUT/tasks_gpu.jsonl`` as they finish, and no new format starts after
``--budget`` seconds, so a call cut short still leaves every finished row. With ``--cpu-smoke`` it runs one
small case on the CPU through the test-only Megatron shim (to try the script before a GPU call).

    python3 benchmarks/tasks_gpu.py [--items 200] [--mmlu 100] [--budget 100] [--formats fp8 nvfp4 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FORMATS = ("fp8", "nvfp4", "int4_awq", "int8_sq", "w4a8_awq", "mxfp8", "auto-6.0bits")
SUBJECTS = ("python_language", "python_library")


def stage_for(tag: str) -> dict:
    if tag.startswith("auto-"):
        return {"technique": "auto_quantize", "effective_bits": float(tag[5:-4]), "formats": ["int4_awq", "fp8"]}
    return {"technique": "quantize", "format": tag}


def reference_recipe(tag: str, *, name: str, tasks: list, output_dir: str, backend: str, dtype: str) -> dict:
    """The recipe both GPU task benchmarks run: reference-llama, the stage of ``tag``, the built-in calibration
    and held-out text (64 and 32 windows of 256), the given tasks, on CUDA."""
    return {
        "name": name, "model": "reference-llama", "source": {"type": "builtin"}, "stages": [stage_for(tag)],
        "calibration": {"dataset": "reference-train", "num_samples": 64, "seq_length": 256, "batch_size": 8},
        "evaluation": {"dataset": "reference-heldout", "num_samples": 32, "seq_length": 256, "batch_size": 8},
        "tasks": tasks, "output_dir": output_dir, "backend": backend, "device": "cuda", "dtype": dtype,
    }


def smoke_run(doc: dict):
    """The CPU smoke: the Megatron-Core backend planned as for a GPU, then run on the CPU (as the CPU tests do)."""
    import attrs

    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.runtime.api import load_recipe
    from modelopt_typed_recipes.runtime.megatron import backend

    recipe = load_recipe({**doc, "device": "cuda"})
    plan = check_recipe(recipe, env=Environment(megatron_core="0.16.1", modelopt="0.47.0", cuda=True, gpu_count=1),
                        backend="megatron")
    plan.raise_first()
    out = Path(doc["output_dir"])
    plan = attrs.evolve(plan, device="cpu", dtype="fp32", output_dir=out, staging_dir=out.with_name(out.name + ".s"),
                        progress=False)
    return backend.run(recipe, plan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=200, help="next_sentence items")
    ap.add_argument("--mmlu", type=int, default=100, help="test questions of the MMLU fixture (0: no MMLU)")
    ap.add_argument("--budget", type=float, default=100.0, help="seconds after which no new format starts")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS))
    ap.add_argument("--cpu-smoke", action="store_true", help="one small case on the CPU (the Megatron shim)")
    ap.add_argument("--render", type=Path, help="print the markdown table of a tasks_gpu.jsonl (no measurement)")
    args = ap.parse_args()
    if args.render:
        print(render(args.render))
        return
    out = Path(os.environ.get("OUT", ROOT / "benchmarks" / "raw" / "session5" / "evalres"))
    out.mkdir(parents=True, exist_ok=True)
    raw = out / ("tasks_cpu_smoke.jsonl" if args.cpu_smoke else "tasks_gpu.jsonl")
    raw.write_text("")

    import importlib.metadata as md
    import importlib.util

    has_datasets = importlib.util.find_spec("datasets") is not None
    env = {p: (md.version(p) if importlib.util.find_spec(m) else None) for p, m in (
        ("torch", "torch"), ("megatron-core", "megatron"), ("nvidia-modelopt", "modelopt"),
        ("transformers", "transformers"), ("datasets", "datasets"))}
    import torch

    env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(json.dumps({"env": env}), flush=True)

    from modelopt_typed_recipes.runtime.api import run_post_training
    from modelopt_typed_recipes.runtime.tasks.items import (
        next_sentence_items,
        questions_from_items,
        task_documents,
        write_mmlu_folder,
    )
    from modelopt_typed_recipes.spec.evaluation import NextSentence

    smoke = None
    if args.cpu_smoke:
        sys.path.insert(0, str(ROOT / "tests"))
        from _dist import init_gloo_world
        from megatron_cpu_shim import megatron_on_cpu

        init_gloo_world()
        smoke = megatron_on_cpu()
        smoke.__enter__()

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mtr-tasks-gpu-") as tmp:
        tasks: list[dict] = [{"task": "next_sentence", "num_items": args.items}]
        if args.mmlu and has_datasets:
            source = NextSentence(num_items=args.mmlu + 10, seed=11)
            qs = questions_from_items(next_sentence_items(source, task_documents(source, path="fixture")),
                                      subjects=SUBJECTS)
            folder = write_mmlu_folder(qs[10:], Path(tmp) / "mmlu", dev=qs[:10])
            tasks.append({"task": "mmlu", "path": str(folder), "batch_size": 8})
        elif args.mmlu:
            print(json.dumps({"note": "datasets is not installed here: no MMLU fixture"}), flush=True)
        for tag in args.formats:
            if time.perf_counter() - t0 > args.budget:
                row = {"format": tag, "skipped": f"budget of {args.budget:g} s spent"}
                print(json.dumps(row), flush=True)
                with raw.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                continue
            t = time.perf_counter()
            doc = reference_recipe(tag, name=f"tasks-{tag}", tasks=tasks, output_dir=f"{tmp}/{tag}", backend="megatron",
                                   dtype="bf16")
            try:
                res = smoke_run(doc) if args.cpu_smoke else run_post_training(doc, progress=False)
                row = {"format": tag, "seconds": round(time.perf_counter() - t, 1), "metrics": res.metrics,
                       "tasks": {name: {phase: {k: v for k, v in r.items() if k != "texts"}
                                        for phase, r in phases.items()} for name, phases in res.tasks.items()},
                       "timings": {k: round(v, 2) for k, v in res.timings.items()}}
            except Exception as exc:  # one format's failure must not hide the others' rows
                row = {"format": tag, "error": f"{type(exc).__name__}: {exc}"[:400],
                       "trace": traceback.format_exc()[-2000:]}
            print(json.dumps(row, default=str), flush=True)
            with raw.open("a") as f:
                f.write(json.dumps(row, default=str) + "\n")
    if smoke is not None:
        smoke.__exit__(None, None, None)
    print(json.dumps({"wall_s": round(time.perf_counter() - t0, 1), "raw": str(raw)}), flush=True)


def render(raw: Path) -> str:
    """The table ``accuracy_gpu.md`` shows: perplexity and both tasks, before and after, per format."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f} %"

    lines = [("| format | ppl before | ppl after | change | next-sentence before | after | MMLU fixture before "
              "| after | seconds |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for line in raw.read_text().splitlines():
        r = json.loads(line)
        if "metrics" not in r:
            lines.append(f"| {r['format']} | {r.get('skipped') or r.get('error', '?')} |" + " |" * 7)
            continue
        m = r["metrics"]
        lines.append(f"| {r['format']} | {m['perplexity_before']:.3f} | {m['perplexity_after']:.3f} | "
                     f"{100 * (m['perplexity_after'] / m['perplexity_before'] - 1):+.2f} % | "
                     f"{pct(m.get('next_sentence_accuracy_before'))} | {pct(m.get('next_sentence_accuracy_after'))} | "
                     f"{pct(m.get('mmlu_accuracy_before'))} | {pct(m.get('mmlu_accuracy_after'))} | {r['seconds']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
