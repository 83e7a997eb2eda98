"""Giving PyTorch's cached GPU memory back to the driver after each stage.

PyTorch's caching allocator keeps the blocks a stage freed (a calibration batch's activations, a dropped
teacher) for its own reuse. NCCL takes its buffers (a new communicator, the first point-to-point channel
between two ranks) from the driver, outside that cache: after a batch-48 calibration of qwen3-30b-a3b on two
H200s the next stage's first NCCL call failed with "Cuda failure 2 'out of memory'" while PyTorch held the room
as free cached blocks. Any stage can be followed by work that opens NCCL buffers (an export, an evaluation,
tasks, a move between layouts), so both backends' stage loops call :func:`release_cached_memory` once before
the first stage (loading the model and the measurements before leave blocks cached too) and once after every
stage.
"""

from __future__ import annotations


def release_cached_memory() -> None:
    """Return this process's unused cached CUDA blocks to the driver; blocks in use stay. A no-op where CUDA
    was never initialised (a CPU run), and cheap when little is cached: no barrier between ranks; freeing a block
    (``cudaFree``) waits for this GPU's queued work, which a stage boundary has finished anyway."""
    import torch

    torch.cuda.empty_cache()  # itself checks that CUDA is initialised
