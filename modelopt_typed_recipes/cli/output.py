"""How every command prints: one JSON writer for ``--json``, one table writer, one line writer.

Kept here so the commands agree (indent, widths, what happens when stdout is piped) and so rich is
imported only when a command really prints through it. :func:`plain` is the one place that decides
between rich (a terminal) and plain aligned text (a pipe or a file: greppable, no boxes, no colours).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterable, Sequence
from typing import Any


def print_json(obj: Any) -> None:
    """``--json`` output: one indented document on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def plain() -> bool:
    """Plain text when stdout is not a terminal (piped, redirected, captured)."""
    return not sys.stdout.isatty()


def console() -> Any:
    """A rich console on stdout for lines with markup; piped, it writes the text without styles or folding."""
    from rich.console import Console

    if plain():
        return Console(highlight=False, soft_wrap=True, no_color=True, width=max(Console().width, 120))
    return Console(highlight=False)


def say(markup: str) -> None:
    """One line with rich markup (``[red]error[/red] ...``); plain text when piped."""
    console().print(markup)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], *, right: Collection[str] = (),
          header: bool = True, caption: str = "", dim: Collection[int] = ()) -> None:
    """A rich table on a terminal; aligned plain text when piped (greppable, and no 40 ms rich import).

    ``right``: columns aligned right; ``dim``: indices of rows shown dimmed on a terminal (defaults, say).
    """
    rows = [list(r) for r in rows]
    if plain():
        widths = [max([len(c) if header else 0, *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]

        def fmt(values: Sequence[str]) -> str:
            cells = (v.rjust(w) if c in right else v.ljust(w) for v, w, c in zip(values, widths, columns, strict=True))
            return "  ".join(cells).rstrip()

        out = [title, *([fmt(columns)] if header else []), *(fmt(r) for r in rows), *([caption] if caption else [])]
        sys.stdout.write("\n".join(out) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=header, caption=caption or None)
    for i, col in enumerate(columns):
        t.add_column(col, overflow="fold", justify="right" if col in right else "left",
                     style="bold" if not header and i == 0 else None)
    for i, row in enumerate(rows):
        t.add_row(*row, style="dim" if i in dim else None)
    Console(highlight=False).print(t)
