"""Where a move between parallel layouts puts its temporary checkpoint: host memory or the output's disk.

A stage that needs another layout (ModelOpt's Megatron exporter is pipeline-parallel only) gets the model
through a Megatron distributed checkpoint that the old layout writes, the new one reads and the run then
deletes. Megatron-Core's writer fsyncs every file, so on disk the hand-over goes at disk speed (0.3-0.45 GB/s
measured on an H200 machine: 209 s of a 443 s qwen3-30b-a3b run) for a folder that lives seconds. In
``/dev/shm`` (tmpfs) a write is a memory copy and fsync does nothing. The run puts it there when that is safe:

- every rank is on this node: the new layout reads other ranks' shards, and no other node can read this
  node's memory;
- tmpfs has room for the checkpoint;
- host memory (the cgroup's limit too: tmpfs pages count against the container) holds the checkpoint and the
  writer's CPU copies of the shards.

Otherwise it stays in the output's staging folder, as before. ``MTR_HANDOVER_DIR`` forces a place: a folder
(fast local scratch, or a measurement) or ``output`` for the staging folder.

:func:`choose` is the decision alone (facts in, choice out, no machine read); :func:`read_machine` reads the
facts; :func:`place` decides on rank 0 and gives every rank the same answer. A folder outside the staging
folder is named after the output folder, so the next run of the same output removes what a killed run left
(:func:`remove_stale`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Literal

import attrs

ENV = "MTR_HANDOVER_DIR"
"""Environment variable forcing where the hand-over checkpoint goes: a folder, or ``output`` (the staging folder)."""
SHM = Path("/dev/shm")
GIB = 1 << 30
WRITER_COPIES = 2.0
"""The checkpoint writer's CPU copies of the shards while it writes, in checkpoints (an upper estimate)."""
MEMORY_MARGIN = 0.10
"""Fraction of the need kept free on top, plus :data:`MARGIN_BYTES`: the rest of the process lives there too."""
MARGIN_BYTES = 2 * GIB


@attrs.frozen(kw_only=True)
class Machine:
    """The facts the choice depends on (bytes; None: not known or not there)."""

    world_size: int = attrs.field(validator=attrs.validators.ge(1))
    local_world_size: int | None = None
    """Processes on this node (torchrun's ``LOCAL_WORLD_SIZE``); None when the launcher did not say."""
    shm_free: int | None = None
    """Free bytes in ``/dev/shm`` when it is a tmpfs mount; None when there is none (not Linux, not tmpfs)."""
    memory_available: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    cgroup_room: int | None = None
    """The cgroup v2 ``memory.max`` minus ``memory.current``; None when there is no limit."""
    forced: str | None = None
    """``MTR_HANDOVER_DIR`` as set (empty counts as unset)."""


@attrs.frozen(kw_only=True)
class Choice:
    """Where the hand-over goes and why (``where``: ``memory`` = /dev/shm, ``output`` = the staging folder,
    ``forced`` = the folder ``MTR_HANDOVER_DIR`` names)."""

    where: Literal["memory", "output", "forced"]
    reason: str
    base: str | None = None
    """The folder under which the hand-over folder is made (None: the staging folder)."""


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def memory_needed(checkpoint_bytes: int) -> int:
    """Host memory a hand-over through tmpfs needs: the checkpoint, the writer's copies, a margin."""
    return int(checkpoint_bytes * (1 + WRITER_COPIES) * (1 + MEMORY_MARGIN)) + MARGIN_BYTES


def shm_needed(checkpoint_bytes: int) -> int:
    """tmpfs room a hand-over needs: the checkpoint (its metadata and ModelOpt state included) and a margin."""
    return int(checkpoint_bytes * (1 + MEMORY_MARGIN)) + GIB


def choose(checkpoint_bytes: int, machine: Machine) -> Choice:
    """Host memory when every rank is on this node and tmpfs and memory have room; the output's disk otherwise.

    ``checkpoint_bytes``: the model's parameter and buffer bytes summed over all ranks (replicas counted each
    time: an over-estimate under data parallelism, on the safe side)."""
    forced = (machine.forced or "").strip()
    if forced == "output":
        return Choice(where="output", reason=f"the output's staging folder on disk ({ENV}=output)")
    if forced:
        return Choice(where="forced", reason=f"{forced} ({ENV})", base=forced)
    disk = "the output's staging folder on disk"
    if machine.shm_free is None:
        return Choice(where="output", reason=f"{disk}: this machine has no tmpfs /dev/shm")
    lws = machine.local_world_size
    if machine.world_size > 1 and lws != machine.world_size:
        nodes = "an unknown number of nodes" if lws is None else f"{-(-machine.world_size // lws)} nodes"
        return Choice(where="output", reason=f"{disk}: the {machine.world_size} ranks run on {nodes}, and another "
                                             "node cannot read this node's memory")
    need_shm = shm_needed(checkpoint_bytes)
    if machine.shm_free < need_shm:
        return Choice(where="output", reason=f"{disk}: /dev/shm has {_gb(machine.shm_free)} free, a "
                                             f"{_gb(checkpoint_bytes)} checkpoint needs {_gb(need_shm)}")
    room = machine.memory_available
    if machine.cgroup_room is not None:
        room = min(room, machine.cgroup_room)
    need = memory_needed(checkpoint_bytes)
    if room < need:
        return Choice(where="output", reason=f"{disk}: {_gb(room)} of host memory available, a "
                                             f"{_gb(checkpoint_bytes)} checkpoint through /dev/shm needs {_gb(need)}")
    return Choice(where="memory", base=str(SHM),
                  reason=f"host memory (/dev/shm): {_gb(machine.shm_free)} free in tmpfs and {_gb(room)} of memory "
                         f"available for a {_gb(checkpoint_bytes)} checkpoint")


