"""Typed errors: every mistake a user can make is one of these, raised before any GPU work.

Each carries the dotted field path (``stages[1].quantize.preset``), a message and, where we can
guess it, a hint ("did you mean ..."). The CLI prints them and exits 2; anything else is a bug.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable
from typing import Any

MAX_MESSAGE_CHARS = 1000
"""An error is one line; a message longer than this is cut (values inside it are :func:`brief` already)."""


class RecipeError(Exception):
    """Base of every error this package raises on bad input."""

    def __init__(self, message: str, *, path: str = "", hint: str = "") -> None:
        self.path = one_line(path, 300)
        self.message = one_line(message, MAX_MESSAGE_CHARS)
        self.hint = one_line(hint, MAX_MESSAGE_CHARS)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} ({self.hint})" if self.hint else text

    def under(self, prefix: str) -> RecipeError:
        """The same error seen from an enclosing object: ``router_topk`` becomes ``moe.router_topk``."""
        if not prefix:
            return self
        if not self.path:
            path = prefix
        elif self.path.startswith("["):
            path = prefix + self.path
        else:
            path = f"{prefix}.{self.path}"
        err = type(self)(self.message, path=path, hint=self.hint)
        err.__cause__ = self.__cause__
        return err

    def to_dict(self) -> dict[str, str]:
        return {"type": type(self).__name__, "path": self.path, "message": self.message, "hint": self.hint}


class SpecError(RecipeError, ValueError):
    """A value that breaks a rule of the spec (a wrong type, a missing key, an impossible size)."""


class UnknownNameError(SpecError, LookupError):
    """A name that is not in a registry."""


class LayoutError(SpecError):
    """A parallel layout that does not fit the model, the stage or the GPUs (a spec rule about sizes, so a
    :class:`SpecError` too: one split rule serves layouts and launch profiles alike)."""


class CompatibilityError(RecipeError):
    """A version, hardware or optional-dependency gate (megatron-core, Transformer Engine, CUDA)."""


class ResourceError(RecipeError):
    """The plan does not fit in the memory of the chosen GPUs."""


class DataError(RecipeError, ValueError):
    """Calibration or evaluation data that is missing, empty or unreadable."""


class OutputError(RecipeError):
    """An output folder this run may not write: not ours, holding files we did not write, or refused by the
    machine (permissions, a full disk, a file-size limit). The hint says what to free or fix."""


class OutputLockedError(OutputError):
    """Another run holds the output folder's lock; the message names it (pid, host, start time)."""


def one_line(text: str, limit: int) -> str:
    text = str(text)
    if "\n" in text or "\r" in text:
        text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxstring = 120
_REPR.maxother = 120
_REPR.maxlong = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 6
_REPR.maxlevel = 3


def brief(value: Any) -> str:
    """A short one-line ``repr`` of a user's value for an error message (at most ~300 characters, computed
    without building the full repr: a value may be huge or deeply nested)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails still gets a message
        text = f"<{type(value).__name__}>"
    return one_line(text, 300)


class GateError(RecipeError):
    """A measurement after compression missed a bar of the recipe's ``gate`` (Megatron-LM's ``mmlu.sh
    --lower-bound``); raised before the output folder is put in place, so nothing is left behind."""


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 3) -> str:
    """A "did you mean ..." hint, or "" when nothing is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
    if not close:
        # substring matches help with short aliases ("qwen3" -> the Qwen3 entries)
        close = [c for c in lowered if word.lower() in c][:n]
    if not close:
        return ""
    return "did you mean " + ", ".join(repr(lowered[c]) for c in close) + "?"
