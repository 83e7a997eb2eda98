"""The package's one cattrs converter: dicts, YAML, JSON, dotted overrides and content hashes.

Strict on purpose: unknown keys, wrong types (a float where an int belongs, a string for a bool)
and broken rules all become a :class:`SpecError` that names the field path. Other modules register
their hooks here (``converter``) rather than building converters of their own.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
import cattrs.gen
import yaml
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from ..errors import RecipeError, SpecError, brief, did_you_mean
from . import bounded

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True, omit_if_default=False)


# --------------------------------------------------------------------------- strict scalars
MAX_INT = 2**63 - 1
"""No size, count or seed in a recipe is beyond a signed 64-bit integer (what torch and Megatron take)."""


def _strict_int(value: Any, _t: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"expected an integer, got {brief(value)}")
    if not -MAX_INT <= value <= MAX_INT:
        raise TypeError(f"{brief(value)} is out of range (integers here are below 2**63)")
    return value


def _strict_float(value: Any, _t: Any) -> float:
    if isinstance(value, bool):
        raise TypeError(f"expected a number, got {brief(value)}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads 1e6 as a string
        try:
            out = float(value)
        except ValueError:
            raise TypeError(f"expected a number, got {brief(value)}") from None
        if math.isfinite(out):
            return out
    raise TypeError(f"expected a number, got {brief(value)}")


def _strict_bool(value: Any, _t: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {brief(value)}")
    return value


def _strict_str(value: Any, _t: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {brief(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON): no file name or message can hold it
        raise TypeError(f"{brief(value)} is not valid Unicode text") from None
    return value


converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)
converter.register_structure_hook(bool, _strict_bool)
converter.register_structure_hook(str, _strict_str)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


# Tag fields a union member may carry, in order of preference; a union is tagged by the first name every
# member has with a default. ``required``: whether a document must spell the tag out (``type`` defaults to
# the first member for backwards compatibility; a recipe stage must say which ``technique`` it is, an
# evaluation task which ``task``).
TAG_FIELDS: dict[str, bool] = {"type": False, "technique": True, "task": True}


def _tag_field(members: list[Any]) -> str | None:
    for name in TAG_FIELDS:
        fields = [attrs.fields_dict(m).get(name) for m in members]
        if all(f is not None and f.default is not attrs.NOTHING for f in fields):
            return name
    return None


def _tagged_members(tp: Any) -> dict[str, type] | None:
    """For a union of attrs classes that each carry a tag field (``type``/``technique``): tag -> class."""
    members = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(members) < 1 or not all(attrs.has(m) for m in members):
        return None
    name = _tag_field(members)
    if name is None:
        return None
    return {str(attrs.fields_dict(m)[name].default): m for m in members}


def _structure_tagged(tp: Any) -> Callable[[Any, Any], Any]:
    tags = _tagged_members(tp)
    name = _tag_field(list(tags.values())) if tags is not None else None
    if tags is None or name is None:
        raise TypeError(f"{tp!r} is not a union of attrs classes tagged by one field")
    required = TAG_FIELDS[name] and len(tags) > 1
    optional = type(None) in typing.get_args(tp)
    default = next(iter(tags))

    def hook(value: Any, _t: Any) -> Any:
        if value is None and optional:
            return None
        if type(value) in tags.values() or (attrs.has(type(value)) and hasattr(value, name)):
            return value  # a member, or a class that registered itself elsewhere (a plugin technique)
        if isinstance(value, str) and value in tags:  # `source: builtin`, a stage given as "export"
            value = {name: value}
        if not isinstance(value, Mapping):
            raise SpecError(f"expected a mapping with a {name} (one of {', '.join(tags)}), got {brief(value)}",
                            hint=did_you_mean(str(value), tags) if isinstance(value, str) else "")
        if name not in value and required:
            raise SpecError(f"required field missing: say which {name} (one of {', '.join(tags)})", path=name)
        tag = value.get(name, default)
        if tag not in tags:
            raise SpecError(
                f"unknown {name} {brief(tag)}",
                path=name,
                hint=did_you_mean(str(tag), tags) or f"one of {', '.join(tags)}",
            )
        return converter.structure(dict(value), tags[tag])

    return hook


def _str_or_attrs(tp: Any) -> type | None:
    """``str | SomeAttrsClass`` (a registry name or an inline spec): the attrs class, else None."""
    members = [a for a in typing.get_args(tp) if a is not type(None)]
    others = [m for m in members if m is not str]
    if str in members and len(others) == 1 and attrs.has(others[0]):
        return others[0]
    return None


def _structure_str_or_attrs(tp: Any) -> Callable[[Any, Any], Any]:
    found = _str_or_attrs(tp)
    if found is None:
        raise TypeError(f"{tp!r} is not 'str | <attrs class>'")
    cls: type = found
    optional = type(None) in typing.get_args(tp)

    def hook(value: Any, _t: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, str | cls):
            return value
        if isinstance(value, Mapping):
            return converter.structure(dict(value), cls)
        raise TypeError(f"expected a name or a mapping, got {brief(value)}")

    return hook


def _structure_scalar_union(tp: Any) -> Callable[[Any, Any], Any]:
    """Unions of plain scalars (``int | str``): keep the value when its type is a member."""
    members = tuple(a for a in typing.get_args(tp) if a is not type(None))

    def hook(value: Any, _t: Any) -> Any:
        if value is None and type(None) in typing.get_args(tp):
            return None
        for m in members:
            if m is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, m) and not (isinstance(value, bool) and m is not bool):
                return value
        raise TypeError(f"expected {' or '.join(m.__name__ for m in members)}, got {brief(value)}")

    return hook


converter.register_structure_hook_factory(lambda t: _is_union(t) and _tagged_members(t) is not None, _structure_tagged)
converter.register_structure_hook_factory(lambda t: _is_union(t) and _str_or_attrs(t) is not None, _structure_str_or_attrs)
converter.register_structure_hook_factory(
    lambda t: _is_union(t) and all(a in (int, str, float, bool, type(None)) for a in typing.get_args(t)),
    _structure_scalar_union,
)


def _structure_literal(tp: Any) -> Callable[[Any, Any], Any]:
    """``Literal["a", "b"]``: the value itself, or "'c' is not one of 'a', 'b'" with a suggestion."""
    allowed = typing.get_args(tp)

    def hook(value: Any, _t: Any) -> Any:
        for a in allowed:
            if value == a and type(value) is type(a):
                return value
        raise SpecError(
            f"{brief(value)} is not one of {', '.join(map(repr, allowed))}",
            hint=did_you_mean(str(value)[:200], [str(a) for a in allowed]) if isinstance(value, str) else "",
        )

    return hook


converter.register_structure_hook_factory(lambda t: typing.get_origin(t) is typing.Literal, _structure_literal)


def _is_word_or_int(tp: Any) -> bool:
    """``Literal["auto"] | int`` (a keyword or a number, as ``cpu_threads``)."""
    args = typing.get_args(tp)
    return (_is_union(tp) and int in args
            and all(a is int or typing.get_origin(a) is typing.Literal for a in args))


# the field's validator judges the value (a keyword or a number in range), in its own words and with its fix
converter.register_structure_hook_factory(_is_word_or_int, lambda _tp: lambda value, _t: value)


# --------------------------------------------------------------------------- errors with paths
def _flatten(exc: BaseException, path: str) -> list[RecipeError]:
    if isinstance(exc, IterableValidationError):
        with_notes, without = exc.group_exceptions()
        out: list[RecipeError] = []
        for sub, note in with_notes:
            out += _flatten(sub, f"{path}[{note.index!r}]")
        for sub in without:
            out += _flatten(sub, path)
        return out
    if isinstance(exc, ClassValidationError):
        named, rest = exc.group_exceptions()
        out = []
        for sub, field in named:
            out += _flatten(sub, f"{path}.{field.name}" if path else field.name)
        for sub in rest:
            out += _flatten(sub, path)
        return out
    if isinstance(exc, RecipeError):
        return [exc.under(path)]
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        errs: list[RecipeError] = []
        for key in sorted(str(k)[:80] for k in exc.extra_fields)[:20]:
            p = f"{path}.{key}" if path else key
            errs.append(SpecError("unknown key", path=p, hint=did_you_mean(key, known) or f"known keys: {', '.join(known)}"))
        return errs
    if isinstance(exc, KeyError):
        return [SpecError("required field missing", path=path)]
    return [SpecError(str(exc) or type(exc).__name__, path=path)]


class SpecErrors(SpecError):
    """Several problems in one document; ``errors`` lists each, ``path``/``message`` are the first."""

    def __init__(self, errors: list[RecipeError]) -> None:
        self.errors = errors
        first = errors[0]
        extra = f" (and {len(errors) - 1} more: " + "; ".join(str(e) for e in errors[1:4]) + ")" if len(errors) > 1 else ""
        super().__init__(first.message + extra, path=first.path, hint=first.hint)

    def under(self, prefix: str) -> RecipeError:
        """Each problem seen from the enclosing object (a nested spec that a field's converter structured)."""
        return SpecErrors([e.under(prefix) for e in self.errors])


def structure(data: Any, cls: type[T], *, path: str = "") -> T:
    """dict -> validated instance, or a SpecError naming the field path."""
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        errors = _flatten(exc, path)
    except RecipeError as exc:
        errors = [exc.under(path)]
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        errors = [SpecError(str(exc) or type(exc).__name__, path=path)]
    if len(errors) == 1:
        raise errors[0] from None
    raise SpecErrors(errors) from None


# --------------------------------------------------------------------------- Python construction
def _attrs_instance_or_dict(cls: Any) -> Callable[[Any, Any], Any]:
    """An attrs class: an instance passes as it is (it validated itself); anything else is structured."""
    inner = cattrs.gen.make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True,
                                              _cattrs_detailed_validation=True)

    def hook(value: Any, _t: Any) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):  # cattrs' own words were Python's ("argument of type 'NoneType' ...")
            raise SpecError(f"expected a block of keys, got {brief(value)}",
                            hint=f"its keys: {', '.join(a.name for a in attrs.fields(cls))}")
        return inner(value, cls)

    return hook


