"""``run RECIPE.yaml [RECIPE.yaml ...] [--json] [--set KEY=VALUE ...]``: post-train, then print a table.

Several recipes are all read and validated first (a recipe that is not valid stops the command before any
runs), then run one after another in one process (the model's baseline perplexity is measured once) and share
one table; a recipe that fails its checks or its run with a typed error is reported and the next one still runs
(exit 2 if any failed). ``--json`` prints the result (a list for several recipes, each a result or
``{"ok": false, "errors": [...]}``) on stdout; progress bars and ModelOpt's own messages go to stderr. A
recipe whose outputs are already in its output folder (same hash) is not redone unless ``--force``. A recipe whose layout needs more processes than this one
prints the ``torchrun`` command to start it (``--launch`` starts it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

from .output import print_json, say, table

if TYPE_CHECKING:
    from ..spec.recipe import Recipe


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run post-training recipes (quantize, auto-quantize, prune, export) and "
                                   "print perplexity before/after with wall times")
    p.add_argument("recipes", nargs="+", metavar="RECIPE",
                   help="recipe YAML/JSON files or named recipes (Qwen/Qwen3-8B:fp8; `recipes` lists them)")
    p.add_argument("--json", action="store_true", help="print the result(s) as JSON on stdout")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, dotted keys allowed (e.g. --set calibration.num_samples=16)")
    p.add_argument("--output-dir", help="override output_dir (with several recipes: a parent folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true",
                   help="redo a recipe even when its output folder already holds its finished outputs")
    p.add_argument("--verbose", action="store_true", help="show the libraries' warnings and notes (ModelOpt, "
                   "Megatron-Core, transformers, torch)")
    p.add_argument("--launch", action="store_true", help="start the torchrun command a multi-GPU recipe needs")
    p.set_defaults(handler=_run, run_parser=p)


def _launch_command(recipe: Recipe, args: argparse.Namespace) -> list[str] | None:
    """``torchrun`` argv when the recipe's layout needs more processes than this one has. Not for a recipe that
    runs on the Hugging Face backend (``backend: auto`` decided as the run will decide it): that backend runs in
    one process, and ``check`` refuses it under torchrun."""
    need = recipe.layout.world_size if recipe.layout is not None else 1
    from ..plan.backend_choice import choose_backend
    from ..plan.environment import Environment
    from ..plan.resolve import launch_world

    have = launch_world()[0]
    if need <= have or choose_backend(recipe, Environment.detect()) == "hf":
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={need}",
            "-m", "modelopt_typed_recipes", *child_argv(args)]


def child_argv(args: argparse.Namespace) -> list[str]:
    """The command line again, from the parsed arguments, without ``--launch``: every flag the user gave
    (and any flag added later) reaches the launched processes, whatever abbreviation or order was typed."""
    parser: argparse.ArgumentParser = args.run_parser
    out = ["run"]
    for action in parser._actions:  # argparse keeps its arguments here (no public accessor)
        value: Any = getattr(args, action.dest, None)
        if isinstance(action, argparse._HelpAction) or action.dest == "launch" or value == action.default:
            continue
        if not action.option_strings:  # the recipes
            out += list(value)
        elif isinstance(action, argparse._StoreTrueAction):
            out.append(action.option_strings[-1])
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                out += [action.option_strings[-1], str(item)]
        else:
            out += [action.option_strings[-1], str(value)]
    return out


def read_recipes(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """Each recipe of the command line with its ``--set`` and ``--output-dir``, all validated before the first
    runs: (the name given, the :class:`Recipe`)."""
    from pathlib import Path

    from ..runtime.api import load_recipe
    from ..spec.serde import parse_overrides
    from .refs import load_ref

    overrides = parse_overrides(args.overrides, flag="--set")
    recipes = []
    for path in args.recipes:
        extra = dict(overrides)
        if args.output_dir:
            extra["output_dir"] = args.output_dir if len(args.recipes) == 1 else str(
                Path(args.output_dir) / Path(path).stem.replace(":", "-"))
        recipes.append((path, load_recipe(load_ref(path), extra)))
    return recipes


def _run(args: argparse.Namespace) -> int:
    recipes = read_recipes(args)
    launches = {path: argv for path, recipe in recipes if (argv := _launch_command(recipe, args)) is not None}
    if launches:
        sizes = {argv[4] for argv in launches.values()}
        if len(launches) != len(recipes) or len(sizes) > 1:
            from ..errors import LayoutError

            raise LayoutError("these recipes need different numbers of processes: "
                              + ", ".join(f"{p} {a[4].split('=')[1]}" for p, a in launches.items()),
                              path="layout", hint="run them one command at a time")
        argv = next(iter(launches.values()))
        env = "NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1"
        if not args.launch:
            what = " ".join(args.recipes)
            print(f"{what} needs {argv[4].split('=')[1]} processes; start it with:\n  {env} {shlex.join(argv)}")
            return 0
        os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1")
        os.execv(argv[0], argv)

    from ..errors import RecipeError
    from ..runtime.api import run_post_training

    results: list[Any] = []
    failed: list[tuple[str, RecipeError]] = []
    for path, recipe in recipes:
        if is_dry_run(recipe):
            sys.stderr.write(f"note: {path} runs on random weights (a dry run); for real ones: "
                             "--set 'source={type: hf, path: DIR}'\n")
        try:
            result = run_post_training(recipe, progress=not args.no_progress, force=args.force,
                                       verbose=args.verbose)
        except RecipeError as err:
            if len(recipes) == 1:
                raise
            failed.append((path, err))
            results.append((path, err))
            sys.stderr.write(f"error: {path}: {err}\n")
            continue
        results.append((path, result))
        for note in result.notes:
            sys.stderr.write(f"note: {note}\n")
    from ..runtime.distributed import finish

    finish()  # torch.distributed's own teardown, not the interpreter's at exit
    from ..plan.resolve import launch_world

    if launch_world()[1] != 0:  # RANK=abc is a typed error there
        return 0 if not failed else 2
    if args.json:
        if len(results) == 1:
            print_json(results[0][1].to_dict())
        else:
            print_json([{"recipe_file": p, **r.to_dict()} if not isinstance(r, RecipeError)
                        else {"recipe_file": p, "ok": False, "errors": [r.to_dict()]} for p, r in results])
    else:
        done = [r for _p, r in results if not isinstance(r, RecipeError)]
        if done:
            _print_table(done)
        for p, error in failed:
            sys.stderr.write(f"error: {p}: {error}\n")
    return 2 if failed else 0


def is_dry_run(recipe: Any) -> bool:
    from ..spec.recipe import RandomInit

    return isinstance(recipe.source, RandomInit)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _print_table(results: list[Any]) -> None:
    from rich.markup import escape

    columns = ("recipe", "ppl before", "ppl after", "change", "ppl export", "bits/weight", "quantize s", "export s",
               "total s")
    rows = []
    for r in results:
        m = r.metrics
        change = m.get("perplexity_change_pct")
        quant = [s for s in r.stages if s.technique in ("quantize", "auto_quantize")]
        export = [s for s in r.stages if s.technique == "export"]
        bits = next((s.effective_bits for s in quant if s.effective_bits is not None), None)
        rows.append((
            r.recipe_name,
            _fmt(m.get("perplexity_before")),
            _fmt(m.get("perplexity_after")),
            "-" if change is None else f"{change:+.2f} %",
            _fmt(m.get("perplexity_export")),
            _fmt(bits),
            _fmt(sum(s.seconds for s in quant) if quant else None, ".1f"),
            _fmt(sum(s.seconds for s in export) if export else None, ".1f"),
            f"{r.seconds:.1f}",
        ))
    table("Held-out perplexity before and after (lower is better), wall times in seconds", columns, rows,
          right=columns[1:])
    say("ppl after: the fake-quantized model in memory; ppl export: the exported checkpoint re-loaded "
        "from disk (weights decoded from their stored low-precision values and scales).")
    for r in results:
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in r.timings.items())
        say(f"[bold]{escape(r.recipe_name)}[/] -> {escape(r.output_dir)}  ({steps})")
