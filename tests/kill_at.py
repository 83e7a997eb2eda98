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


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    moment, argv = sys.argv[1], sys.argv[2:]
    from modelopt_typed_recipes.plan import journal, outputs
    from modelopt_typed_recipes.runtime.hf import export, quantize

    if moment == "inside:stages[0]":
        def track(items, *_a, **_k):  # noqa: ANN001, ANN202
            for i, item in enumerate(items):
                if i == 1:
                    _die()
                yield item
        quantize.track = track
    elif moment.startswith("after:stages["):
        index = int(moment[len("after:stages["):-1])
        finish = journal.Journal.finish_stage

        def finish_stage(self, i, *a, **k):  # noqa: ANN001, ANN202
            finish(self, i, *a, **k)
            if i == index:
                _die()
        journal.Journal.finish_stage = finish_stage
    elif moment == "inside:stages[1]":
        write = export.export

        def export_then_die(*a, **k):  # noqa: ANN002, ANN003, ANN202
            write(*a, **k)
            _die()
        export.export = export_then_die
    elif moment == "evaluating-export":
        export.load_export = lambda *a, **k: _die()
    elif moment == "inside:megatron-export":
        from modelopt_typed_recipes.runtime.megatron import stages

        write_hf = stages.export_hf

        def export_hf_then_die(*a, **k):  # noqa: ANN002, ANN003, ANN202
            write_hf(*a, **k)
            _die()
        stages.export_hf = export_hf_then_die
    elif moment == "inside:handover":
        from modelopt_typed_recipes.runtime.megatron import build

        save = build.save_checkpoint

        def save_then_die(*a, **k):  # noqa: ANN002, ANN003, ANN202
            save(*a, **k)
            _die()
        build.save_checkpoint = save_then_die
    elif moment == "before-swap":
        outputs.publish = lambda *a, **k: _die()
    else:
        raise SystemExit(f"unknown moment {moment!r}")
    from modelopt_typed_recipes.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())
