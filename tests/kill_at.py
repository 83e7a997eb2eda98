"""``python tests/kill_at.py MOMENT ARGS...``: the CLI (``ARGS``), SIGKILLed by itself at ``MOMENT``.

For tests/test_resume.py: a real ``kill -9`` of a real run, at a chosen place instead of a chosen time, so
the test is not a race. Moments (HF backend, a quantize -> export recipe):

- ``inside:stages[0]``: during calibration, after the first batch;
- ``after:stages[N]``: just after stage N is recorded in the journal;
- ``inside:stages[1]``: the export files are written, the stage is not yet recorded;
- ``evaluating-export``: every stage done, the re-loaded export about to be measured;
- ``before-swap``: the manifests written, the finished folder about to be put in place;
- ``inside:megatron-export``: the Megatron-Core backend's export files written, the stage not yet recorded;
- ``inside:handover``: the first Megatron checkpoint written (a hand-over between layouts under ``save: auto``),
  before it is loaded.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _call_then_die(owner: Any, name: str, *, when: Callable[..., bool] = lambda *a, **k: True) -> None:
    """Replace ``owner.name`` (a module's function, or a class's method) with one that calls it, then dies when
    ``when`` (given the same arguments) says so: the moment is just after the real call's effects."""
    original = getattr(owner, name)

    def call_then_die(*a: Any, **k: Any) -> Any:
        out = original(*a, **k)
        if when(*a, **k):
            _die()
        return out
    setattr(owner, name, call_then_die)


def main() -> int:
    moment, argv = sys.argv[1], sys.argv[2:]
    from modelopt_typed_recipes.plan import journal, outputs
    from modelopt_typed_recipes.runtime.hf import export, quantize

    if moment == "inside:stages[0]":
        def track(items, *_a, **_k):
            for i, item in enumerate(items):
                if i == 1:
                    _die()
                yield item
        quantize.track = track
    elif moment.startswith("after:stages["):
        index = int(moment[len("after:stages["):-1])
        _call_then_die(journal.Journal, "finish_stage", when=lambda _self, i, *a, **k: i == index)
    elif moment == "inside:stages[1]":
        _call_then_die(export, "export")
    elif moment == "evaluating-export":
        export.load_export = lambda *a, **k: _die()
    elif moment == "inside:megatron-export":
        from modelopt_typed_recipes.runtime.megatron import stages

        _call_then_die(stages, "export_hf")
    elif moment == "inside:handover":
        from modelopt_typed_recipes.runtime.megatron import build

        _call_then_die(build, "save_checkpoint")
    elif moment == "before-swap":
        outputs.publish = lambda *a, **k: _die()
    else:
        raise SystemExit(f"unknown moment {moment!r}")
    from modelopt_typed_recipes.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())
