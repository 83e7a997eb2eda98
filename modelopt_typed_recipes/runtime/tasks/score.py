"""Log-likelihood scoring over a backend's forward: one implementation for every backend.

``logits_of(ids)`` is the backend's forward (``[batch, seq]`` token ids -> ``[batch, seq, vocab]``
logits), the same callable the perplexity loop takes. Sequences of a batch are right-padded: with a causal
model the logits at the real positions do not see the padding, so no attention mask is needed (ModelOpt's
``megatron_mmlu`` pads the same way). Only the positions that are scored get a log-softmax, so a large
vocabulary costs no ``batch x seq x vocab`` copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..progress import track

LogitsOf = Callable[[Any], Any]


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to waste little on padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _padded(seqs: Sequence[Sequence[int]], device: Any) -> Any:
    import torch

    ids = torch.zeros(len(seqs), max(len(s) for s in seqs), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return ids.to(device)


def fit(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut the context from the left (and, if need be, the continuation from the right) to ``max_length``."""
    cont = list(continuation)[: max_length - 1]
    ctx = list(context)[-(max_length - len(cont)):]
    return ctx, cont


def continuation_logprobs(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], logits_of: LogitsOf, *,
                          batch_size: int, device: Any, label: str = "score choices",
                          progress: bool = True) -> list[float]:
    """log p(continuation | context), summed over the continuation's tokens, for each (context, continuation)
    pair of token ids (the context non-empty)."""
    import torch

    out = [0.0] * len(pairs)
    groups = _batches([len(c) + len(k) for c, k in pairs], batch_size)
    with torch.no_grad():
        for group in track(groups, label, enabled=progress):
            logits = logits_of(_padded([list(pairs[i][0]) + list(pairs[i][1]) for i in group], device))
            for row, i in enumerate(group):
                ctx, cont = pairs[i]
                start = len(ctx) - 1  # the logits at position p predict token p + 1
                logp = logits[row, start : start + len(cont)].float().log_softmax(-1)
                target = torch.tensor(list(cont), dtype=torch.long, device=logp.device)
                out[i] = float(logp.gather(-1, target[:, None]).sum())
    return out


def last_token_choices(prompts: Sequence[Sequence[int]], choice_ids: Sequence[int], logits_of: LogitsOf, *,
                       batch_size: int, device: Any, label: str = "score answers",
                       progress: bool = True) -> list[int]:
    """For each prompt, the index of the choice token (``choice_ids``) with the highest logit after it."""
    import torch

    out = [0] * len(prompts)
    wanted = torch.tensor(list(choice_ids), dtype=torch.long)
    with torch.no_grad():
        for group in track(_batches([len(p) for p in prompts], batch_size), label, enabled=progress):
            logits = logits_of(_padded([prompts[i] for i in group], device))
            for row, i in enumerate(group):
                last = logits[row, len(prompts[i]) - 1].float()
                out[i] = int(last[wanted.to(last.device)].argmax())
    return out
