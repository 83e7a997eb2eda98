#!/usr/bin/env python3
"""ModelOpt's ``megatron_mmlu`` through the Megatron-Core backend at TP=1 and TP=2, against our own
log-likelihood MMLU scorer (the Hugging Face backend) on the same questions, before and after quantization.

Three steps, so that the GPU part can run the TP=1 and Hugging Face jobs at once on two GPUs, then TP=2 on both:

    python3 benchmarks/mmlu_gpu.py fixture DIR [--questions 100]     # the MMLU-format fixture (cais/mmlu layout)
    torchrun --nproc-per-node N benchmarks/mmlu_gpu.py run --backend megatron --tp N --fixture DIR --rows ROWS
    python3 benchmarks/mmlu_gpu.py run --backend hf --fixture DIR --rows ROWS
    python3 benchmarks/mmlu_gpu.py compare ROWS [--summary SUMMARY.json]   # checks; exit 1 when one fails

The fixture: held-out reference-llama items of the built-in next_sentence task (seed 11), written as MMLU
questions (passage, "Which sentence comes next?", four sentences as choices A-D), 0-shot, as Megatron-LM's
``mmlu.sh`` runs ModelOpt's ``megatron_mmlu``. ``run`` appends one JSON row per (backend, TP, format) to ROWS
(rank 0); no new format starts after ``--budget`` seconds. ``--cpu-smoke`` runs on the CPU through the test-only
Megatron shim (plans as for a GPU; megatron_mmlu's ``.cuda()`` kept on the CPU) to try the script before a call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
SUBJECTS = ("python_language", "python_library")
DEV = 10


def write_fixture(folder: Path, questions: int) -> dict:
    from modelopt_typed_recipes.runtime.tasks.items import (
        next_sentence_items,
        questions_from_items,
        task_documents,
        write_mmlu_folder,
    )
    from modelopt_typed_recipes.spec.evaluation import NextSentence

    source = NextSentence(num_items=questions + DEV, seed=11)
    qs = questions_from_items(next_sentence_items(source, task_documents(source, path="fixture")), subjects=SUBJECTS)
    write_mmlu_folder(qs[DEV:], folder, dev=qs[:DEV])
    return {"fixture": str(folder), "test": len(qs) - DEV, "dev": DEV, "subjects": list(SUBJECTS)}


def environment() -> dict:
    import importlib.metadata as md
    import importlib.util

    import torch

    env = {p: (md.version(p) if importlib.util.find_spec(m) else None) for p, m in (
        ("torch", "torch"), ("megatron-core", "megatron"), ("nvidia-modelopt", "modelopt"),
        ("transformers", "transformers"), ("datasets", "datasets"), ("pyarrow", "pyarrow"))}
    env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return env


def run(args: argparse.Namespace) -> int:
    from modelopt_typed_recipes.runtime.api import run_post_training
    from tasks_gpu import reference_recipe

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tp = args.tp if args.backend == "megatron" else 1
    smoke = None
    if args.cpu_smoke:
        sys.path.insert(0, str(ROOT / "tests"))
        from megatron_cpu_shim import megatron_mmlu_on_cpu, megatron_on_cpu

        if world == 1:
            from _dist import init_gloo_world

            init_gloo_world()
        smoke = [megatron_on_cpu(), megatron_mmlu_on_cpu()]
        for s in smoke:
            s.__enter__()
    env = environment()
    work = Path(os.environ.get("MTR_WORK", "/tmp/mtr_work")) / f"mmlu-{args.backend}-tp{tp}-{args.dtype}"
    t0, failed = time.perf_counter(), 0
    for tag in args.formats:
        row: dict = {"backend": args.backend, "tp": tp, "world_size": world, "format": tag, "dtype": args.dtype}
        if time.perf_counter() - t0 > args.budget:
            row["skipped"] = f"budget of {args.budget:g} s spent"
        else:
            t = time.perf_counter()
            doc = reference_recipe(tag, name=f"mmlu-{tag}", output_dir=str(work / tag), backend=args.backend,
                                   dtype=args.dtype, tasks=[{"task": "mmlu", "path": str(args.fixture), "batch_size": 8}])
            if tp > 1:
                doc["layout"] = {"tensor_parallel": tp}
            try:
                if args.cpu_smoke:
                    res = cpu_run(doc, world)
                else:
                    res = run_post_training(doc, progress=False)
                row.update(seconds=round(time.perf_counter() - t, 1), mmlu=res.tasks["mmlu"],
                           perplexity_before=res.metrics.get("perplexity_before"),
                           perplexity_after=res.metrics.get("perplexity_after"))
            except Exception as exc:  # one format's failure must not hide the others' rows
                failed += 1
                row.update(error=f"{type(exc).__name__}: {exc}"[:600], trace=traceback.format_exc()[-2500:])
        row["env"] = env
        if rank == 0:
            print(json.dumps(row, default=str), flush=True)
            with open(args.rows, "a") as f:
                f.write(json.dumps(row, default=str) + "\n")
    if smoke is not None:
        for s in reversed(smoke):
            s.__exit__(None, None, None)
    return 1 if failed else 0


def cpu_run(doc: dict, world: int):
    """The Megatron-Core backend planned as for GPUs, then run on the CPU (gloo), as the CPU tests do."""
    import attrs

    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.runtime.api import load_recipe
    from modelopt_typed_recipes.runtime.hf import backend as hf_backend
    from modelopt_typed_recipes.runtime.megatron import backend as mc_backend

    recipe = load_recipe(doc)
    env = Environment(megatron_core="0.16.1", modelopt="0.47.0", cuda=True, gpu_count=max(world, 1))
    plan = check_recipe(recipe, env=env, backend=recipe.backend)
    plan.raise_first()
    out = Path(doc["output_dir"])
    plan = attrs.evolve(plan, device="cpu", dtype="fp32", output_dir=out, staging_dir=out.with_name(out.name + ".s"),
                        progress=False)
    return (mc_backend if recipe.backend == "megatron" else hf_backend).run(recipe, plan)


def compare(rows_path: Path, tolerance: float, expect: tuple[str, ...] = (),
            fp32_tolerance: float = 0.02) -> tuple[dict, list[str]]:
    """The checks and the table: every Megatron-Core row scored by megatron_mmlu, every Hugging Face row by our
    log-likelihood scorer; per format, TP=1 and TP=2 and the Hugging Face backend within ``tolerance`` before
    quantization (the same weights; bf16 may flip near-ties), and the fp32 runs within ``fp32_tolerance``."""
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    problems: list[str] = []
    table: dict[str, dict[str, dict]] = {}
    for r in rows:
        who = ("hf" if r["backend"] == "hf" else f"megatron-tp{r['tp']}") + (
            "" if r.get("dtype", "bf16") == "bf16" else f"-{r['dtype']}")
        if "mmlu" not in r:
            problems.append(f"{who} {r['format']}: {r.get('skipped') or r.get('error')}")
            continue
        want = "megatron_mmlu" if r["backend"] == "megatron" else "log-likelihood"
        for phase, m in r["mmlu"].items():
            if m["scorer"] != want:
                problems.append(f"{who} {r['format']} {phase}: scored by {m['scorer']}, not {want}")
        table.setdefault(r["format"], {})[who] = {
            "before": r["mmlu"]["before"], "after": r["mmlu"]["after"], "seconds": r["seconds"],
            "perplexity_before": r["perplexity_before"], "perplexity_after": r["perplexity_after"]}
    for fmt, by in table.items():
        before = {who: v["before"]["accuracy"] for who, v in by.items()}
        for who, acc in before.items():
            for other, acc2 in before.items():
                same = who.endswith("-fp32") == other.endswith("-fp32")  # fp32 against fp32, bf16 against bf16
                limit = fp32_tolerance if who.endswith("-fp32") else tolerance
                if who < other and same and abs(acc - acc2) > limit:
                    problems.append(f"{fmt}: before, {who} {acc:.3f} vs {other} {acc2:.3f} (> {limit})")
    if not table:
        problems.append("no row measured MMLU")
    for who in expect:
        if not any(who in by for by in table.values()):
            problems.append(f"{who}: no row measured MMLU")
    return {"rows": len(rows), "tolerance": tolerance, "fp32_tolerance": fp32_tolerance, "table": table,
            "problems": problems}, render(table)


def render(table: dict) -> list[str]:
    def pct(m: dict) -> str:
        return f"{100 * m['accuracy']:.1f} % ({m['correct']}/{m['total']})"

    lines = ["| format | scored by | backend | before | after | seconds |", "|---|---|---|---:|---:|---:|"]
    for fmt, by in table.items():
        for who in sorted(by):
            v = by[who]
            lines.append(f"| {fmt} | {v['before']['scorer']} | {who} | {pct(v['before'])} | {pct(v['after'])} "
                         f"| {v['seconds']} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("folder", type=Path)
    f.add_argument("--questions", type=int, default=100)
    r = sub.add_parser("run")
    r.add_argument("--backend", choices=("megatron", "hf"), required=True)
    r.add_argument("--tp", type=int, default=1)
    r.add_argument("--fixture", type=Path, required=True)
    r.add_argument("--rows", type=Path, required=True)
    r.add_argument("--formats", nargs="+", default=["fp8", "int4_awq"])
    r.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    r.add_argument("--budget", type=float, default=60.0, help="seconds after which no new format starts")
    r.add_argument("--cpu-smoke", action="store_true")
    c = sub.add_parser("compare")
    c.add_argument("rows", type=Path)
    c.add_argument("--summary", type=Path)
    c.add_argument("--tolerance", type=float, default=0.1, help="bf16 runs: largest accuracy gap before quantization")
    c.add_argument("--fp32-tolerance", type=float, default=0.02)
    c.add_argument("--expect", nargs="*", default=[], help="e.g. megatron-tp1 megatron-tp2 hf: each must have a row")
    args = ap.parse_args()
    if args.cmd == "fixture":
        print(json.dumps(write_fixture(args.folder, args.questions)), flush=True)
        return 0
    if args.cmd == "run":
        return run(args)
    summary, lines = compare(args.rows, args.tolerance, tuple(args.expect), args.fp32_tolerance)
    print("\n".join(lines))
    print(json.dumps({"problems": summary["problems"]}))
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=1, default=str))
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
