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
    return _reduce_ints([value], "MAX")[0]


def sum_over_ranks(value: int) -> int:
    """``value`` summed over all ranks (the bytes of a model whose shards the ranks hold)."""
    return _reduce_ints([value], "SUM")[0]


def sum_each_over_ranks(values: list[int]) -> list[int]:
    """Each of ``values`` summed over all ranks, in one collective (every rank passes as many, in one order)."""
    return _reduce_ints(values, "SUM")


def _reduce_ints(values: list[int], op: str) -> list[int]:
    """Integers all-reduced with ``torch.distributed.ReduceOp[op]`` (themselves when there is one rank)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    device = torch.cuda.current_device() if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return [int(v) for v in t.tolist()]


def counts_here(module: Any, weight: Any) -> tuple[bool, bool]:
    """Whether this rank counts ``weight`` (of Megatron-Core ``module``) as one of the model's weights, and
    whether it counts its values, so that figures summed over the ranks count each weight and each value once.

    Megatron-Core's own rule for what a rank holds (its gradient-norm sum skips duplicates the same way): an
    expert weight (the module's ``is_expert``, or the weight's ``allreduce`` set to False when it is reduced over
    the expert groups) is split over the expert-parallel ranks and the expert-tensor-parallel ones, and copied on
    the expert-data-parallel ones; any other weight is split over the pipeline and tensor-parallel ranks and
    copied on the data- (and context-) parallel ones. The first copy counts; of a weight split along the tensor
    (``tensor_model_parallel``), every tensor-parallel rank counts its values and the first counts the weight; of
    one copied on them too, the first counts both. Without Megatron-Core's groups, rank 0 (each holds the model)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return True, True
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return is_main(), is_main()
    if getattr(module, "is_expert", False) or not getattr(weight, "allreduce", True):
        first_copy = ps.get_expert_data_parallel_rank() == 0
        tp_rank = ps.get_expert_tensor_parallel_rank()
    else:
        first_copy = ps.get_data_parallel_rank(with_context_parallel=True) == 0
        tp_rank = ps.get_tensor_model_parallel_rank()
    split = bool(getattr(weight, "tensor_model_parallel", False))
    return first_copy and tp_rank == 0, first_copy and (split or tp_rank == 0)


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
