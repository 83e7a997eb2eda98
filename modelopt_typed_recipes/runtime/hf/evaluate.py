"""Held-out perplexity of a transformers causal LM (the shared ``runtime.evaluate`` with its forward)."""

from __future__ import annotations

from typing import Any

from .. import evaluate


def perplexity(model: Any, batches: list[Any], *, device: str, label: str = "evaluate", progress: bool = True) -> float:
    """Perplexity over every next-token prediction inside the windows (``seq_length - 1`` per window)."""
    return evaluate.perplexity(batches, lambda ids: model(input_ids=ids).logits, device=device, label=label,
                               progress=progress)


class HFTaskModel:
    """A transformers causal LM as the evaluation tasks see it (``runtime.tasks.run.TaskModel``)."""

    def __init__(self, model: Any, *, device: str, progress: bool = True) -> None:
        self.model = model
        self.device = device
        self.progress = progress
        self.max_length = int(getattr(model.config, "max_position_embeddings", 0) or 2048)

    def logits(self, ids: Any) -> Any:
        return self.model(input_ids=ids).logits

    def generate(self, ids: list[int], *, max_new_tokens: int, greedy: bool, eos: int | None,
                 path: str) -> list[int]:
        """transformers' ``generate``: greedy, or sampling at temperature 1 (seeded by the caller)."""
        import torch

        prompt = torch.tensor([ids[-(self.max_length - max_new_tokens):]], dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {"do_sample": False} if greedy else {"do_sample": True, "temperature": 1.0,
                                                                       "top_k": 0, "top_p": 1.0}
        with torch.no_grad():
            out = self.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                                      eos_token_id=eos, pad_token_id=eos if eos is not None else 0, **kwargs)
        return [int(t) for t in out[0, prompt.shape[1]:]]

    def mmlu(self, task: Any, data: Any, tokenizer: Any, *, path: str) -> float | None:
        return None  # the shared log-likelihood scorer
