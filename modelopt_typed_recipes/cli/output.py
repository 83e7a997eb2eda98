"""How every command prints: one JSON writer for ``--json``, one table writer, one rich console.

Kept here so the commands agree (indent, widths, what happens when stdout is piped) and so rich is
imported only when a command really prints through it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any


def print_json(obj: Any) -> None:
    """``--json`` output: one indented document on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def console() -> Any:
    """A rich console on stdout; piped output gets at least 120 columns so tables do not fold."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=max(out.width, 120))


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A rich table on a terminal; aligned plain text when piped (greppable, and no 40 ms rich import)."""
    rows = [list(r) for r in rows]
    if not sys.stdout.isatty():
        widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
        out = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
        out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        sys.stdout.write("\n".join(out) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*row)
    Console(highlight=False).print(t)
