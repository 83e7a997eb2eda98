"""The environment a deterministic run (``deterministic: true``) needs, and what in it would break that.

These variables are read by their libraries once, at first use (cuBLAS when it creates its handle, NCCL when
a communicator starts, Transformer Engine at its first attention), so ``runtime/determinism.py`` sets them
before the backend's first import of torch. The values are those Megatron-LM's ``--deterministic-mode`` sets
(``megatron/training/determinism.py``); a value the user set that would make the run vary again is refused here,
before any model is built, instead of being overwritten behind their back.

No torch import: ``check`` calls this too.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import CompatibilityError, RecipeError

ENV: dict[str, str] = {
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "NVTE_ALLOW_NONDETERMINISTIC_ALGO": "0",
    "NCCL_ALGO": "Ring",
}
"""What a deterministic run sets where the user set nothing. cuBLAS: a fixed workspace per stream (without it
PyTorch's deterministic mode cannot make matrix products reproducible on CUDA >= 10.2). Transformer Engine:
deterministic attention kernels (Megatron-Core's TE attention refuses ``deterministic_mode`` without it).
NCCL: ring reductions, whose summation order does not change between runs."""

ACCEPTED: dict[str, frozenset[str]] = {
    "CUBLAS_WORKSPACE_CONFIG": frozenset({":4096:8", ":16:8"}),  # the two deterministic settings cuBLAS documents
    "NVTE_ALLOW_NONDETERMINISTIC_ALGO": frozenset({"0"}),
}
NCCL_ALGOS = frozenset({"Ring", "CollnetDirect", "CollnetChain", "^NVLS"})
"""NCCL algorithms a user may choose instead of ``Ring`` (``Tree`` reduces in an order that can vary)."""


def env_problems(environ: Mapping[str, str]) -> list[RecipeError]:
    """User-set variables in ``environ`` under which a deterministic run would not be reproducible."""
    out: list[RecipeError] = []
    for name, accepted in ACCEPTED.items():
        value = environ.get(name)
        if value is not None and value not in accepted:
            out.append(CompatibilityError(
                f"{name}={value!r} in the environment makes runs vary", path="deterministic",
                hint=f"unset it or set it to {' or '.join(sorted(accepted))}, or set deterministic: false"))
    algo = environ.get("NCCL_ALGO")
    if algo is not None:
        tokens = [t.strip() for t in algo.split(",") if t.strip()]
        if not tokens or any(t not in NCCL_ALGOS for t in tokens):
            out.append(CompatibilityError(
                f"NCCL_ALGO={algo!r} in the environment may reduce in a varying order", path="deterministic",
                hint=f"unset it (a deterministic run uses Ring) or use {', '.join(sorted(NCCL_ALGOS))}"))
    return out


def env_to_set(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables a deterministic run adds to ``environ`` (a value the user set, once accepted, stays)."""
    return {k: v for k, v in ENV.items() if k not in environ}
