"""GPU models the planner knows: memory, compute capability, GPUs per node.

Capacities are the totals ``nvidia-smi`` reports (MiB), not the marketing gigabytes: an "80 GB"
H100 shows 81559 MiB (``benchmarks/multigpu_nvidia_smi.csv``), of which the driver keeps 480 MiB
(``torch.cuda.get_device_properties().total_memory`` = 85017493504 bytes there,
``benchmarks/memory_plan_measure_tp2.log``) and the CUDA context and NCCL take their share before PyTorch
allocates anything (see :data:`RESERVED_BYTES`). Only the H100 row was measured here.
When a GPU is present, :func:`detect` reads the real numbers through nvidia-ml-py (imported lazily; it is
optional).
"""

from __future__ import annotations

import attrs

from ..errors import UnknownNameError, did_you_mean

MIB = 1024**2
GIB = 1024**3


@attrs.frozen(kw_only=True)
class GpuSpec:
    name: str
    memory_bytes: int
    compute_capability: tuple[int, int]
    gpus_per_node: int = 8
    aliases: tuple[str, ...] = ()
    source: str = "table"

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


_TABLE = (
    GpuSpec(name="a100-80gb", memory_bytes=81920 * MIB, compute_capability=(8, 0),
            aliases=("a100", "a100-sxm4-80gb", "nvidia a100-sxm4-80gb", "a100-80g")),
    GpuSpec(name="h100-80gb", memory_bytes=81559 * MIB, compute_capability=(9, 0),
            aliases=("h100", "h100-sxm", "h100-80gb-hbm3", "nvidia h100 80gb hbm3", "h100-80g")),
    GpuSpec(name="h200-141gb", memory_bytes=143771 * MIB, compute_capability=(9, 0),
            aliases=("h200", "nvidia h200", "h200-141g")),
    GpuSpec(name="b200-192gb", memory_bytes=183359 * MIB, compute_capability=(10, 0),
            aliases=("b200", "nvidia b200")),
    GpuSpec(name="gb200", memory_bytes=189471 * MIB, compute_capability=(10, 0), gpus_per_node=4,
            aliases=("gb200-nvl72", "nvidia gb200")),
)

GPUS: dict[str, GpuSpec] = {g.name: g for g in _TABLE}

RESERVED_BYTES = 2 * GIB
"""Not available to tensors: CUDA context, NCCL buffers and the allocator's slack. An allowance, not a
measurement (``benchmarks/memory_plan.md`` measured tensor peaks only)."""
USABLE_FRACTION = 0.95
"""Share of the rest the plan may fill (fragmentation of PyTorch's caching allocator); an allowance, not
measured."""


def get_gpu(name: str) -> GpuSpec:
    """Look a GPU up by table name or alias (case-insensitive)."""
    key = name.strip().lower()
    for gpu in _TABLE:
        if key == gpu.name or key in gpu.aliases:
            return gpu
    choices = [g.name for g in _TABLE]
    raise UnknownNameError(f"unknown GPU {name!r}", path="gpu",
                           hint=did_you_mean(name, choices) or "one of " + ", ".join(choices))


def usable_bytes(gpu: GpuSpec) -> int:
    """Bytes the plan may give to weights, buffers and activations on one GPU."""
    return int((gpu.memory_bytes - RESERVED_BYTES) * USABLE_FRACTION)


def detect() -> GpuSpec | None:
    """The local GPU 0 through nvidia-ml-py, or ``None`` without a GPU or the library."""
    try:
        import pynvml  # nvidia-ml-py; optional
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - a probe: any NVML failure (no driver, no GPU, a broken library) is no GPU
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count < 1:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
        total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        try:
            cc = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
        except Exception:  # noqa: BLE001 - an old driver or library lacks it: capability unknown
            cc = (0, 0)
        return GpuSpec(name=name.lower(), memory_bytes=total, compute_capability=(int(cc[0]), int(cc[1])),
                       gpus_per_node=count, source="nvml")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110 - a failed shutdown leaves nothing to undo; the probe result stands
            pass
