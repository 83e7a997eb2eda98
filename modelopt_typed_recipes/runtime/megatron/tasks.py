"""A Megatron-Core model as the evaluation tasks see it: ModelOpt's ``megatron_prefill``, ``megatron_generate``
and ``megatron_mmlu``, which handle TP, PP (logits broadcast from the last stage), SP, CP, EP and DP.

Every rank runs the same calls with the same inputs (the items are deterministic), so every rank ends with
the same accuracies and the gate decides the same everywhere.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from ...errors import CompatibilityError
from ...spec.evaluation import MMLU
from ..tasks.items import MMLUData, write_mmlu_folder


class MegatronTaskModel:
    """``runtime.tasks.run.TaskModel`` over an (unwrapped) Megatron-Core ``GPTModel`` on this rank."""

    def __init__(self, model: Any, *, max_length: int, workspace: Path, progress: bool = True) -> None:
        from .stages import _bars, _device

        self.model = model
        self.max_length = max_length
        self.workspace = workspace
        self.device = _device()
        self.progress = _bars(progress)

    def logits(self, ids: Any) -> Any:
        from modelopt.torch.utils.plugins.megatron_generate import megatron_prefill

        return megatron_prefill(self.model, ids)

    def generate(self, ids: list[int], *, max_new_tokens: int, greedy: bool, eos: int | None,
                 path: str) -> list[int]:
        """``megatron_generate`` on one prompt (it stops at ``eos`` for a batch of one), without a KV cache as
        Megatron-LM's post-quantization check runs it."""
        import torch
        from modelopt.torch.utils.plugins.megatron_generate import megatron_generate

        if not greedy:  # refused by the plan's check (plan/tasks.py); kept for direct callers
            raise CompatibilityError("the Megatron-Core backend generates greedily", path=f"{path}.greedy",
                                     hint="greedy: true, or backend: hf")
        prompt = torch.tensor([ids[-(self.max_length - max_new_tokens):]], dtype=torch.long, device=self.device)
        out = megatron_generate(self.model, prompt, osl=max_new_tokens,
                                eos_token_id=[eos] if eos is not None else [], enable_kv_cache=False,
                                disable_tqdm=not self.progress)
        return [int(t) for t in out[0].tolist()]

    def mmlu(self, task: MMLU, data: MMLUData, tokenizer: Any, *, path: str) -> float | None:
        """ModelOpt's ``megatron_mmlu`` on the task's questions (its ``fraction`` already applied), handed over as
        a folder in the ``cais/mmlu`` layout, which its ``datasets.load_dataset(folder, "all")`` reads. A failed
        import is an error, never a quiet switch to another scorer (the plan refuses a missing ``datasets``)."""
        from .. import distributed

        try:
            from modelopt.torch.utils.plugins.megatron_mmlu import megatron_mmlu
        except ImportError as exc:
            raise CompatibilityError(f"ModelOpt's megatron_mmlu, which the Megatron-Core backend scores MMLU with, "
                                     f"does not import here: {exc}", path=f"{path}.task",
                                     hint="pip install datasets (megatron_mmlu reads the MMLU folder with it), "
                                          "or backend: hf") from None

        dev = [q for qs in data.dev.values() for q in qs]
        # datasets caches a local folder by its name alone (not its parent, not its files): a folder named by
        # its content, so that a cache filled by other questions under the same name is never read back
        digest = hashlib.sha256(repr((data.test, dev)).encode()).hexdigest()[:16]
        folder = self.workspace / f".mmlu-{task.name}-{digest}"
        if distributed.is_main():
            shutil.rmtree(folder, ignore_errors=True)
            write_mmlu_folder(data.test, folder, dev=dev)
        distributed.barrier()
        try:
            return float(megatron_mmlu(self.model, tokenizer, few_shots=task.few_shots, fraction=1.0,
                                       batch_size=task.batch_size, mmlu_dataset=str(folder)))
        finally:
            distributed.barrier()
            if distributed.is_main():
                shutil.rmtree(folder, ignore_errors=True)  # a hand-over, not an output
