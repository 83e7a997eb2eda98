"""Run a recipe's evaluation tasks on one model: one executor per task class, one model adapter per backend.

A backend hands the executors a :class:`TaskModel`: its forward (``logits``), its generation and, where it
has one, its own MMLU (the Megatron-Core backend's is ModelOpt's ``megatron_mmlu``, which shards over
TP/PP/CP/DP). Everything else (items, prompts, scoring, accuracy) is decided here once for every backend.
Results go into ``PostTrainingResult.metrics`` as ``<task>_accuracy_<phase>`` (``spec.evaluation.metric_key``)
and in full into ``PostTrainingResult.tasks``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from ...errors import CompatibilityError
from ...spec.evaluation import MMLU, Generate, LMEval, NextSentence, Task, metric_key
from . import items as _items
from .score import continuation_logprobs, fit, last_token_choices


class TaskModel(Protocol):
    """What a backend gives the task executors."""

    device: Any
    max_length: int
    """The longest sequence the model takes (its position embeddings)."""
    progress: bool

    def logits(self, ids: Any) -> Any:
        """``[batch, seq]`` token ids -> ``[batch, seq, vocab]`` logits (every rank gets them)."""

    def generate(self, ids: list[int], *, max_new_tokens: int, greedy: bool, eos: int | None,
                 path: str) -> list[int]:
        """The new token ids after ``ids`` (at most ``max_new_tokens``, stopping at ``eos``); ``path`` is the
        task's place in the recipe (``tasks[i]``), which an error names."""

    def mmlu(self, task: MMLU, data: _items.MMLUData, tokenizer: Any, *, path: str) -> float | None:
        """The backend's own MMLU accuracy, or None to use the shared scorer; ``path`` as for ``generate``."""


@attrs.frozen(kw_only=True)
class TaskResult:
    """One task measured on one model."""

    accuracy: float | None
    """Share of items answered right (None: a generate task without references)."""
    correct: int | None
    total: int
    seconds: float
    scorer: str
    """Who scored it: ``log-likelihood`` (ours), ``megatron_mmlu`` (ModelOpt), ``generate``."""
    texts: tuple[str, ...] = ()
    """Generated continuations (generate tasks)."""
    per_task: dict[str, float] = attrs.field(factory=dict)
    """Each lm-eval task's value of the metric (lm_eval tasks; ``accuracy`` is their mean)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accuracy": self.accuracy, "correct": self.correct, "total": self.total,
                               "seconds": round(self.seconds, 3), "scorer": self.scorer}
        if self.texts:
            out["texts"] = list(self.texts)
        if self.per_task:
            out["per_task"] = dict(self.per_task)
        return out


def _ids(tokenizer: Any, text: str, *, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


# --------------------------------------------------------------------------- executors
def run_next_sentence(task: NextSentence, items: list[_items.ChoiceItem], lm: TaskModel, tokenizer: Any, *,
                      path: str, seed: int) -> TaskResult:
    """The choice the passage makes most likely relative to its likelihood on its own (pointwise mutual
    information, lm-eval's ``acc_mutual_info``): log p(sentence | passage) - log p(sentence | document start)."""
    start = [next((t for t in (getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "bos_token_id", None))
                   if t is not None), 0)]
    pairs, alone = [], []
    for item in items:
        ctx = _ids(tokenizer, item.context)
        for choice in item.choices:
            cont = _ids(tokenizer, choice)
            pairs.append(fit(ctx, cont, lm.max_length))
            alone.append(fit(start, cont, lm.max_length))
    label = f"{task.name}: score choices"
    given = continuation_logprobs(pairs, lm.logits, batch_size=task.batch_size, device=lm.device, label=label,
                                  progress=lm.progress)
    prior = continuation_logprobs(alone, lm.logits, batch_size=task.batch_size, device=lm.device,
                                  label=f"{task.name}: score alone", progress=lm.progress)
    correct, k = 0, 0
    for item in items:
        pmi = [given[k + j] - prior[k + j] for j in range(len(item.choices))]
        k += len(item.choices)
        correct += int(max(range(len(pmi)), key=pmi.__getitem__) == item.answer)
    return TaskResult(accuracy=correct / len(items) if items else None, correct=correct, total=len(items),
                      seconds=0.0, scorer="log-likelihood")


