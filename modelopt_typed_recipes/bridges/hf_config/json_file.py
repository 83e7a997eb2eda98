"""Reading a user's ``config.json`` with bounds: size, encoding, nesting and integer length.

A ``config.json`` is input we did not write, so every way it can be wrong ends in a :class:`SpecError`
naming the file: more than :data:`MAX_BYTES` (``/dev/zero`` stops there), bytes that are not UTF-8,
invalid JSON, nesting deeper than :data:`MAX_DEPTH`, an integer longer than :data:`MAX_INT_DIGITS`
digits, a lone surrogate escape, or a top level that is not an object. Published configs are a few
kilobytes, at most four levels deep, with integers of at most a dozen digits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import SpecError

MAX_BYTES = 4 * 2**20
MAX_DEPTH = 64
MAX_INT_DIGITS = 4300
"""Python's own limit for converting digits to an integer (``sys.get_int_max_str_digits``)."""


class _TooLong(Exception):
    def __init__(self, digits: int) -> None:
        super().__init__(digits)
        self.digits = digits


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _TooLong(digits)
    try:
        return int(text)
    except ValueError:  # a lower limit set by this interpreter (sys.set_int_max_str_digits)
        raise _TooLong(digits) from None


def _check_tree(value: Any, where: str) -> None:
    """Depth and string checks without recursion (a deep document must not overflow our own stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                raise SpecError(f"nested deeper than {MAX_DEPTH} levels", path=where, hint="not a config.json")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, item in items:
                if isinstance(key, str):
                    _check_str(key, where)
                stack.append((item, depth + 1))
        elif isinstance(node, str):
            _check_str(node, where)


def _check_str(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SpecError(
            f"string with an unpaired surrogate escape (\\u{ord(text[exc.start]):04x})", path=where
        ) from None


def parse_config_json(data: bytes | str, where: str = "config.json") -> dict[str, Any]:
    """The JSON object in ``data`` (bytes are decoded as UTF-8), within the bounds above.

    ``where`` names the source in errors (the file's path).
    """
    if len(data) > MAX_BYTES:
        raise SpecError(f"larger than {MAX_BYTES // 2**20} MiB: not a config.json", path=where)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SpecError(
                f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                path=where,
                hint="config.json is UTF-8 JSON",
            ) from None
    else:
        text = data
    try:
        value = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise SpecError(f"not valid JSON: {exc}", path=where) from None
    except _TooLong as exc:
        raise SpecError(
            f"an integer with {exc.digits} digits (at most {MAX_INT_DIGITS}): not a config.json", path=where
        ) from None
    except RecursionError:
        raise SpecError(f"nested deeper than {MAX_DEPTH} levels", path=where, hint="not a config.json") from None
    _check_tree(value, where)
    if not isinstance(value, dict):
        raise SpecError(f"expected a JSON object, got {type(value).__name__}", path=where)
    return value


def read_config_json(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` at ``path`` (or in the checkpoint folder ``path``), read with the bounds above."""
    p = Path(path)
    try:
        if p.is_dir():
            p = p / "config.json"
        with p.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError(f"cannot read {p}: {reason}", path=str(p)) from None
    return parse_config_json(data, str(p))


