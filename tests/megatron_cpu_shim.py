"""TEST-ONLY shim: lets Megatron-Core 0.16.1's forward and dist-checkpointing run on a CPU-only torch.

Never imported by the package. It patches exactly the CUDA calls modelopt-api.md §8 lists
(``torch.cuda.synchronize``, ``torch.cuda.current_device``, the CUDA RNG tracker's ``fork``) makes
Megatron's default causal mask build on the CPU and lets megatron_prefill's logit broadcast take CPU tensors. Use it through the ``megatron_cpu`` fixture, which
undoes every patch afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def megatron_on_cpu() -> Iterator[None]:
    import torch
    from megatron.core import tensor_parallel
    from megatron.core.inference import communication_utils as comm
    from megatron.core.transformer import utils as tutils

    tracker = tensor_parallel.get_cuda_rng_tracker()
    saved = (torch.cuda.synchronize, torch.cuda.current_device, type(tracker).fork,
             getattr(tutils, "get_default_causal_mask", None), comm._is_cuda, torch.cuda.mem_get_info)
    torch.cuda.mem_get_info = lambda *a, **k: (0, 1)  # megatron_generate shows free memory in its progress bar
    comm._is_cuda = lambda tensor: None  # megatron_prefill broadcasts logits; gloo takes CPU tensors
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: "cpu"
    type(tracker).fork = lambda self, *a, **k: contextlib.nullcontext()
    if saved[3] is not None:
        def cpu_mask(sq: int):
            return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)
        tutils.get_default_causal_mask = cpu_mask
    try:
        yield
    finally:
        torch.cuda.synchronize, torch.cuda.current_device = saved[0], saved[1]
        type(tracker).fork = saved[2]
        if saved[3] is not None:
            tutils.get_default_causal_mask = saved[3]
        comm._is_cuda = saved[4]
        torch.cuda.mem_get_info = saved[5]


@contextlib.contextmanager
def megatron_mmlu_on_cpu() -> Iterator[None]:
    """Inside ``megatron_on_cpu``: ModelOpt's ``megatron_mmlu`` moves each batch with ``.cuda()`` and counts on
    ``device="cuda"``; here both stay on the CPU (``Tensor.cuda`` returns the tensor, the counters are CPU
    tensors). Everything else in it (prompts, datasets reading, batching, scoring) runs as on a GPU."""
    import importlib

    import torch

    mod = importlib.import_module("modelopt.torch.utils.plugins.megatron_mmlu")  # the package re-exports the function

    class _CpuTorch:
        def __getattr__(self, name: str):
            return getattr(torch, name)

        @staticmethod
        def zeros(*args, device=None, **kwargs):
            return torch.zeros(*args, **kwargs)

    saved = (torch.Tensor.cuda, mod.torch)
    torch.Tensor.cuda = lambda self, *a, **k: self
    mod.torch = _CpuTorch()
    try:
        yield
    finally:
        torch.Tensor.cuda, mod.torch = saved
