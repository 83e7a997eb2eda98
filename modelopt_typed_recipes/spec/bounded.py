"""Bounded reading of text a user controls: recipe files, ``--set`` values, ModelOpt YAML recipes, JSON lines.

PyYAML's ``safe_load`` runs no code, but it trusts its input's shape: a 1 KB file of nested anchors
("billion laughs") expands to hundreds of millions of items once anything walks it, nesting a few
hundred levels deep ends in ``RecursionError``, a 5,000-digit integer in ``ValueError``, a second
``stages:`` key silently replaces the first, and bytes that are not UTF-8 in ``UnicodeDecodeError``.
Here every such input is a :class:`~..errors.SpecError` naming the file (or the source) and the line:
the loader counts what aliases would expand to on the composed node graph (it never builds the
expanded value), limits depth and the length of numbers, and refuses duplicate keys. JSON gets the
same limits. Each limit is far above what a real recipe uses.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import SpecError

MAX_FILE_BYTES = 1 << 20
"""A recipe (or a ModelOpt YAML recipe) larger than 1 MiB is not a recipe."""
MAX_DEPTH = 100
"""Nesting depth of lists and mappings; real recipes stay under 10."""
MAX_EXPANDED_NODES = 100_000
"""Items a document may hold with every alias expanded (a recipe with an inline architecture has ~300)."""
MAX_NUMBER_CHARS = 100
"""Characters of one YAML number; an integer beyond 2**63 has no meaning in a recipe."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


def _where(source: str, mark: Any) -> str:
    line = f"line {mark.line + 1}" if mark is not None else ""
    return f"{source}, {line}" if source and line else source or line


class BoundError(SpecError):
    """Input beyond one of this module's limits (size, depth, alias expansion, number length, duplicates)."""


