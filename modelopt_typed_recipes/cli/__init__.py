"""Command line: ``python -m modelopt_typed_recipes`` or ``mtrecipes``.

Each command group lives in its own module and registers its sub-commands in ``COMMAND_MODULES``;
this module only parses, dispatches and turns typed errors into exit code 2 with one paragraph.
Command modules import heavy things (torch, ModelOpt) inside their handlers only.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from ..errors import RecipeError, one_line

# modules with a `register(subparsers)` function; each sub-command sets `handler=` via set_defaults
COMMAND_MODULES = (
    "modelopt_typed_recipes.cli.arch_cmds",
    "modelopt_typed_recipes.cli.plan_cmds",
    "modelopt_typed_recipes.cli.run_cmds",
    "modelopt_typed_recipes.cli.check_cmds",
)


RANK_GRACE_S = 5.0
"""How long a rank other than 0 waits after a typed error before it exits (all ranks check the same recipe)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 too; keep it one paragraph
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {one_line(message, 500)}\n")  # argparse repeats the bad value: bound it
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="mtrecipes", description="Typed ModelOpt post-training recipes for Megatron-Core.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not written yet
                continue
            raise
        module.register(sub)
    # every `COMMAND --help` opens with what the command does: its one-line help, unless it has its own text
    for action in sub._choices_actions:  # argparse's record of each sub-command's help
        command = sub.choices[action.dest]
        if not command.description and action.help:
            command.description = action.help[0].upper() + action.help[1:] + "."
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except RecipeError as err:
        if getattr(args, "json", False) and os.environ.get("RANK", "0") == "0":  # one document under torchrun
            from .output import print_json

            print_json({"ok": False, "errors": [err.to_dict()]})
        sys.stderr.write(f"error: {err}\n")
        if os.environ.get("RANK", "0") != "0":
            # torchrun stops every rank when the first exits: let rank 0, which reports (--json), go first
            sys.stderr.flush()
            time.sleep(RANK_GRACE_S)
        return 2
    except KeyboardInterrupt:
        return 130


def command_line(argv: Sequence[str] | None = None) -> NoReturn:
    """``main`` for a process that ends with the command (``python -m``, ``mtrecipes``): once its output is
    flushed, every object is moved out of the garbage collector's reach (``gc.freeze``), so the interpreter's
    exit does not walk the millions of objects torch, Megatron-Core, ModelOpt and transformers leave (measured:
    2-4 s of a run's wall on the CPU machine, 0.2-0.6 s with the freeze). Exit handlers still run; nothing is
    written after this point. Not for ``main`` called in a longer-lived process (tests, notebooks)."""
    import gc

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    raise SystemExit(code)


if __name__ == "__main__":
    command_line()