# --------------------------------------------------------------------------- the machine
def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """cgroup v2 ``memory.max - memory.current`` of this process's cgroup (None: no limit or no cgroup v2)."""
    try:
        limit = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    if limit == "max" or not limit.isdigit():
        return None
    return max(int(limit) - current, 0)


def _shm_free() -> int | None:
    """Free bytes of ``/dev/shm`` when it is a tmpfs mount this user can write to."""
    if not sys.platform.startswith("linux") or not os.access(SHM, os.W_OK | os.X_OK):
        return None
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            if not any(line.split()[1:3] == [str(SHM), "tmpfs"] for line in f if len(line.split()) > 2):
                return None
        st = os.statvfs(SHM)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def read_machine(environ: dict[str, str] | None = None) -> Machine:
    """This process's facts: world sizes (torchrun's environment), /dev/shm, available memory, cgroup room."""
    import psutil

    from ...plan.resolve import TORCHRUN_VARS, resolve

    env = os.environ if environ is None else environ
    renv = resolve(environ={k: env[k] for k in TORCHRUN_VARS if k in env})
    return Machine(world_size=int(renv.value("world_size") or 1),
                   local_world_size=renv.value("local_world_size") if renv.is_set("local_world_size") else None,
                   shm_free=_shm_free(), memory_available=int(psutil.virtual_memory().available),
                   cgroup_room=_cgroup_room(), forced=env.get(ENV) or None)


# --------------------------------------------------------------------------- the folder
def scratch_name(output_dir: Path) -> str:
    """The hand-over folder's name outside the staging folder: this user, host and output folder (so runs of
    other outputs never meet, and the next run of the same output finds what a killed run left)."""
    key = f"{os.getuid() if hasattr(os, 'getuid') else 0}:{socket.gethostname()}:{Path(output_dir).absolute()}"
    return f"mtr-handover-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@attrs.frozen(kw_only=True)
class Place:
    """The hand-over folder of one stage, and the folder to delete with it (its own scratch folder, if any)."""

    folder: Path
    scratch: Path | None
    choice: Choice


def folder_for(choice: Choice, *, staging: Path, output_dir: Path, index: int) -> Place:
    if choice.base is None:
        return Place(folder=staging / f".relayout-{index}", scratch=None, choice=choice)
    scratch = Path(choice.base).absolute() / scratch_name(output_dir)
    return Place(folder=scratch / f"relayout-{index}", scratch=scratch, choice=choice)


def place(checkpoint_bytes: int, *, staging: Path, output_dir: Path, index: int) -> Place:
    """Decide on rank 0 (every rank gets its answer) and make the scratch folder (owner-only: model weights)."""
    from .. import distributed

    choice = None
    if distributed.is_main():
        choice = choose(checkpoint_bytes, read_machine())
        scratch = folder_for(choice, staging=staging, output_dir=output_dir, index=index).scratch
        if scratch is not None:
            try:
                shutil.rmtree(scratch, ignore_errors=True)
                scratch.mkdir(mode=0o700, parents=True)
            except OSError as exc:  # the disk, as before, rather than a rank failing alone
                choice = Choice(where="output", reason=f"the output's staging folder on disk: {scratch} could not "
                                                       f"be made ({exc.strerror or exc})")
    choice = distributed.broadcast_object(choice)
    return folder_for(choice, staging=staging, output_dir=output_dir, index=index)


def remove(where: Place) -> None:
    """Delete a hand-over folder, its half-written twin and its scratch folder (rank 0 calls it)."""
    for p in (where.folder, where.folder.with_name(where.folder.name + ".partial"), where.scratch):
        if p is not None:
            shutil.rmtree(p, ignore_errors=True)


def remove_stale(output_dir: Path, environ: dict[str, str] | None = None) -> list[str]:
    """Remove hand-over folders a killed run of this output left outside its staging folder (in /dev/shm and in
    the folder ``MTR_HANDOVER_DIR`` names); call on rank 0 with the output folder held. Returns what went."""
    env = os.environ if environ is None else environ
    bases = [SHM]
    forced = (env.get(ENV) or "").strip()
    if forced and forced != "output":
        bases.append(Path(forced))
    removed = []
    for base in bases:
        p = base.absolute() / scratch_name(output_dir)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(str(p))
    return removed
