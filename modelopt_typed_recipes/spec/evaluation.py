"""Evaluation tasks beyond perplexity, and the gate that fails a run whose model got too bad.

A recipe's ``tasks`` is a tuple of these, tagged by ``task``; each is measured on the model before its
stages, after them, and on the re-loaded export where the backend can re-load it (the Hugging Face
backend does). Held-out perplexity stays where it was (the recipe's ``evaluation`` block).

- ``next_sentence``: a multiple-choice task built from text on this machine (by default the reference
  model's held-out split): given a passage, pick its true next sentence among ``choices`` sentences, the
  others drawn from other documents. Items are drawn deterministically from ``seed``, so every machine
  scores the same items.
- ``mmlu``: MMLU from a local folder (the ``cais/mmlu`` layout, or a ``save_to_disk`` folder), as Megatron-LM's
  ``mmlu.sh`` runs it: ``few_shots`` examples of the subject's dev split, the first ``fraction`` of each
  subject's test split, the answer letter with the highest next-token logit.
- ``generate``: greedy continuations of ``prompts`` (Megatron-LM's ``quantize.py --prompts``); with
  ``references``, accuracy is the share of continuations that begin with their reference text.

- ``lm_eval``: tasks of EleutherAI's lm-evaluation-harness through its Python API (Hugging Face backend; an
  optional extra), on data that is on this machine.

The ``gate`` (Megatron-LM's ``mmlu.sh --lower-bound``, generalised) checks the measurements after
compression and fails the run with a :class:`~modelopt_typed_recipes.errors.GateError` before the output
folder is put in place: a model below the bar leaves nothing behind.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Literal

import attrs

from ._validate import fail, non_empty_str, non_empty_strs, one_of, positive_int

# Built-in corpora a next_sentence task can draw from (the reference model's splits; kept beside recipe.py's).
TASK_CORPORA: tuple[str, ...] = ("reference-heldout", "reference-train")
PHASES: tuple[str, ...] = ("before", "after", "export")
"""When a task is measured: the model as loaded, after the stages (in memory), the export re-loaded."""

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _task_name(_inst: object, attr: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise fail(attr.name, f"must be a lower-case identifier (letters, digits, _), got {value!r}",
                   "e.g. name: mmlu_5shot")


def _fraction(_inst: object, attr: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise fail(attr.name, f"must be in (0, 1], got {value!r}", "e.g. 0.05 evaluates 5 % of each subject")


def _non_negative_int(_inst: object, attr: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(attr.name, f"must be zero or a positive integer, got {value!r}")


def metric_key(task: str, phase: str) -> str:
    """The key of a task's accuracy in ``PostTrainingResult.metrics`` (``mmlu_accuracy_after``): one rule."""
    return f"{task}_accuracy_{phase}"


# --------------------------------------------------------------------------- tasks
@attrs.frozen(kw_only=True)
class NextSentence:
    """Pick the true next sentence of a passage among ``choices`` sentences (the others from other documents).

    Each candidate is scored by how much the passage raises its log-likelihood (pointwise mutual information,
    lm-eval's ``acc_mutual_info``), so a sentence gains nothing from being short or common on its own. Needs
    only text on this machine: CPU CI measures a real accuracy signal with the shipped reference model
    (chance is ``1 / choices``). Sentences of the same document were tried as distractors first: the
    reference model tells them apart too rarely (48 % of 120 items) to show what compression changes.
    """

    task: Literal["next_sentence"] = attrs.field(default="next_sentence", validator=one_of(["next_sentence"]))
    name: str = attrs.field(default="next_sentence", validator=_task_name)
    """The key of its results (``next_sentence_accuracy_after``) and of its gate entries."""
    dataset: str | None = attrs.field(default="reference-heldout", validator=one_of(TASK_CORPORA, optional=True))
    """A built-in corpus; or set it to null and give ``files``."""
    files: tuple[str, ...] = attrs.field(default=(), validator=non_empty_strs)
    """``.txt`` (one document per file) or ``.jsonl`` (one per line, under ``text_field``)."""
    text_field: str = attrs.field(default="text", validator=non_empty_str)
    num_items: int = attrs.field(default=200, validator=positive_int)
    """Items to draw (fewer when the text has fewer eligible sentences)."""
    choices: int = attrs.field(default=4, validator=positive_int)
    context_chars: int = attrs.field(default=400, validator=positive_int)
    """Characters of the document before the answer that form the passage (cut at a word boundary)."""
    seed: int = 0
    """Which sentences become items and in which order the choices appear."""
    batch_size: int = attrs.field(default=16, validator=positive_int)

    def __attrs_post_init__(self) -> None:
        if (self.dataset is None) == (not self.files):
            raise fail("dataset", "give exactly one of dataset (a built-in corpus) and files (local text)",
                       f"built-in: {', '.join(TASK_CORPORA)}")
        if self.dataset == "reference-train":
            raise fail("dataset", "items from the training split measure memory, not skill", "use reference-heldout")
        if self.choices < 2:
            raise fail("choices", f"a multiple-choice item needs at least 2 choices, got {self.choices}")

    @property
    def chance(self) -> float:
        return 1.0 / self.choices


