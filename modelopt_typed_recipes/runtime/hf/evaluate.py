"""Held-out perplexity of a causal LM: exp(mean next-token negative log-likelihood) over token windows."""

from __future__ import annotations

import math
from typing import Any

from .progress import track


def perplexity(model: Any, batches: list[Any], *, device: str, label: str = "evaluate", progress: bool = True) -> float:
    """Perplexity over every next-token prediction inside the windows (``seq_length - 1`` per window)."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in track(batches, label, enabled=progress):
            ids = batch.to(device)
            logits = model(input_ids=ids).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += ids[:, 1:].numel()
    return math.exp(total / count) if count else float("nan")