# --------------------------------------------------------------------------- bytes
def read_text(path: str | Path, *, what: str = "recipe", limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of ``path``, read up to ``limit`` bytes; a typed error naming the file otherwise."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise SpecError(f"cannot read {what} {str(p)!r}: {exc.strerror or exc}", path=str(p)) from None
    except ValueError as exc:  # an embedded NUL byte in the path
        raise SpecError(f"cannot read {what} {str(p)[:200]!r}: {exc}", path="") from None
    if len(data) > limit:
        raise BoundError(f"{what} {str(p)!r} is larger than {limit // 1024} KiB", path=str(p),
                         hint=f"a {what} is a short text file; check the path")
    return decode(data, source=str(p), what=what)


def decode(data: bytes, *, source: str, what: str = "recipe") -> str:
    """Bytes as UTF-8 (a leading byte-order mark is dropped), or a typed error with the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"{what} {source!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
                        path=source, hint="save the file as UTF-8") from None


# --------------------------------------------------------------------------- YAML
class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with limits on depth, alias expansion and number length, refusing duplicate keys."""

    source: str = ""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise BoundError(f"nesting deeper than {MAX_DEPTH} levels ({_where(self.source, mark)})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Node:
        node = super().compose_document()
        _expanded_size(node, self.source)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _value in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue
                if first is not key_node:
                    raise BoundError(
                        f"duplicate key {str(key)[:80]!r} ({_where(self.source, key_node.start_mark)}; first on "
                        f"line {first.start_mark.line + 1})", path=str(key)[:80],
                        hint="a second key would silently replace the first; keep one")
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> Any:
        _short_number(node, self.source)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Any) -> Any:
        _short_number(node, self.source)
        return super().construct_yaml_float(node)


BoundedLoader.add_constructor(_INT_TAG, BoundedLoader.construct_yaml_int)
BoundedLoader.add_constructor(_FLOAT_TAG, BoundedLoader.construct_yaml_float)


def _short_number(node: Any, source: str) -> None:
    if isinstance(node.value, str) and len(node.value) > MAX_NUMBER_CHARS:
        raise BoundError(f"a number of {len(node.value)} characters ({_where(source, node.start_mark)})",
                         hint="numbers in a recipe are sizes, counts and seeds below 2**63")


def _expanded_size(root: Node | None, source: str) -> int:
    """Items of the document with every alias expanded, counted on the node graph (shared nodes once each,
    memoised), refusing cycles and totals above the limit before any value is built."""
    if root is None:
        return 0
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise BoundError(f"an alias refers to a node that contains it ({_where(source, node.start_mark)})")
        active.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > MAX_EXPANDED_NODES:
            raise BoundError(f"aliases expand to more than {MAX_EXPANDED_NODES:,} items "
                             f"({_where(source, node.start_mark)})",
                             hint="anchors and aliases may repeat a block, not multiply it")
        sizes[key] = total
        return total

    return size(root)


def _loader(text: str, source: str) -> BoundedLoader:
    loader = BoundedLoader(text)
    loader.source = source
    return loader


def _yaml_error(exc: Exception, source: str) -> SpecError:
    if isinstance(exc, BoundError):
        if source and not exc.path:
            return BoundError(exc.message, path=source, hint=exc.hint)
        return exc
    text = " ".join(str(exc).split())
    return SpecError(f"not valid YAML: {text[:300]}", path=source)


_YAML_FAILURES = (yaml.YAMLError, BoundError, ValueError, TypeError, OverflowError, RecursionError)
"""What PyYAML raises on bad text besides ``YAMLError``: ``ValueError`` from a timestamp such as
2001-13-45, and the limits above."""


def load_yaml(text: str, *, source: str = "") -> Any:
    """One YAML document under the limits; ``SpecError`` (path: ``source``) for anything malformed."""
    docs = load_yaml_all(text, source=source, single=True)
    return docs[0] if docs else None


def load_yaml_all(text: str, *, source: str = "", single: bool = False) -> list[Any]:
    """Every YAML document of ``text`` under the limits (ModelOpt's recipes are header + body files)."""
    _check_length(text, source)
    loader = None
    try:
        loader = _loader(text, source)  # the reader refuses control characters here already
        if single:
            return [loader.get_single_data()]
        out = []
        while loader.check_data():
            out.append(loader.get_data())
        return out
    except _YAML_FAILURES as exc:
        raise _yaml_error(exc, source) from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_length(text: str, source: str) -> None:
    if len(text) > MAX_FILE_BYTES:
        raise BoundError(f"more than {MAX_FILE_BYTES // 1024} KiB of text", path=source)
    _check_brackets(text, source)


_BRACKETS = re.compile(r"[^\[\]{}]+")


def _check_brackets(text: str, source: str) -> None:
    """Flow nesting (``[[[...``, ``{a: {b: ...``) counted on the bare text before PyYAML sees it: its scanner
    keeps a possible key per open bracket and re-checks them all on every token, so a few thousand unclosed
    brackets on one line take seconds before the first event reaches the depth limit. Brackets inside
    quoted strings are counted too; a recipe never nests a hundred deep, quoted or not."""
    brackets = _BRACKETS.sub("", text)
    if len(brackets) <= MAX_DEPTH:
        return
    depth = max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets))
    if depth > MAX_DEPTH:
        raise BoundError(f"nesting deeper than {MAX_DEPTH} levels", path=source)


# --------------------------------------------------------------------------- JSON
def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BoundError(f"duplicate key {key[:80]!r}", path=key[:80],
                             hint="a second key would silently replace the first; keep one")
        out[key] = value
    return out


def load_json(text: str, *, source: str = "", limit: int | None = MAX_FILE_BYTES) -> Any:
    """A JSON value under the same limits (depth, duplicate keys, integer length); ``SpecError`` otherwise."""
    if limit is not None and len(text) > limit:
        raise BoundError(f"more than {limit // 1024} KiB of text", path=source)
    _check_brackets(text, source)
    try:
        value = json.loads(text, object_pairs_hook=_pairs)
    except BoundError as exc:
        raise BoundError(exc.message, path=source or exc.path, hint=exc.hint) from None
    except RecursionError:
        raise BoundError(f"nesting deeper than {MAX_DEPTH} levels", path=source) from None
    except ValueError as exc:  # JSONDecodeError, or an integer longer than Python converts
        raise SpecError(f"not valid JSON: {' '.join(str(exc).split())[:300]}", path=source) from None
    check_depth(value, source=source)
    return value


def check_depth(value: Any, *, source: str = "", limit: int = MAX_DEPTH) -> None:
    """``BoundError`` when lists/dicts in ``value`` nest deeper than ``limit`` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            raise BoundError(f"nesting deeper than {limit} levels", path=source)
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list | tuple))