@attrs.frozen(kw_only=True)
class MMLU:
    """MMLU from a folder on this machine, scored as ModelOpt's ``megatron_mmlu`` scores it.

    ``path``: the ``cais/mmlu`` dataset as the Hub stores it (an ``all/`` folder of ``test``/``dev`` parquet
    files with a README naming the configs), or a ``DatasetDict`` written by ``save_to_disk`` with ``test``
    (and, for few-shot prompts, ``dev``) splits; columns ``question``, ``subject``, ``choices``, ``answer``.
    """

    task: Literal["mmlu"] = attrs.field(default="mmlu", validator=one_of(["mmlu"]))
    name: str = attrs.field(default="mmlu", validator=_task_name)
    path: str = attrs.field(validator=non_empty_str)
    few_shots: int = attrs.field(default=0, validator=_non_negative_int)
    """Solved examples of the same subject (from the dev split) before each question. ModelOpt 0.47's
    ``megatron_mmlu`` (the Megatron-Core backend) writes each solved example with no line break before its
    ``Answer:``, the Hugging Face backend's prompt has one: 0-shot prompts are the same on both, few-shot not."""
    fraction: float = attrs.field(default=1.0, validator=_fraction)
    """The first ``ceil(fraction * n)`` questions of each subject's test split."""
    batch_size: int = attrs.field(default=8, validator=positive_int)

    @property
    def chance(self) -> float:
        return 0.25


@attrs.frozen(kw_only=True)
class Generate:
    """Continue ``prompts`` (a sanity check after compression, as Megatron-LM's ``quantize.py --prompts``).

    The texts land in the result; with ``references`` the share of continuations that begin with their
    reference (after leading white space) is the task's accuracy, which a gate can require.
    """

    task: Literal["generate"] = attrs.field(default="generate", validator=one_of(["generate"]))
    name: str = attrs.field(default="generate", validator=_task_name)
    prompts: tuple[str, ...] = attrs.field(validator=non_empty_strs)
    max_new_tokens: int = attrs.field(default=32, validator=positive_int)
    greedy: bool = True
    """False: sample (seeded with the recipe's ``seed``); the Megatron-Core backend generates greedily only."""
    references: tuple[str, ...] = attrs.field(default=(), validator=non_empty_strs)
    """Expected continuations, one per prompt."""

    def __attrs_post_init__(self) -> None:
        if not self.prompts:
            raise fail("prompts", "give at least one prompt", "e.g. prompts: ['def fibonacci(n):']")
        if self.references and len(self.references) != len(self.prompts):
            raise fail("references", f"{len(self.references)} references for {len(self.prompts)} prompts",
                       "give one reference per prompt, or none")
        if self.references and not self.greedy:
            raise fail("references", "sampled text cannot be compared with references", "greedy: true")

    @property
    def scored(self) -> bool:
        return bool(self.references)


def _optional_non_negative(_inst: object, attr: attrs.Attribute, value: int | None) -> None:
    if value is not None:
        _non_negative_int(_inst, attr, value)


def _optional_positive(_inst: object, attr: attrs.Attribute, value: int | None) -> None:
    if value is not None:
        positive_int(_inst, attr, value)


@attrs.frozen(kw_only=True)
class LMEval:
    """Tasks of EleutherAI's lm-evaluation-harness, run by its Python API (``lm_eval.simple_evaluate``) on the
    Hugging Face model in memory and on the re-loaded export, as ModelOpt's ``hf_ptq.py --tasks lm_eval`` does.

    Optional (``pip install 'modelopt-typed-recipes[lm-eval]'``) and Hugging Face backend only. The tasks' data
    must be on this machine: tasks whose YAML files lie in ``include_path`` with a ``dataset_path`` of local
    files (``json``, ``csv``, ``parquet`` with ``dataset_kwargs.data_files``), or lm-eval's own tasks whose
    datasets are in the local Hugging Face cache (set ``HF_DATASETS_OFFLINE=1`` where the Hub is unreachable).
    The accuracy is the mean of ``metric`` over ``tasks``; each task's value is in the result too.
    """

    task: Literal["lm_eval"] = attrs.field(default="lm_eval", validator=one_of(["lm_eval"]))
    name: str = attrs.field(default="lm_eval", validator=_task_name)
    tasks: tuple[str, ...] = attrs.field(validator=non_empty_strs)
    """lm-eval task names (``hellaswag``, or the ``task:`` of a YAML file in ``include_path``)."""
    include_path: str | None = attrs.field(default=None)
    """A folder of lm-eval task YAML files (lm-eval's ``--include_path``)."""
    num_fewshot: int | None = attrs.field(default=None, validator=_optional_non_negative)
    """Solved examples before each item (None: each task's own default)."""
    limit: int | None = attrs.field(default=None, validator=_optional_positive)
    """At most this many items per task (None: all)."""
    batch_size: int = attrs.field(default=8, validator=positive_int)
    metric: str = attrs.field(default="acc", validator=non_empty_str)
    """The metric of each task that is this task's accuracy (``acc``, ``acc_norm``, ``exact_match``)."""

    def __attrs_post_init__(self) -> None:
        if not self.tasks:
            raise fail("tasks", "give at least one lm-eval task", "e.g. tasks: [hellaswag]")
        if self.include_path is not None and not str(self.include_path).strip():
            raise fail("include_path", "must be a folder path", "or leave it out")


