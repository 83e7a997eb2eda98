"""Held-out perplexity of a transformers causal LM (the shared ``runtime.evaluate`` with its forward)."""

from __future__ import annotations

from typing import Any

from .. import evaluate


def perplexity(model: Any, batches: list[Any], *, device: str, label: str = "evaluate", progress: bool = True) -> float:
    """Perplexity over every next-token prediction inside the windows (``seq_length - 1`` per window)."""
    return evaluate.perplexity(batches, lambda ids: model(input_ids=ids).logits, device=device, label=label,
                               progress=progress)
