"""attrs validators that raise :class:`SpecError` naming the field, so every check reads the same."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import SpecError, brief, did_you_mean


def fail(field: str, message: str, hint: str = "") -> SpecError:
    return SpecError(message, path=field, hint=hint)


def positive(_inst: Any, attr: Any, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise fail(attr.name, f"must be a positive number, got {brief(value)}")


def non_negative(_inst: Any, attr: Any, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise fail(attr.name, f"must be zero or more, got {brief(value)}")


def positive_int(_inst: Any, attr: Any, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise fail(attr.name, f"must be a positive integer, got {brief(value)}")


MAX_SEED = 2**63 - 1


def current_schema(version: int) -> Any:
    """A ``schema_version`` validator: from Python only the package's own version (a YAML file of an older one is
    migrated to it when read, ``serde.migrate``; a newer one is refused there with the same words)."""

    def check(_inst: Any, attr: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(attr.name, f"expected an integer, got {brief(value)}")
        if value > version:
            raise fail(attr.name, f"schema_version={value} is newer than this package understands ({version})",
                       "upgrade modelopt-typed-recipes")
        if value != version:
            raise fail(attr.name, f"schema_version={value}: from Python only this package's version ({version})",
                       "leave schema_version out (a YAML file of an older version is migrated when read)")

    return check


def seed_range(_inst: Any, attr: Any, value: Any) -> None:
    """A random seed torch and Megatron-Core accept: ``torch.manual_seed`` takes below 2**64 and Megatron-Core
    adds per-rank offsets (``model_parallel_cuda_manual_seed``: +2718 + TP rank, +1024 + 100 * EP rank), so
    0 <= seed < 2**63 is what every rank can use."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise fail(attr.name, f"must be an integer in [0, 2**63), got {brief(value)}",
                   "torch.manual_seed and Megatron-Core's per-rank seeds need it; e.g. 1234")


def fraction(_inst: Any, attr: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise fail(attr.name, f"must be in (0, 1], got {brief(value)}")


def one_of(choices: Iterable[str], *, optional: bool = False) -> Callable[[Any, Any, Any], None]:
    """``value`` is one of ``choices``; None only where ``optional`` (a field typed ``... | None``), so a
    required field given None in Python fails here as it fails when YAML's ``null`` is read back."""
    allowed = tuple(choices)

    def check(_inst: Any, attr: Any, value: Any) -> None:
        if value is None and optional:
            return
        if value is None:
            default = attr.default if isinstance(attr.default, str) else None
            raise fail(attr.name, f"must be one of {', '.join(map(repr, allowed))}, got null",
                       f"leave {attr.name} out for the default {default!r}" if default else
                       f"set {attr.name} to one of them")
        if value not in allowed:
            raise fail(
                attr.name,
                f"{brief(value)} is not one of {', '.join(map(repr, allowed))}",
                did_you_mean(value[:200], allowed) if isinstance(value, str) else "",
            )

    return check


def optional_bool(_inst: Any, attr: Any, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise fail(attr.name, f"must be true, false or unset, got {value!r}")


def non_empty_str(_inst: Any, attr: Any, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise fail(attr.name, f"must be a non-empty string, got {brief(value)}")


def non_empty_strs(_inst: Any, attr: Any, value: Any) -> None:
    """Every item of a tuple of names, paths or patterns: a non-empty string (the path names the item)."""
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise fail(f"{attr.name}[{i}]", f"must be a non-empty string, got {brief(item)}")


_DIVISOR_SEARCH = 1 << 16


def divisors(n: int) -> list[int]:
    """Divisors of ``n``, ascending: the sizes a "use one of ..." hint offers. The search stops at 65,536
    (``n`` may come from a bad config): for an ``n`` beyond 2**32 the list holds the divisors up to there and
    their cofactors, which is all a hint needs, in bounded time."""
    small = [d for d in range(1, min(math.isqrt(n), _DIVISOR_SEARCH) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def to_float(value: Any) -> Any:
    """Converter: accept ints for float fields (YAML writes ``1e6`` as a string, ``10000`` as int)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    return value