def run_mmlu(task: MMLU, data: _items.MMLUData, lm: TaskModel, tokenizer: Any, *, path: str, seed: int) -> TaskResult:
    """The backend's MMLU where it has one, else the answer letter with the highest next-token logit."""
    native = lm.mmlu(task, data, tokenizer, path=path)
    if native is not None:
        return TaskResult(accuracy=native, correct=round(native * len(data.test)), total=len(data.test),
                          seconds=0.0, scorer="megatron_mmlu")
    letters = [_ids(tokenizer, f" {letter}")[-1] for letter in _items.LETTERS]
    prompts = []
    for q in data.test:
        ids = _ids(tokenizer, _items.mmlu_prompt(q, data.dev.get(q.subject, ())[: task.few_shots]), special=True)
        prompts.append(ids[-lm.max_length:])
    picks = last_token_choices(prompts, letters, lm.logits, batch_size=task.batch_size, device=lm.device,
                               label=f"{task.name}: score answers", progress=lm.progress)
    correct = sum(int(p == q.answer) for p, q in zip(picks, data.test, strict=True))
    return TaskResult(accuracy=correct / len(data.test), correct=correct, total=len(data.test), seconds=0.0,
                      scorer="log-likelihood")


def run_generate(task: Generate, items: None, lm: TaskModel, tokenizer: Any, *, path: str, seed: int) -> TaskResult:
    """Continue every prompt; with references, count the continuations that begin with theirs."""
    import torch

    torch.manual_seed(seed)
    eos = getattr(tokenizer, "eos_token_id", None)
    texts = []
    for prompt in task.prompts:
        new = lm.generate(_ids(tokenizer, prompt), max_new_tokens=task.max_new_tokens, greedy=task.greedy, eos=eos,
                          path=path)
        texts.append(tokenizer.decode([t for t in new if t != eos], skip_special_tokens=True))
    if not task.references:
        return TaskResult(accuracy=None, correct=None, total=len(texts), seconds=0.0, scorer="generate",
                          texts=tuple(texts))
    correct = sum(int(matches(t, r)) for t, r in zip(texts, task.references, strict=True))
    return TaskResult(accuracy=correct / len(texts), correct=correct, total=len(texts), seconds=0.0,
                      scorer="generate", texts=tuple(texts))


def run_lm_eval(task: LMEval, items: None, lm: TaskModel, tokenizer: Any, *, path: str, seed: int) -> TaskResult:
    """lm-eval's ``simple_evaluate`` on the backend's Hugging Face model (the plan refuses other backends)."""
    from . import harness

    model = getattr(lm, "model", None)
    if model is None or not hasattr(model, "config"):
        raise CompatibilityError("lm-eval scores Hugging Face models", path=f"{path}.task", hint="backend: hf")
    accuracy, total, values = harness.run(task, model, tokenizer, device=lm.device, max_length=lm.max_length,
                                          path=path, seed=seed)
    return TaskResult(accuracy=accuracy, correct=None, total=total, seconds=0.0, scorer="lm-eval", per_task=values)


def matches(generated: str, reference: str) -> bool:
    """A continuation matches when it begins with the reference (white space at the start ignored)."""
    return generated.lstrip().startswith(reference.strip())


Executor = Callable[..., TaskResult]
EXECUTORS: Mapping[type, Executor] = {NextSentence: run_next_sentence, MMLU: run_mmlu, Generate: run_generate,
                                      LMEval: run_lm_eval}
"""One executor per task class: a new task is one spec class and one function here. Each takes the task, its
items (``items.task_items``; None where the spec or lm-eval holds them), the model and the tokenizer."""


# --------------------------------------------------------------------------- a phase
def evaluate_tasks(tasks: Sequence[Task], items: Sequence[_items.TaskItems], lm: TaskModel, tokenizer: Any, *,
                   seed: int = 0, only: Sequence[int] | None = None) -> dict[str, TaskResult]:
    """Every task (or the indices in ``only``) on ``lm``, in recipe order: name -> result. ``items``: each
    task's items as ``items.read_items`` read them once for the run (one per task, in the same order)."""
    if len(items) != len(tasks):
        raise ValueError(f"{len(tasks)} tasks but {len(items)} item lists: give read_items(tasks)")
    out: dict[str, TaskResult] = {}
    for i, (task, asked) in enumerate(zip(tasks, items, strict=True)):
        if only is not None and i not in only:
            continue
        t = time.perf_counter()
        result = EXECUTORS[type(task)](task, asked, lm, tokenizer, path=f"tasks[{i}]", seed=seed)
        out[task.name] = attrs.evolve(result, seconds=time.perf_counter() - t)
    return out


def record(phase: str, results: Mapping[str, TaskResult], metrics: dict[str, float | None],
           details: dict[str, dict[str, Any]]) -> None:
    """Put one phase's results into the run's metrics (accuracies) and task details (everything)."""
    for name, r in results.items():
        if r.accuracy is not None:
            metrics[metric_key(name, phase)] = r.accuracy
        details.setdefault(name, {})[phase] = r.to_dict()


__all__ = ["EXECUTORS", "TaskModel", "TaskResult", "evaluate_tasks", "matches", "record"]
