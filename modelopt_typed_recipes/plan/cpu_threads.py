"""How many CPU threads each rank of a run uses (the recipe's ``cpu_threads``), decided here once.

Why it matters: ModelOpt's Megatron exporter copies every weight to the host and quantizes and packs it there
(``_get_weight_bias`` moves it with ``.cpu()``, then ``to_quantized_weight``), with PyTorch's CPU threads. Under
``torchrun --nproc-per-node`` > 1, torchrun sets ``OMP_NUM_THREADS=1`` for every worker unless the caller set it,
and PyTorch sizes its thread pool from it, so each rank packs its weights with one thread while the node's other
cores idle: a qwen3-8b NVFP4 export at PP2 took 194 s on two H200s, a llama-3.1-8b one in a single process 80 s.

``auto`` (the default): this rank's share of the node, the cores this process may run on (its CPU affinity, capped
by a cgroup v2 CPU quota) divided by the ranks on this node (torchrun's ``LOCAL_WORLD_SIZE``), at least one. The
ranks together then use the node's cores once, which is what ``OMP_NUM_THREADS=1`` guards against oversubscribing.
PyTorch's own count is kept where it is more than one and within the share: in a single process that is its
default (physical cores, where the share counts hyperthreads too), or an ``OMP_NUM_THREADS`` the user set. A count
of one is raised to the share: torchrun puts 1 there by itself, and launchers write 1 as a blanket default
(torchrun; Megatron-LM's ``conf/arguments.sh``; the sbatch script of ``mtrecipes plan --sbatch``), not as a choice
about this run. A count above the share is lowered to it. A run that must use other counts says so in the recipe
(``cpu_threads: 4``); an integer is used as given. The run records what it used and why (the result's and the
manifest's ``cpu_threads``). The thread count changes speed only: the packed bytes are the same (elementwise
casts, exact maxima), so the field is not part of the recipe's content hash.

No torch import: ``check`` may call this too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from ..spec.recipe import AUTO_CPU_THREADS as AUTO

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@attrs.frozen(kw_only=True)
class ThreadChoice:
    """The threads one rank uses and why (``requested``: the recipe's value)."""

    requested: str | int
    threads: int
    reason: str
    usable_cores: int
    local_ranks: int


def cgroup_cores(text: str | None) -> int | None:
    """Whole cores a cgroup v2 ``cpu.max`` (``"QUOTA PERIOD"`` or ``"max PERIOD"``) allows; None: no limit."""
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity (``taskset``, Slurm's binding), capped by a CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota = cgroup_cores(CGROUP_CPU_MAX.read_text())
    except OSError:
        quota = None
    return max(1, min(cores, quota) if quota else cores)


def local_ranks(environ: Mapping[str, str]) -> int:
    """The processes on this node as the launcher said (torchrun's ``LOCAL_WORLD_SIZE``); 1 when it did not."""
    try:
        n = int(environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return 1
    return max(1, n)


def choose(requested: str | int, *, cores: int, ranks: int, current: int | None = None) -> ThreadChoice:
    """The thread count for ``requested`` (``auto`` or a number) on a node of ``cores`` usable CPUs and ``ranks``;
    ``current``: PyTorch's count in this process before the run (None: not known)."""
    if requested == AUTO:
        threads = max(1, cores // ranks)
        reason = f"auto: {cores} usable cores / {ranks} rank{'s' if ranks != 1 else ''} on this node"
        if current is not None and 1 < current < threads:
            reason += f" allow {threads}; PyTorch's own {current} kept (its default or OMP_NUM_THREADS)"
            threads = current
    else:
        threads = int(requested)
        reason = f"cpu_threads: {threads} in the recipe"
        if threads * ranks > cores:
            reason += f" ({ranks} rank{'s' if ranks != 1 else ''} x {threads} > {cores} usable cores: oversubscribed)"
    return ThreadChoice(requested=requested, threads=threads, reason=reason, usable_cores=cores, local_ranks=ranks)


def for_this_process(requested: str | int, environ: Mapping[str, str] | None = None,
                     current: int | None = None) -> ThreadChoice:
    """:func:`choose` with this process's cores and launcher (``current``: PyTorch's count now)."""
    return choose(requested, cores=usable_cores(), ranks=local_ranks(os.environ if environ is None else environ),
                  current=current)
