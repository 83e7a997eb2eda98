"""The items of the evaluation tasks, as plain data: built, read and checked without torch.

``next_sentence_items`` cuts documents into sentences and draws multiple-choice items from them with a
seeded ``random.Random``: the same text and seed give the same items on every machine. ``load_mmlu`` reads
MMLU from a local folder (the ``cais/mmlu`` layout or a ``save_to_disk`` folder) and checks its columns;
``write_mmlu_folder`` writes questions in the ``cais/mmlu`` layout (the offline test fixture, and the folder
ModelOpt's ``megatron_mmlu`` reads through ``datasets.load_dataset(folder, "all")``). ``check_tasks`` runs
in ``run_post_training``'s pre-flight, so bad task data fails before any model is built; a backend then reads
each task's items once (``read_items``) for its cache keys and every phase's measurement.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from ...errors import DataError
from ...spec.evaluation import MMLU, LMEval, NextSentence, Task
from ...spec.recipe import TextData

LETTERS = "ABCD"
MMLU_COLUMNS = ("question", "subject", "choices", "answer")

# A sentence ends at . ! or ? followed by white space and a capital, a quote, a bracket or markup.
_BOUNDARY = re.compile(r"(?<=[.!?])(\s+)(?=[A-Z\"'(`*])")
_MIN_CHARS, _MAX_CHARS = 20, 200
"""Sentences shorter or longer than this are neither asked nor offered (headings, code listings)."""


@attrs.frozen(kw_only=True)
class ChoiceItem:
    """One multiple-choice item: a passage, candidate continuations (each with its leading separator)."""

    context: str
    choices: tuple[str, ...]
    answer: int


@attrs.frozen(kw_only=True)
class Question:
    """One MMLU question (the ``cais/mmlu`` columns)."""

    question: str
    subject: str
    choices: tuple[str, ...]
    answer: int


@attrs.frozen(kw_only=True)
class MMLUData:
    """The test questions a task evaluates (its ``fraction`` applied) and the dev examples by subject."""

    test: tuple[Question, ...]
    dev: dict[str, tuple[Question, ...]]


# --------------------------------------------------------------------------- next_sentence
def _sentences(doc: str) -> list[tuple[int, int, int]]:
    """(separator start, sentence start, sentence end) for every sentence of ``doc``; the first has no
    separator (its separator start equals its start)."""
    out: list[tuple[int, int, int]] = []
    sep, start = 0, 0
    for m in _BOUNDARY.finditer(doc):
        out.append((sep, start, m.start()))
        sep, start = m.start(), m.end()
    out.append((sep, start, len(doc.rstrip())))
    return out


def next_sentence_items(task: NextSentence, documents: Sequence[str]) -> list[ChoiceItem]:
    """Up to ``task.num_items`` items: passage = the ``context_chars`` before a sentence (from a word
    boundary), choices = that sentence and ``choices - 1`` sentences of other documents, in a seeded order.
    Each choice carries the white space that precedes the true sentence, so all are read alike."""
    rng = random.Random(task.seed)
    spans = [_sentences(doc) for doc in documents]
    fits = [[(s, e) for _, s, e in sents if _MIN_CHARS <= e - s <= _MAX_CHARS] for sents in spans]
    candidates = [(d, k) for d, sents in enumerate(spans) for k, (sep, s, e) in enumerate(sents)
                  if k > 0 and sep >= _MIN_CHARS and _MIN_CHARS <= e - s <= _MAX_CHARS]
    rng.shuffle(candidates)
    items: list[ChoiceItem] = []
    for d, k in candidates:
        if len(items) >= task.num_items:
            break
        doc = documents[d]
        sep, start, end = spans[d][k]
        first = max(0, sep - task.context_chars)
        context = doc[first:sep]
        if first > 0:  # begin at a word boundary
            cut = re.search(r"\s", context)
            context = context[cut.end():] if cut else context
        true = doc[start:end]
        pool = [documents[o][s:e] for o in range(len(documents)) if o != d for s, e in fits[o]]
        pool = [p for p in pool if p != true]
        if not context.strip() or len(pool) < task.choices - 1:
            continue
        options = rng.sample(pool, task.choices - 1)
        answer = rng.randrange(task.choices)
        options.insert(answer, true)
        joiner = doc[sep:start]
        items.append(ChoiceItem(context=context, choices=tuple(joiner + o for o in options), answer=answer))
    return items


def task_documents(task: NextSentence, *, path: str) -> list[str]:
    """The documents a next_sentence task draws from (the same reader as calibration text)."""
    from ..data import read_documents

    return read_documents(TextData(dataset=task.dataset, files=task.files, text_field=task.text_field), path=path)


# --------------------------------------------------------------------------- MMLU
def _import_datasets(where: str) -> object:
    try:
        import datasets
    except ImportError:
        raise DataError("reading MMLU needs the `datasets` package", path=where, hint="pip install datasets") from None
    return datasets


def _rows(folder: Path, split: str, *, where: str) -> list[dict[str, object]] | None:
    """The rows of one split: a ``save_to_disk`` folder, or the ``all/`` parquet files of the cais layout."""
    datasets = _import_datasets(where)
    try:
        if (folder / "dataset_dict.json").is_file():
            dd = datasets.load_from_disk(str(folder))  # type: ignore[attr-defined]
            if split not in dd:
                return None
            ds = dd[split]
        else:
            files = sorted((folder / "all").glob(f"{split}-*.parquet"))
            if not files:
                return None
            ds = datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]},  # type: ignore[attr-defined]
                                       split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a broken folder
        raise DataError(f"cannot read the {split} split of {str(folder)!r}: {type(exc).__name__}: {exc}"[:400],
                        path=where) from None
    missing = [c for c in MMLU_COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(f"the {split} split has no column {missing[0]!r} (columns: {', '.join(ds.column_names)})",
                        path=where, hint="MMLU needs the cais/mmlu columns: question, subject, choices, answer")
    return list(ds.select_columns(list(MMLU_COLUMNS)))


def _questions(rows: Iterable[dict[str, object]], *, split: str, where: str) -> list[Question]:
    out = []
    for n, row in enumerate(rows):
        choices, answer = row["choices"], row["answer"]
        if not isinstance(choices, list | tuple) or len(choices) != len(LETTERS):
            raise DataError(f"row {n} of the {split} split has {choices!r} as choices, not {len(LETTERS)} texts",
                            path=where)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(LETTERS):
            raise DataError(f"row {n} of the {split} split has answer {answer!r}, not 0-3", path=where)
        out.append(Question(question=str(row["question"]), subject=str(row["subject"]),
                            choices=tuple(str(c) for c in choices), answer=answer))
    return out


def load_mmlu(task: MMLU, *, path: str) -> MMLUData:
    """The questions ``task`` evaluates; DataError naming the field for a missing or malformed folder."""
    folder = Path(task.path).expanduser()
    where = f"{path}.path"
    if not folder.is_dir():
        raise DataError(f"{task.path!r} is not a folder", path=where,
                        hint="the cais/mmlu dataset downloaded elsewhere (its all/ folder), or a save_to_disk folder")
    test_rows = _rows(folder, "test", where=where)
    if test_rows is None:
        raise DataError(f"{task.path!r} has no test split", path=where,
                        hint="expected all/test-*.parquet (the cais/mmlu layout) or a save_to_disk DatasetDict")
    test = _questions(test_rows, split="test", where=where)
    if not test:
        raise DataError(f"the test split of {task.path!r} is empty", path=where)
    counts: dict[str, int] = {}
    for q in test:
        counts[q.subject] = counts.get(q.subject, 0) + 1
    taken: dict[str, int] = {}
    chosen = []
    for q in test:  # the first ceil(fraction * n) of each subject, in file order, as megatron_mmlu takes them
        if taken.get(q.subject, 0) < math.ceil(task.fraction * counts[q.subject]):
            taken[q.subject] = taken.get(q.subject, 0) + 1
            chosen.append(q)
    dev: dict[str, tuple[Question, ...]] = {}
    if task.few_shots:
        dev_rows = _rows(folder, "dev", where=where)
        if dev_rows is None:
            raise DataError(f"{task.few_shots}-shot prompts need a dev split, and {task.path!r} has none",
                            path=f"{path}.few_shots", hint="few_shots: 0")
        by: dict[str, list[Question]] = {}
        for q in _questions(dev_rows, split="dev", where=where):
            by.setdefault(q.subject, []).append(q)
        short = sorted(s for s in counts if len(by.get(s, [])) < task.few_shots)
        if short:
            have = min(len(by.get(s, [])) for s in short)
            raise DataError(f"subject {short[0]!r} has {have} dev examples, fewer than few_shots={task.few_shots}",
                            path=f"{path}.few_shots", hint=f"few_shots: {have} or less")
        dev = {s: tuple(v) for s, v in by.items()}
    return MMLUData(test=tuple(chosen), dev=dev)


def mmlu_prompt(question: Question, shots: Sequence[Question]) -> str:
    """The prompt of Hendrycks et al.'s MMLU (as ModelOpt's ``megatron_mmlu`` builds it for 0 shots): a header
    naming the subject, solved examples, then the question, lettered choices and ``Answer:``."""
    def block(q: Question) -> str:
        return q.question + "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, q.choices, strict=True)) + "\nAnswer:"

    head = f"The following are multiple choice questions (with answers) about {question.subject.replace('_', ' ')}.\n\n"
    return head + "".join(f"{block(s)} {LETTERS[s.answer]}\n\n" for s in shots) + block(question)


def write_mmlu_folder(questions: Sequence[Question], folder: Path, *, dev: Sequence[Question] = ()) -> Path:
    """Write ``questions`` (test) and ``dev`` in the ``cais/mmlu`` layout: ``all/`` and one folder per subject of
    parquet files, and a README whose YAML names the configs, as the dataset is stored on the Hub, so that
    ``datasets.load_dataset(folder, "all", split="test")`` reads it offline."""
    datasets = _import_datasets("tasks")
    features = datasets.Features({  # type: ignore[attr-defined]
        "question": datasets.Value("string"),  # type: ignore[attr-defined]
        "subject": datasets.Value("string"),  # type: ignore[attr-defined]
        "choices": datasets.Sequence(datasets.Value("string")),  # type: ignore[attr-defined]
        "answer": datasets.ClassLabel(names=list(LETTERS)),  # type: ignore[attr-defined]
    })
    splits = {"test": list(questions), "dev": list(dev)}
    configs = {"all": splits}
    for subject in sorted({q.subject for q in [*questions, *dev]}):
        configs[subject] = {k: [q for q in v if q.subject == subject] for k, v in splits.items()}
    card = ["---", "configs:"]
    for name, parts in configs.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        card += [f"- config_name: {name}", "  data_files:"]
        for split, qs in parts.items():
            rows = {"question": [q.question for q in qs], "subject": [q.subject for q in qs],
                    "choices": [list(q.choices) for q in qs], "answer": [q.answer for q in qs]}
            datasets.Dataset.from_dict(rows, features=features).to_parquet(  # type: ignore[attr-defined]
                str(folder / name / f"{split}-00000-of-00001.parquet"))
            card += [f"  - split: {split}", f"    path: {name}/{split}-*"]
    card += ["---", "", "Multiple-choice questions in the cais/mmlu layout (written by modelopt-typed-recipes).", ""]
    (folder / "README.md").write_text("\n".join(card), encoding="utf-8")
    return folder


def questions_from_items(items: Sequence[ChoiceItem], *, subjects: Sequence[str] = ("python_docs",),
                         prompt: str = "Which sentence comes next?") -> list[Question]:
    """next_sentence items as MMLU questions (the passage and a prompt; the four sentences as choices),
    spread over ``subjects`` in turn: an MMLU-format fixture made from text on this machine."""
    out = []
    for i, item in enumerate(items):
        if len(item.choices) != len(LETTERS):
            raise ValueError(f"MMLU questions have {len(LETTERS)} choices; item {i} has {len(item.choices)}")
        out.append(Question(question=f"{item.context.strip()}\n{prompt}", subject=subjects[i % len(subjects)],
                            choices=tuple(c.strip() for c in item.choices), answer=item.answer))
    return out


# --------------------------------------------------------------------------- a run's items
TaskItems = MMLUData | list[ChoiceItem] | None
"""What a task asks, read from its data: MMLU's questions, next_sentence's items, or None (generate's prompts
are its spec; lm_eval's data is lm-eval's)."""


def task_items(task: Task, *, path: str) -> TaskItems:
    """The items ``task`` asks, read from its folder or text; DataError at ``path`` when unreadable."""
    if isinstance(task, MMLU):
        return load_mmlu(task, path=path)
    if isinstance(task, NextSentence):
        return next_sentence_items(task, task_documents(task, path=path))
    return None


def read_items(tasks: Sequence[Task]) -> list[TaskItems]:
    """Every task's items, read once for a run: its cache keys and each phase's measurement use these, so the
    data is not read again (and a folder rewritten during the run cannot mix two question sets)."""
    return [task_items(task, path=f"tasks[{i}]") for i, task in enumerate(tasks)]


def items_digest(items: TaskItems) -> str:
    """What identifies the items a task asks, beyond its spec: the questions read from its MMLU folder (their
    subjects, splits and number, as ``fraction`` took them) or the items cut from its text. A result kept under
    the spec alone would be read back after the folder or the files under the same path changed."""
    content: object = ()  # generate: the prompts are the spec; lm_eval: its task names pick lm-eval's data
    if isinstance(items, MMLUData):
        content = (items.test, sorted(items.dev.items()))
    elif items is not None:
        content = items
    return hashlib.sha256(repr(content).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- pre-flight
def check_tasks(tasks: Sequence[Task]) -> None:
    """Every task's data readable and non-empty (no torch); raises DataError at ``tasks[i]...``."""
    for i, task in enumerate(tasks):
        path = f"tasks[{i}]"
        items = task_items(task, path=path)
        if isinstance(task, NextSentence) and not items:
            raise DataError(
                f"the text gives no {task.choices}-choice item: documents need at least {task.choices} "
                f"sentences of {_MIN_CHARS}-{_MAX_CHARS} characters", path=f"{path}.{'files' if task.files else 'dataset'}",
                hint="give longer documents, or fewer choices")
        if isinstance(task, LMEval):
            from . import harness  # lm-eval's index and its data loaders (the optional extra)

            harness.check(task, path=path)


__all__ = ["ChoiceItem", "MMLUData", "Question", "TaskItems", "check_tasks", "items_digest", "load_mmlu", "mmlu_prompt",
           "next_sentence_items", "questions_from_items", "read_items", "task_documents", "task_items",
           "write_mmlu_folder"]