converter.register_structure_hook_factory(attrs.has, _attrs_instance_or_dict)


def _mapping_or_error(tp: Any) -> Callable[[Any, Any], Any]:
    """``dict[K, V]`` fields (``gate.min_accuracy``): anything but a mapping is refused in words, not with
    cattrs' ``'int' object has no attribute 'items'``."""
    inner = cattrs.gen.make_mapping_structure_fn(tp, converter)

    def hook(value: Any, _t: Any) -> Any:
        if not isinstance(value, Mapping):
            raise SpecError(f"expected a mapping (key: value), got {brief(value)}")
        return inner(value, tp)

    return hook


converter.register_structure_hook_factory(lambda t: typing.get_origin(t) is dict, _mapping_or_error)


def typed_fields(cls: type, fields: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
    """attrs ``field_transformer``: Python construction validates as YAML does.

    Every field without a converter of its own gets one that passes values of its type and structures the
    rest through this module's converter (a scalar in a field with a validator is left to that validator): lists become tuples, dicts become the nested spec classes, a
    stage given by its tag alone (``"export"``) becomes that stage, and a wrong type is a SpecError naming
    the field (``stages[1].format``) instead of a value kept unchecked or a bare exception later.
    """
    hints: dict[str, Any] = {}

    def for_field(name: str, judged: bool) -> Callable[[Any], Any]:
        def convert(value: Any) -> Any:
            if judged and not isinstance(value, list | tuple | Mapping):
                return value  # a scalar: the field's own validator judges it, in its own words
            if not hints:  # annotations are strings until the module has finished defining its classes
                hints.update(typing.get_type_hints(cls))
            return structure(value, hints[name], path=name)

        return convert

    return [f if f.converter is not None else f.evolve(converter=for_field(f.name, f.validator is not None))
            for f in fields]


def to_dict(obj: Any) -> Any:
    return converter.unstructure(obj)


def from_dict(data: Any, cls: type[T]) -> T:
    data = migrate(data, cls)
    return structure(data, cls)


# --------------------------------------------------------------------------- tuples round-trip through YAML/JSON lists
def _tuple_hook(value: Any, tp: Any) -> Any:
    args = typing.get_args(tp)
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list, got {brief(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        types_ = [args[0]] * len(value)
    elif len(args) != len(value):
        raise TypeError(f"expected {len(args)} items, got {len(value)}")
    else:
        types_ = list(args)
    out, errors = [], []
    for i, (v, t) in enumerate(zip(value, types_, strict=True)):
        try:
            out.append(converter.structure(v, t))
        except Exception as exc:  # noqa: BLE001 - regrouped below with the item's index, like cattrs' lists
            exc.__notes__ = [*getattr(exc, "__notes__", []), IterableValidationNote(f"item {i}", i, t)]
            errors.append(exc)
    if errors:
        raise IterableValidationError(f"while structuring {tp!r}", errors, tp)
    return tuple(out)


converter.register_structure_hook_func(lambda t: typing.get_origin(t) is tuple, _tuple_hook)
converter.register_unstructure_hook_func(lambda t: typing.get_origin(t) is tuple, lambda v: [converter.unstructure(x) for x in v])


# --------------------------------------------------------------------------- schema migrations
_MIGRATIONS: dict[tuple[type, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def register_migration(cls: type, from_version: int) -> Callable[[Callable[[dict], dict]], Callable[[dict], dict]]:
    """Register a function that lifts a document of ``cls`` from ``from_version`` to the next."""

    def deco(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
        _MIGRATIONS[(cls, from_version)] = fn
        return fn

    return deco


def migrate(data: Any, cls: type) -> Any:
    if not isinstance(data, Mapping) or not attrs.has(cls) or "schema_version" not in attrs.fields_dict(cls):
        return data
    default = attrs.fields_dict(cls)["schema_version"].default
    if not isinstance(default, int):
        return data
    target = default
    version = data.get("schema_version", target)
    if not isinstance(version, int) or isinstance(version, bool):
        raise SpecError(f"expected an integer, got {brief(version)}", path="schema_version")
    if version > target:
        raise SpecError(
            f"schema_version={version} is newer than this package understands ({target})",
            path="schema_version",
            hint="upgrade modelopt-typed-recipes",
        )
    data = dict(data)
    while version < target:
        step = _MIGRATIONS.get((cls, version))
        if step is None:
            raise SpecError(f"no migration from schema_version={version}", path="schema_version")
        data = step(data)
        version += 1
        data["schema_version"] = version
    return data


# --------------------------------------------------------------------------- YAML / JSON
def to_json(obj: Any, *, indent: int | None = 2) -> str:
    return json.dumps(to_dict(obj), indent=indent, sort_keys=False)


def from_json(text: str, cls: type[T], *, source: str = "") -> T:
    return from_dict(bounded.load_json(text, source=source), cls)


class _Dumper(yaml.SafeDumper):
    """Safe YAML, with strings holding Unicode line breaks double-quoted so they read back unchanged."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if any(c in value for c in "\x85\u2028\u2029"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_str(value)


_Dumper.add_representer(str, _represent_str)


def to_yaml(obj: Any) -> str:
    return yaml.dump(to_dict(obj), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def from_yaml(text: str, cls: type[T], *, source: str = "") -> T:
    return from_dict(bounded.load_yaml(text, source=source), cls)


def load_file(path: str | Path, cls: type[T]) -> T:
    return from_dict(read_document(path), cls)


def read_document(path: str | Path) -> Any:
    """The parsed YAML/JSON of a file (JSON by its suffix), read through :mod:`.bounded` (UTF-8, size, depth,
    aliases, duplicate keys), before any structuring."""
    p = Path(path)
    text = bounded.read_text(p)
    return bounded.load_json(text, source=str(p)) if p.suffix == ".json" else bounded.load_yaml(text, source=str(p))


# --------------------------------------------------------------------------- overrides and hashes
def _parse_value(text: str) -> Any:
    """A ``--set`` value: YAML (``16``, ``[fp8, int4_awq]``, ``{tensor_parallel: 2}``), else the text itself.
    Beyond the limits of :mod:`.bounded` (aliases, depth, duplicate keys) it is an error, not a string."""
    try:
        return bounded.load_yaml(text, source="--set")
    except bounded.BoundError:
        raise
    except SpecError:
        return text


def override_keys(dotted: str) -> list[str]:
    """``stages[0].format`` (the form error paths print) or ``stages.0.format`` -> ``["stages", "0", "format"]``."""
    return re.sub(r"\[(-?\d+)\]", r".\1", dotted.strip()).split(".")


def field_path(keys: list[str]) -> str:
    """The error-path form of override keys: ``["stages", "0", "format"]`` -> ``stages[0].format``."""
    out = ""
    for key in keys:
        out += f"[{key}]" if key.lstrip("-").isdigit() else (f".{key}" if out else key)
    return out


def parse_overrides(items: Iterable[str], *, flag: str = "override") -> dict[str, Any]:
    """``KEY=VALUE`` strings -> ``{key: parsed value}`` in the order given. A key given again takes its last
    place as well as its last value: ``evaluation.dataset=a evaluation=null evaluation.dataset=b`` ends with
    dataset b (a dict keeps a key where it first came, so that was applied before the null, which won)."""
    pairs: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"{flag} {brief(item)} is not KEY=VALUE", hint="e.g. calibration.num_samples=16")
        key, _, raw = item.partition("=")
        pairs.pop(key.strip(), None)
        pairs[key.strip()] = _parse_value(raw)
    return pairs


def apply_overrides(obj: T, overrides: Mapping[str, Any] | list[str]) -> T:
    """A new validated instance with dotted keys replaced: ``{"moe.num_experts": 64}`` or ``["moe.num_experts=64"]``."""
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    for dotted in overrides:
        if not isinstance(dotted, str):  # from Python: a key that is not a dotted field path
            raise SpecError(f"an override's key must be a dotted field path (a str), got {brief(dotted)}",
                            hint="e.g. {'calibration.num_samples': 16}")
    data = to_dict(obj)
    # mappings made here from a null (evaluation: null, gate: null): their keys are the type's, which structure()
    # checks below; before, any key under one was an "unknown key"
    created: set[tuple[str, ...]] = set()
    for dotted, value in overrides.items():
        node = data
        keys = override_keys(dotted)
        for i, key in enumerate(keys):
            fresh = tuple(keys[:i]) in created
            where = field_path(keys[: i + 1])
            if isinstance(node, list):
                try:
                    idx = int(key)
                    node[idx]  # bounds check: IndexError below
                except (ValueError, IndexError):
                    raise SpecError(f"no list index {brief(key)}", path=where) from None
                if i == len(keys) - 1:
                    node[idx] = value
                else:
                    node = node[idx]
                continue
            if not isinstance(node, dict) or (key not in node and not fresh):
                known = list(node) if isinstance(node, dict) else []
                raise SpecError("unknown key", path=where, hint=did_you_mean(key[:200], known) or "")
            if i == len(keys) - 1:
                node[key] = value
            else:
                if node.get(key) is None:
                    if keys[i + 1].lstrip("-").isdigit():  # nothing to index (was "expected a list, got {'0': ...}")
                        raise SpecError(f"no list index {brief(keys[i + 1])}", path=field_path(keys[: i + 2]),
                                        hint=f"{where} has no value to index; set it whole ({where}=...)")
                    node[key] = {}
                    created.add(tuple(keys[: i + 1]))
                node = node[key]
    return structure(data, type(obj))


def canonical_json(obj: Any) -> str:
    data = obj if isinstance(obj, dict | list) else to_dict(obj)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_hash(obj: Any, *, length: int = 16) -> str:
    """Stable across processes and machines: sha256 of canonical JSON (``schema_version`` included)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]
