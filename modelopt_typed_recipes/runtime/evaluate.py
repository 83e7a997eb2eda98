"""Held-out perplexity of a causal LM over token windows, for both backends (only the forward differs)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from .progress import track


def perplexity(batches: Sequence[Any], logits_of: Callable[[Any], Any], *, device: Any, label: str = "evaluate",
               progress: bool = True) -> float:
    """exp(mean next-token negative log-likelihood) over every next-token prediction inside the windows
    (``seq_length - 1`` per window). ``logits_of(ids)``: the backend's forward, ``[batch, seq, vocab]``."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for batch in track(batches, label, enabled=progress):
            ids = batch.to(device)
            logits = logits_of(ids).float()
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum")
            total += float(nll)
            count += ids[:, 1:].numel()
    return math.exp(total / count) if count else float("nan")


def add_change(metrics: dict[str, float | None]) -> dict[str, float | None]:
    """Add ``perplexity_change_pct`` (after vs before, in percent) when both were measured; both backends use it."""
    before, after = metrics.get("perplexity_before"), metrics.get("perplexity_after")
    if before and after:
        metrics["perplexity_change_pct"] = 100.0 * (after / before - 1)
    return metrics