Task = NextSentence | MMLU | Generate | LMEval
TASK_TYPES: tuple[type, ...] = (NextSentence, MMLU, Generate, LMEval)


# --------------------------------------------------------------------------- the gate
def _accuracies(_inst: object, attr: attrs.Attribute, value: Mapping[str, float]) -> None:
    for key, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
            raise fail(f"{attr.name}.{key}", f"an accuracy is a fraction in [0, 1], got {v!r}",
                       "e.g. 0.38 for 38 %")


def _optional_pct(_inst: object, attr: attrs.Attribute, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or (isinstance(value, float) and math.isnan(value))):
        raise fail(attr.name, f"must be a number (percent), got {value!r}")


@attrs.frozen(kw_only=True)
class Gate:
    """Bars the compressed model must clear; the run fails before its output is put in place otherwise.

    Checked on every measurement after the stages (the model in memory and the re-loaded export); with no
    compressing stage, on the model as loaded.
    """

    min_accuracy: dict[str, float] = attrs.field(factory=dict, validator=_accuracies)
    """Task name -> the lowest acceptable accuracy (``{mmlu: 0.38}``, as ``mmlu.sh --lower-bound 0.38``)."""
    max_accuracy_drop: dict[str, float] = attrs.field(factory=dict, validator=_accuracies)
    """Task name -> the largest acceptable drop from the accuracy before the stages (0.02: two points)."""
    max_perplexity_change_pct: float | None = attrs.field(default=None, validator=_optional_pct)
    """The largest acceptable held-out perplexity increase, in percent of the perplexity before."""

    def __attrs_post_init__(self) -> None:
        if not (self.min_accuracy or self.max_accuracy_drop or self.max_perplexity_change_pct is not None):
            raise fail("min_accuracy", "a gate with no bar checks nothing",
                       "set min_accuracy, max_accuracy_drop or max_perplexity_change_pct, or drop the gate")

    def enforce(self, metrics: Mapping[str, float | None]) -> None:
        """Raise a :class:`GateError` naming the first bar a measurement missed (all misses in the message)."""
        misses: list[tuple[str, str]] = []
        for field, task in self.task_names():
            if not _judged(metrics, task):
                misses.append((f"gate.{field}.{task}", f"{task} was not measured, so the gate cannot pass"))
        for task, bar in self.min_accuracy.items():
            for phase, value in _judged(metrics, task):
                if value < bar:
                    misses.append((f"gate.min_accuracy.{task}",
                                   f"{task} accuracy {value:.4f} ({phase}) is below the gate's {bar:g}"))
        for task, drop in self.max_accuracy_drop.items():
            before = metrics.get(metric_key(task, "before"))
            if before is None:
                continue
            for phase, value in _judged(metrics, task):
                if before - value > drop:
                    misses.append((f"gate.max_accuracy_drop.{task}",
                                   (f"{task} accuracy fell from {before:.4f} to {value:.4f} ({phase}), "
                                    f"more than the gate's {drop:g}")))
        limit = self.max_perplexity_change_pct
        ppl = metrics.get("perplexity_before")
        if limit is not None and ppl:
            for phase in ("after", "export"):
                now = metrics.get(f"perplexity_{phase}")
                if now is not None and 100.0 * (now / ppl - 1) > limit:
                    misses.append(("gate.max_perplexity_change_pct",
                                   (f"held-out perplexity rose {100.0 * (now / ppl - 1):+.2f} % ({phase}: "
                                    f"{ppl:.3f} -> {now:.3f}), more than the gate's {limit:+g} %")))
        if misses:
            from ..errors import GateError

            path, first = misses[0]
            more = "; ".join(m for _, m in misses[1:])
            raise GateError(first + (f" (also: {more})" if more else ""), path=path,
                            hint="no output was written; relax the gate or choose a gentler format")

    def task_names(self) -> list[tuple[str, str]]:
        """(field, task name) for every task the gate names."""
        return [("min_accuracy", k) for k in self.min_accuracy] + [("max_accuracy_drop", k)
                                                                   for k in self.max_accuracy_drop]


def _judged(metrics: Mapping[str, float | None], task: str) -> list[tuple[str, float]]:
    """The measurements a gate judges: after the stages and of the export; the loaded model when neither."""
    after = [(p, v) for p in ("after", "export") if (v := metrics.get(metric_key(task, p))) is not None]
    if after:
        return after
    before = metrics.get(metric_key(task, "before"))
    return [] if before is None else [("before", before)]


__all__ = ["MMLU", "PHASES", "TASK_TYPES", "Gate", "Generate", "LMEval", "NextSentence", "Task", "metric_key"]
