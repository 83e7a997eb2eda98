"""torch.distributed and Megatron-Core's parallel state, set up from a :class:`ParallelLayout`.

One function for both ways a run starts: in-process (a notebook, one GPU or the CPU: a world of one with
a free local port) and under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment).
Stages that need another layout (export is pipeline-only) call :func:`set_layout` again: the process
group stays, Megatron's model-parallel groups are rebuilt.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from ..errors import LayoutError

if TYPE_CHECKING:
    from ..spec.layout import ParallelLayout


_OWN_GROUP = False
"""Whether :func:`init_process_group` started torch.distributed (then :func:`finish` may end it)."""


def free_port() -> int:
    """A TCP port nobody listens on now (bound to port 0, then released), for a world of one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (read by the planner:
    :func:`~..plan.resolve.launch_world`), or a world of one."""
    from ..plan.resolve import launch_world

    size, rank, local = launch_world()
    return rank, size, local


def init_process_group(*, device: str, ranks: tuple[int, int, int] | None = None) -> tuple[int, int]:
    """Start torch.distributed once (NCCL on CUDA, gloo on the CPU); return (rank, world size).

    ``ranks``: (rank, world size, local rank) from the run's plan; None reads torchrun's environment."""
    import torch
    import torch.distributed as dist

    rank, size, local = ranks if ranks is not None else world()
    if device == "cuda":
        torch.cuda.set_device(local % max(torch.cuda.device_count(), 1))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if size > 1:
            raise LayoutError("a multi-process run needs MASTER_PORT (start it with the plan's torchrun command)",
                              path="layout")
        os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=size)
    global _OWN_GROUP
    _OWN_GROUP = True
    return rank, size


def set_layout(layout: ParallelLayout, *, seed: int = 1234, device: str = "cuda") -> None:
    """(Re)build Megatron-Core's parallel groups for ``layout`` on the running process group.

    Ranks beyond ``TP*PP*CP`` become data-parallel replicas, which is how a pipeline-only export runs
    on the processes a TP=2 quantization started with.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    size = dist.get_world_size()
    mp = layout.model_parallel_size
    if size % mp:
        raise LayoutError(f"the layout needs a multiple of TP*PP*CP = {mp} processes, the run has {size}",
                          path="layout", hint="start the run with the plan's torchrun command")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(**layout.parallel_state_kwargs())
    if device == "cuda":
        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def seed_weights(seed: int, *, device: str = "cuda") -> None:
    """Seed every generator a model's random initialisation draws from (the CPU one and Megatron's CUDA
    ones), so random weights depend on ``seed`` alone."""
    import torch

    torch.manual_seed(seed)
    if device == "cuda":
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def max_over_ranks(value: int) -> int:
    """The largest ``value`` over all ranks (a stage's peak memory is its most loaded rank's)."""
    return _reduce_int(value, "MAX")


def sum_over_ranks(value: int) -> int:
    """``value`` summed over all ranks (the bytes of a model whose shards the ranks hold)."""
    return _reduce_int(value, "SUM")


def _reduce_int(value: int, op: str) -> int:
    """One integer all-reduced with ``torch.distributed.ReduceOp[op]`` (itself when there is one rank)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    device = torch.cuda.current_device() if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return int(t.item())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable data only): what one rank decided, every rank acts on."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def shutdown() -> None:
    """Drop the model-parallel groups (the process group stays for a later run in the same process)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()


def finish() -> None:
    """End the process group this module started (a command line run ends here); a group someone else
    started (a notebook, a test harness) is left alone."""
    global _OWN_GROUP
    if not _OWN_GROUP:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        shutdown()
        dist.destroy_process_group()
    _OWN_GROUP = False
