"""Library chatter during a run, decided in one place for the API and the CLI alike.

Megatron-Core, ModelOpt, transformers and torch warn at import and during calibration (deprecations,
tokenizer length notes) and ModelOpt prints notes with ``print``. A run's own output is its result
and its progress bars (stderr); so, unless ``verbose``, those library warnings are filtered, their
loggers show errors only and library prints go to stderr, leaving stdout to the caller (``--json``).
Everything is restored on exit: a program calling :func:`~.api.run_post_training` keeps its own
warning filters and logging levels. Errors are never hidden: exceptions pass through untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

LIBRARIES = ("megatron", "modelopt", "transformers", "torch")
"""Modules whose UserWarning/DeprecationWarning/FutureWarning a quiet run filters."""

_LOGGERS = ("transformers", "modelopt", "megatron", "torch.distributed")


@contextlib.contextmanager
def library_output(*, verbose: bool = False) -> Iterator[None]:
    """Inside: library warnings filtered, library loggers at ERROR, library prints on stderr (unless verbose)."""
    if verbose:
        yield
        return
    env_before = os.environ.get("TRANSFORMERS_VERBOSITY")
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    hf_before = _transformers_verbosity()
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"  # read when transformers is first imported
    _set_transformers_verbosity(logging.ERROR)
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            for module in LIBRARIES:
                for category in (UserWarning, DeprecationWarning, FutureWarning):
                    warnings.filterwarnings("ignore", category=category, module=module)
            yield
    finally:
        if env_before is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = env_before
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        # transformers imported inside keeps the level it read from the environment: give it its default back
        _set_transformers_verbosity(hf_before if hf_before is not None else _default_transformers_level(env_before))


def _transformers_verbosity() -> int | None:
    if "transformers" not in sys.modules:
        return None
    from transformers.utils import logging as hf_logging

    return int(hf_logging.get_verbosity())


def _set_transformers_verbosity(level: int) -> None:
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(level)


def _default_transformers_level(env: str | None) -> int:
    names = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
             "critical": logging.CRITICAL}
    return names.get((env or "").lower(), logging.WARNING)
