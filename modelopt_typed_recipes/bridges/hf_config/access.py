"""Typed access to a parsed ``config.json``: every problem is a :class:`SpecError` naming the key.

A key that is absent takes the model type's default from the table in :mod:`.model_types` (transformers'
config-class default); ``null`` counts as absent, except where a reader asks for ``None`` explicitly
(:meth:`ConfigReader.optional_int`: ``q_lora_rank: null`` means "no query LoRA", not the default rank).
"""

from __future__ import annotations

import builtins
import math
import reprlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ...errors import SpecError

T = TypeVar("T")
Key = str
"""A config key (an alias: the reader's methods named after types shadow ``str`` in the class body)."""

MAX_INT = 2**53
"""JSON numbers beyond this are not exact integers in any config writer."""


class ConfigValueError(SpecError):
    """A value no model has (a wrong type, a size below 1, a NaN, a size the file leaves out), as against a
    feature the bridge cannot express (a RoPE scaling, an activation): transformers fails on such a file with
    its own exception, or loads it and fails later (a NaN norm epsilon fails calibration), so a checkpoint's
    loader is not left to say why (``plan.sources.source_arch_problem``)."""


class _Missing:
    def __repr__(self) -> str:
        return "<required>"


MISSING: Any = _Missing()
"""Marks "no default": the key is required."""

_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxother = 60
_SHORT.maxlevel = 2
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 4


def short_repr(value: object) -> str:
    """``repr`` cut to a few dozen characters, safe on deep or huge values (error messages stay one line)."""
    return _SHORT.repr(value)


class ConfigReader:
    """Typed getters over one mapping of a ``config.json`` (``prefix``: where it sits, for error paths)."""

    def __init__(
        self, data: Mapping[str, Any], prefix: str = "", *, defaults: Mapping[str, Any] | None = None
    ) -> None:
        self.data = data
        self.prefix = prefix
        self.defaults: Mapping[str, Any] = defaults or {}

    def nested(self, key: Key, data: Mapping[str, Any]) -> ConfigReader:
        """A reader of the mapping under ``key`` (no defaults: the table's defaults are top-level keys)."""
        return ConfigReader(data, self.path(key) + ".")

    def path(self, key: Key) -> str:
        return f"{self.prefix}{key}"

    def has(self, key: Key) -> bool:
        return self.data.get(key) is not None

    def fail(self, key: Key, message: str, hint: str = "") -> SpecError:
        return SpecError(message, path=self.path(key), hint=hint)

    def _get(self, key: Key, default: Any, kind: str, check: Callable[[Any], T]) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is MISSING:
                default = self.defaults.get(key, MISSING)
            if default is MISSING:
                raise ConfigValueError("required key missing from config.json", path=self.path(key))
            return default
        try:
            return check(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigValueError(f"expected {kind}, got {short_repr(value)}", path=self.path(key)) from None

    def int(self, key: Key, default: Any = MISSING) -> Any:
        def check(v: Any) -> int:
            if isinstance(v, bool):
                raise TypeError
            if isinstance(v, float) and v.is_integer() and abs(v) <= MAX_INT:
                v = int(v)
            if not isinstance(v, int) or abs(v) > MAX_INT:
                raise TypeError
            return v

        return self._get(key, default, "an integer", check)

    def optional_int(self, key: Key) -> builtins.int | None:
        """An integer where ``null`` in the file means "none" and an absent key takes the table's default."""
        if key in self.data and self.data[key] is None:
            return None
        value: builtins.int | None = self.int(key, self.defaults.get(key))
        return value

    def float(self, key: Key, default: Any = MISSING) -> Any:
        def check(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise TypeError
            out = float(v)
            if not math.isfinite(out):
                raise ValueError
            return out

        return self._get(key, default, "a finite number", check)

    def bool(self, key: Key, default: Any = MISSING) -> Any:
        def check(v: Any) -> bool:
            if not isinstance(v, bool):
                raise TypeError
            return v

        return self._get(key, default, "true or false", check)

    def str(self, key: Key, default: Any = MISSING) -> Any:
        def check(v: Any) -> builtins.str:
            if not isinstance(v, builtins.str):
                raise TypeError
            return v

        return self._get(key, default, "a string", check)

    def list(self, key: Key, default: Any = MISSING, *, of: type = object) -> Any:
        """A list whose items are all ``of`` (``int``: integers, ``str``: strings)."""
        item = {builtins.int: "integers", builtins.str: "strings"}.get(of, "values")

        def check(v: Any) -> builtins.list[Any]:
            if not isinstance(v, list | tuple):
                raise TypeError
            if any(not isinstance(x, of) or (of is builtins.int and isinstance(x, builtins.bool)) for x in v):
                raise TypeError
            if of is builtins.int and any(abs(x) > MAX_INT for x in v):
                raise TypeError
            return list(v)

        return self._get(key, default, f"a list of {item}", check)

    def dict(self, key: Key, default: Any = MISSING) -> Any:
        def check(v: Any) -> Mapping[Key, Any]:
            if not isinstance(v, Mapping):
                raise TypeError
            return v

        return self._get(key, default, "a mapping", check)

    def first(self, kind: Key, keys: tuple[Key, ...], default: Any = MISSING) -> Any:
        """The first of several spellings of one fact (``rms_norm_eps`` / ``layer_norm_epsilon`` ...)."""
        for key in keys:
            if self.has(key):
                return getattr(self, kind)(key)
        for key in keys:
            if default is MISSING and key in self.defaults:
                return self.defaults[key]
        if default is MISSING:
            raise ConfigValueError(
                "required key missing from config.json",
                path=self.path(keys[0]),
                hint="also read as: " + ", ".join(keys[1:]) if len(keys) > 1 else "",
            )
        return default


def build(r: ConfigReader, cls: Callable[..., T], keys: Mapping[str, str], **fields: Any) -> T:
    """``cls(**fields)``; a validation error names the config key the failing field came from."""
    try:
        return cls(**fields)
    except SpecError as err:
        raise ConfigValueError(err.message, path=r.path(keys.get(err.path, err.path)), hint=err.hint) from None
