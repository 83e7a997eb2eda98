"""``check RECIPE.yaml [--json]``, ``recipes [--model M] [--technique T] [--json]`` and ``cp NAME FILE.yaml``.

Both stay in plain Python (no torch, no ModelOpt import) so they answer in well under a second.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .output import print_json, say, table
from .refs import load_ref

if TYPE_CHECKING:
    from ..plan.run_plan import RunPlan


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

    c = sub.add_parser("cp", help="write a named recipe out as a YAML file to edit (then run or check the file)")
    c.add_argument("name", help="a named recipe (Qwen/Qwen3-8B:fp8; `recipes` lists them)")
    c.add_argument("file", help="the YAML file to write")
    c.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    c.set_defaults(handler=_cp)


def _check(args: argparse.Namespace) -> int:
    import attrs

    from ..plan.check import Environment, check_recipe

    recipe = load_ref(args.recipe)
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
    from rich.markup import escape as e  # messages hold brackets (stages[0]) that are not markup

    status = "[green]ok[/green]" if report.ok else f"[red]{len(report.errors)} error(s)[/red]"
    say(f"[bold]{e(report.recipe)}[/bold] on backend {report.backend}: {status}")
    for err in report.errors:
        line = f"  [red]error[/red] {e(err.path)}: {e(err.message)}" if err.path else f"  [red]error[/red] {e(err.message)}"
        say(line + (f" [dim]({e(err.hint)})[/dim]" if err.hint else ""))
    for w in report.warnings:
        say(f"  [yellow]note[/yellow] {e(w)}")
    for st in report.stages:
        if st.memory is not None:
            terms = st.memory["terms"]
            how = "; ".join(x for x in ("GPU assumed: none known here" if st.memory.get("gpu_assumed") else "",
                                        "estimate" if st.memory.get("measured_formula") else
                                        "estimate, formula not yet measured") if x)
            table(f"stages[{st.index}] {st.label}: memory per rank on a {st.memory['gpu']} ({how})",
                  ["term", "GiB"], ((k, f"{v / 2**30:.3f}") for k, v in [*terms.items(), ("total", st.memory[
                      "per_rank_bytes"])] if v), right=("GiB",))
        if st.coverage is None:
            continue
        table(f"stages[{st.index}] {st.label}: {st.config_source} ({st.coverage.naming} names)",
              ["module kind", "quantized", "total"],
              ((kind, str(v["quantized"]), str(v["total"])) for kind, v in st.coverage.modules.items()),
              right=("quantized", "total"))
        say("  enabled quantizers: " + e(", ".join(f"{k}={v}" for k, v in sorted(st.coverage.quantizers.items()))))
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


def _cp(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import SpecError
    from ..spec.recipe import RandomInit
    from .refs import RECIPE_SUFFIXES, named_recipe

    target = Path(args.file)
    if target.suffix not in RECIPE_SUFFIXES[:2]:
        raise SpecError(f"{args.file!r} is not a .yaml or .yml file", path="file", hint=f"e.g. {target.stem}.yaml")
    if target.exists() and not args.force:
        raise SpecError(f"{args.file} exists", path="file", hint="choose a new name, or --force to overwrite it")
    recipe = named_recipe(args.name)
    head = [(f"# {recipe.name}: written by `mtrecipes cp`; edit, then `mtrecipes check {target.name}` and "
             f"`mtrecipes run {target.name}`")]
    if isinstance(recipe.source, RandomInit):
        head.append("# random weights (a dry run): for real ones, source: {type: hf, path: /path/to/hf_checkpoint}")
    try:
        target.write_text("\n".join(head) + "\n" + recipe.to_yaml(), encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot write {args.file}: {exc.strerror}", path="file") from None
    sys.stderr.write(f"wrote {target}\n")
    return 0
