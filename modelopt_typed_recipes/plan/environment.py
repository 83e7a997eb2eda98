"""What the machine offers, probed without importing torch: package versions from metadata, Transformer
Engine from ``importlib.util.find_spec``, the GPU from nvidia-ml-py (or the ``/dev/nvidia*`` nodes)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

import attrs


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """``"0.18.0rc1"`` -> ``(0, 18, 0)``; None when there is no version."""
    if not text:
        return None
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def dist_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@attrs.frozen(kw_only=True)
class Environment:
    """What the machine offers, read without importing torch."""

    megatron_core: str | None = None
    modelopt: str | None = None
    transformer_engine: bool = False
    cuda: bool = False
    gpu_name: str | None = None
    gpu_count: int = 0

    @classmethod
    def detect(cls) -> Environment:
        te = importlib.util.find_spec("transformer_engine") is not None
        gpu_name, count = None, 0
        try:
            from .gpus import detect as detect_gpu

            spec = detect_gpu()
            if spec is not None:
                gpu_name, count = spec.name, 1
        except Exception:  # nvidia-ml-py absent or broken: fall back to the device nodes
            spec = None
        if count == 0:
            nodes = sorted(Path("/dev").glob("nvidia[0-9]*"))
            count = len(nodes)
        return cls(
            megatron_core=dist_version("megatron-core"),
            modelopt=dist_version("nvidia-modelopt"),
            transformer_engine=te,
            cuda=count > 0 or os.environ.get("MTR_ASSUME_CUDA") == "1",
            gpu_name=gpu_name,
            gpu_count=count,
        )

    def mcore_at_least(self, version: tuple[int, int]) -> bool:
        v = version_tuple(self.megatron_core)
        return v is not None and v[:2] >= version
