"""A recipe's ``deterministic: true``, applied to the process that runs it (every rank runs it itself).

Why: Megatron-Core's MoE un-permutation sums the top-k experts' outputs with ``scatter_add_``, whose CUDA
kernel adds in a varying order, so two runs of one MoE calibration give different activation amax (input
scales) from the first layers on; it switches to ``index_add_`` when PyTorch's deterministic algorithms are on.

What a deterministic run changes, everything in one place:

- PyTorch: ``torch.use_deterministic_algorithms(True, warn_only=True)``: deterministic kernels where PyTorch has
  them (``index_add_``, ``index_put_`` with accumulation, cuBLAS with a fixed workspace); an op without one warns
  instead of failing, and the run records its name (``nondeterministic_ops``): such a run may still vary.
- The environment of :data:`~..plan.determinism.ENV` (cuBLAS workspace, Transformer Engine, NCCL), set before the
  backend first imports torch, so before cuBLAS, NCCL or Transformer Engine first read it.
- Megatron-Core (the Megatron-Core backend; ``megatron/build.transformer_config`` gets the recipe's flag):
  ``TransformerConfig.deterministic_mode``. In megatron-core 0.19.2 it makes the vocabulary-parallel embedding
  gather rows by indexing (``F.embedding``'s backward adds in a varying order), makes Transformer Engine's
  attention refuse to run unless ``NVTE_ALLOW_NONDETERMINISTIC_ALGO=0``, and picks the deterministic paths of the
  gated delta-net (no fused causal convolution); the MoE router and un-permutation follow PyTorch's switch above.

The default run (``deterministic: false``) is left exactly as it was: nothing here touches torch or the
environment. A run in a process that used CUDA before (a notebook) may keep cuBLAS's earlier workspace: the
run's notes say so.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from ..plan.determinism import ENV, env_to_set

_NO_DETERMINISTIC_KERNEL = re.compile(r"^(\S+) does not have a deterministic implementation")
"""How PyTorch words a ``warn_only`` alert: the op's kernel name first."""


class Determinism:
    """What a run asked for and what was in effect: the result's and the manifest's ``determinism``."""

    def __init__(self, requested: bool) -> None:
        self.requested = requested
        self.nondeterministic_ops: list[str] = []
        self.notes: list[str] = []
        self.set_env: dict[str, str] = {}

    def facts(self) -> dict[str, Any]:
        """The record of the run so far (called before its manifest is written)."""
        torch = sys.modules.get("torch")
        return {
            "requested": self.requested,
            "torch_deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()) if torch else False,
            "warn_only": bool(torch.is_deterministic_algorithms_warn_only_enabled()) if torch else False,
            "env": {k: os.environ.get(k) for k in ENV},
            "env_set_by_run": sorted(self.set_env),
            "nondeterministic_ops": list(self.nondeterministic_ops),
        }

    def saw(self, message: warnings.WarningMessage | Warning | str) -> bool:
        """Record an op PyTorch ran without a deterministic kernel; True when ``message`` was such an alert."""
        text = str(message)
        found = _NO_DETERMINISTIC_KERNEL.match(text)
        name = found.group(1) if found else ("cuBLAS" if "because it uses CuBLAS" in text else None)
        if name is None:
            return False
        if name not in self.nondeterministic_ops:
            self.nondeterministic_ops.append(name)
        return True


@contextlib.contextmanager
def applied(requested: bool) -> Iterator[Determinism]:
    """Inside: the deterministic settings when ``requested`` (restored on exit: a notebook keeps its own)."""
    state = Determinism(requested)
    if not requested:
        yield state
        return
    cuda_before = _cuda_in_use()
    state.set_env = env_to_set(os.environ)
    os.environ.update(state.set_env)
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if cuda_before and "CUBLAS_WORKSPACE_CONFIG" in state.set_env:
        state.notes.append("CUDA was used in this process before the run set CUBLAS_WORKSPACE_CONFIG; cuBLAS may keep "
                           "its earlier workspace, so start a fresh process for a bitwise reproducible run")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings():
            show = warnings.showwarning
            # PyTorch's alerts come from whichever library called the op (filtered by a quiet run): seen here first
            warnings.filterwarnings("always", message=r".*(does not have a deterministic implementation|"
                                                      r"because it uses CuBLAS)", category=UserWarning)

            def record(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                       file: Any = None, line: str | None = None) -> None:
                if not state.saw(message):
                    show(message, category, filename, lineno, file, line)

            warnings.showwarning = record
            yield state
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        for key in state.set_env:
            os.environ.pop(key, None)


def _cuda_in_use() -> bool:
    """Whether this process initialised CUDA already (without importing torch when it has not been)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def notes(state: Determinism) -> list[str]:
    """What a user should hear about the run's determinism (the result's notes)."""
    out = list(state.notes)
    if state.nondeterministic_ops:
        out.append(f"ops without a deterministic kernel ran ({', '.join(state.nondeterministic_ops[:8])}); PyTorch "
                   "warned instead of failing (warn_only), so the outputs may still vary between runs")
    return out
