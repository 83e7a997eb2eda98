"""torch dtypes from a recipe's short names (``fp32``, ``bf16``, ``fp16``), for both backends."""

from __future__ import annotations

from typing import Any

from ..spec.arch import DTYPE_NAMES


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, DTYPE_NAMES[name])
