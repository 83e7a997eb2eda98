"""``check RECIPE.yaml [--json]`` and ``recipes [--model M] [--technique T] [--json]``.

Both stay in plain Python (no torch, no ModelOpt import) so they answer in well under a second.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .output import console, print_json, table

if TYPE_CHECKING:
    from ..plan.run_plan import RunPlan
    from ..spec.recipe import Recipe


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="check a recipe before any GPU work (names, formats, layouts, versions, "
                                     "pattern coverage)")
    p.add_argument("recipe", help="a recipe YAML/JSON file, or a named recipe (Qwen/Qwen3-8B:fp8)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--backend", choices=["megatron", "hf"], help="check for this backend (default: as the run "
                                                                  "would choose)")
    p.add_argument("--assume-gpu", action="store_true", help="check as if a CUDA GPU were present")
    p.set_defaults(handler=_check)

    r = sub.add_parser("recipes", help="list named recipes")
    r.add_argument("--model", help="only this model (HF id or registry name)")
    r.add_argument("--technique", help="only this technique (fp8, nvfp4, auto, prune, export ...)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=_recipes)


def _load(ref: str) -> Recipe:
    """A recipe file, or a named recipe (it carries its layout) checked as written against a placeholder source."""
    from pathlib import Path

    from ..spec.recipe import RandomInit, Recipe

    if Path(ref).suffix in (".yaml", ".yml", ".json") or Path(ref).is_file():
        return Recipe.load(ref)
    from ..catalog.recipes import get_recipe

    named = get_recipe(ref)
    out = f"outputs/{named.name.replace('/', '_').replace(':', '-')}"
    return named.to_recipe(source=RandomInit(), output_dir=out)


def _check(args: argparse.Namespace) -> int:
    import attrs

    from ..plan.check import Environment, check_recipe

    recipe = _load(args.recipe)
    env = Environment.detect()
    if args.assume_gpu:
        env = attrs.evolve(env, cuda=True, gpu_count=max(env.gpu_count, 1))
    report = check_recipe(recipe, env=env, backend=args.backend)
    if args.json:
        print_json(report.to_dict())
    else:
        _print_report(report)
    return 0 if report.ok else 2


def _print_report(report: RunPlan) -> None:
    from rich.table import Table

    out = console()
    status = "[green]ok[/green]" if report.ok else f"[red]{len(report.errors)} error(s)[/red]"
    out.print(f"[bold]{report.recipe}[/bold] on backend {report.backend}: {status}")
    for err in report.errors:
        line = f"  [red]error[/red] {err.path}: {err.message}" if err.path else f"  [red]error[/red] {err.message}"
        out.print(line + (f" [dim]({err.hint})[/dim]" if err.hint else ""), highlight=False)
    for w in report.warnings:
        out.print(f"  [yellow]note[/yellow] {w}", highlight=False)
    for st in report.stages:
        if st.coverage is None:
            continue
        t = Table(title=f"stages[{st.index}] {st.label}: {st.config_source} ({st.coverage.naming} names)")
        t.add_column("module kind")
        t.add_column("quantized", justify="right")
        t.add_column("total", justify="right")
        for kind, v in st.coverage.modules.items():
            t.add_row(kind, str(v["quantized"]), str(v["total"]))
        out.print(t)
        out.print("  enabled quantizers: " + ", ".join(f"{k}={v}" for k, v in sorted(st.coverage.quantizers.items())))
    sys.stdout.flush()


def _recipes(args: argparse.Namespace) -> int:
    from ..catalog.recipes import list_recipes

    found = list_recipes(model=args.model, technique=args.technique)
    summaries = [r.summary() for r in found]
    if args.json:
        print_json(summaries)
        return 0
    table(f"{len(found)} named recipe(s)", ["name", "stages", "layout", "export layout"],
          ((s["name"], " + ".join(s["stages"]), s["layout"], s["export_layout"] or "re-planned") for s in summaries))
    return 0
