"""A recipe's ``cpu_threads``, applied to the process that runs it (every rank applies its own).

The number comes from ``plan/cpu_threads.py``; here it becomes ``torch.set_num_threads`` (which sizes PyTorch's
intra-op pool and MKL's with it), for the run only: a notebook gets its own count back afterwards. The
environment (``OMP_NUM_THREADS``) is left as it is: the run starts no processes that read it, and PyTorch has
read it already. What was used is recorded as the result's and the manifest's ``cpu_threads``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import attrs

from ..plan.cpu_threads import ThreadChoice, for_this_process


@attrs.frozen(kw_only=True)
class CpuThreads:
    """What a run asked for and used: the result's and the manifest's ``cpu_threads``."""

    choice: ThreadChoice
    before: int  # PyTorch's count before the run, given back on exit

    def facts(self) -> dict[str, Any]:
        c = self.choice
        return {"requested": c.requested, "threads": c.threads, "reason": c.reason, "usable_cores": c.usable_cores,
                "local_ranks": c.local_ranks, "torch_threads_before": self.before,
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


@contextlib.contextmanager
def applied(requested: str | int) -> Iterator[CpuThreads]:
    """Inside: PyTorch's CPU threads as ``requested`` decides (restored on exit)."""
    import torch

    before = torch.get_num_threads()
    state = CpuThreads(choice=for_this_process(requested, current=before), before=before)
    torch.set_num_threads(state.choice.threads)
    try:
        yield state
    finally:
        torch.set_num_threads(state.before)
