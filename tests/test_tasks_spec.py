"""Evaluation tasks and the gate as recipe data: parsed through the one converter, typed errors with field
paths, the gate's rule on measurements, and the next_sentence items (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.errors import DataError, GateError, RecipeError, SpecError
from modelopt_typed_recipes.runtime.tasks.items import (
    LETTERS,
    check_tasks,
    mmlu_prompt,
    next_sentence_items,
    questions_from_items,
    task_documents,
)
from modelopt_typed_recipes.spec.evaluation import MMLU, Gate, Generate, NextSentence, metric_key
from modelopt_typed_recipes.spec.recipe import Recipe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def doc(**changes: object) -> dict:
    base: dict = {"model": "reference-llama", "source": {"type": "builtin"},
                  "stages": [{"technique": "quantize", "format": "fp8"}, {"technique": "export"}],
                  "evaluation": {"dataset": "reference-heldout"}, "output_dir": "out"}
    base.update(changes)
    return base


def error(**changes: object) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(doc(**changes))
    return info.value


def test_tasks_and_gate_round_trip_through_yaml() -> None:
    r = Recipe.from_dict(doc(
        tasks=[{"task": "next_sentence", "num_items": 50}, {"task": "mmlu", "path": "/data/mmlu", "few_shots": 5,
                                                            "fraction": 0.05},
               {"task": "generate", "prompts": ["def f(x):"], "references": ["return"]}],
        gate={"min_accuracy": {"mmlu": 0.38, "generate": 1}, "max_accuracy_drop": {"next_sentence": 0.05},
              "max_perplexity_change_pct": 2}))
    assert r.tasks == (NextSentence(num_items=50), MMLU(path="/data/mmlu", few_shots=5, fraction=0.05),
                       Generate(prompts=("def f(x):",), references=("return",)))
    assert r.gate == Gate(min_accuracy={"mmlu": 0.38, "generate": 1.0}, max_accuracy_drop={"next_sentence": 0.05},
                          max_perplexity_change_pct=2.0)
    assert Recipe.from_dict(__import__("yaml").safe_load(r.to_yaml())) == r


def test_todays_evaluation_block_is_unchanged() -> None:
    r = Recipe.load(EXAMPLES / "reference-fp8.yaml")
    assert r.tasks == () and r.gate is None and r.evaluation is not None and r.evaluation.num_samples == 32


@pytest.mark.parametrize(("changes", "path", "words"), [
    ({"tasks": [{"task": "mmlu"}]}, "tasks[0].path", "required"),
    ({"tasks": [{"task": "nxt_sentence"}]}, "tasks[0].task", "next_sentence"),
    ({"tasks": [{"num_items": 3}]}, "tasks[0].task", "say which task"),
    ({"tasks": [{"task": "next_sentence", "num_item": 3}]}, "tasks[0].num_item", "num_items"),
    ({"tasks": [{"task": "next_sentence", "choices": 1}]}, "tasks[0].choices", "at least 2"),
    ({"tasks": [{"task": "next_sentence", "dataset": "reference-train"}]}, "tasks[0].dataset", "memory"),
    ({"tasks": [{"task": "next_sentence", "dataset": None}]}, "tasks[0].dataset", "exactly one"),
    ({"tasks": [{"task": "mmlu", "path": "x", "fraction": 0}]}, "tasks[0].fraction", "(0, 1]"),
    ({"tasks": [{"task": "mmlu", "path": "x", "few_shots": -1}]}, "tasks[0].few_shots", "zero or"),
    ({"tasks": [{"task": "mmlu", "path": "x", "name": "MMLU 5"}]}, "tasks[0].name", "identifier"),
    ({"tasks": [{"task": "generate", "prompts": []}]}, "tasks[0].prompts", "at least one"),
    ({"tasks": [{"task": "generate", "prompts": ["a"], "references": ["b", "c"]}]}, "tasks[0].references", "one"),
    ({"tasks": [{"task": "generate", "prompts": ["a"], "references": ["b"], "greedy": False}]},
     "tasks[0].references", "greedy"),
    ({"tasks": [{"task": "next_sentence"}, {"task": "next_sentence"}]}, "tasks[1].name", "already"),
    ({"gate": {"min_accuracy": {"mmlu": 0.4}}}, "gate.min_accuracy.mmlu", "no task"),
    ({"tasks": [{"task": "mmlu", "path": "x"}], "gate": {"min_accuracy": {"mmlx": 0.4}}},
     "gate.min_accuracy.mmlx", "'mmlu'"),
    ({"tasks": [{"task": "mmlu", "path": "x"}], "gate": {"min_accuracy": {"mmlu": 38}}},
     "gate.min_accuracy.mmlu", "fraction"),
    ({"tasks": [{"task": "generate", "prompts": ["a"]}], "gate": {"min_accuracy": {"generate": 1}}},
     "gate.min_accuracy.generate", "references"),
    ({"gate": {}}, "gate.min_accuracy", "checks nothing"),
    ({"evaluation": None, "gate": {"max_perplexity_change_pct": 1}}, "gate.max_perplexity_change_pct", "perplexity"),
    ({"gate": {"max_perplexity_change_pct": "lots"}}, "gate.max_perplexity_change_pct", "float"),
])
def test_bad_tasks_are_typed_errors_with_paths(changes: dict, path: str, words: str) -> None:
    err = error(**changes)
    assert isinstance(err, SpecError)
    assert err.path == path and words in str(err), str(err)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.dictionaries(st.sampled_from(["task", "name", "path", "num_items", "choices", "fraction",
                                                 "few_shots", "prompts", "references", "greedy", "seed", "x"]),
                                st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(-1, 2),
                                          st.text(max_size=12), st.sampled_from(["mmlu", "generate", "next_sentence"]),
                                          st.lists(st.text(max_size=5), max_size=3))),
                max_size=3),
       st.dictionaries(st.sampled_from(["min_accuracy", "max_accuracy_drop", "max_perplexity_change_pct"]),
                       st.one_of(st.floats(-5, 5), st.dictionaries(st.text(max_size=8), st.floats(-1, 2)))))
def test_random_tasks_and_gates_build_or_raise_spec_errors(tasks: list, gate: dict) -> None:
    try:
        Recipe.from_dict(doc(tasks=tasks, gate=gate or None))
    except SpecError as err:
        assert err.path.startswith(("tasks", "gate")), err
    # anything else (TypeError, KeyError, ...) fails the test


# --------------------------------------------------------------------------- the gate's rule
def test_gate_judges_after_and_export_and_names_the_bar() -> None:
    gate = Gate(min_accuracy={"mmlu": 0.4}, max_accuracy_drop={"mmlu": 0.05}, max_perplexity_change_pct=1.0)
    ok = {metric_key("mmlu", "before"): 0.5, metric_key("mmlu", "after"): 0.48, metric_key("mmlu", "export"): 0.47,
          "perplexity_before": 10.0, "perplexity_after": 10.05, "perplexity_export": 10.09}
    gate.enforce(ok)
    with pytest.raises(GateError) as info:
        gate.enforce({**ok, metric_key("mmlu", "export"): 0.39})
    assert info.value.path == "gate.min_accuracy.mmlu" and "0.3900 (export)" in str(info.value)
    assert "fell from 0.5000 to 0.3900" in str(info.value)  # the drop is reported too
    with pytest.raises(GateError) as info:
        gate.enforce({**ok, "perplexity_export": 10.2})
    assert info.value.path == "gate.max_perplexity_change_pct" and "+2.00 %" in str(info.value)
    with pytest.raises(GateError) as info:  # a bar on a task that was never measured cannot pass silently
        gate.enforce({"perplexity_before": 10.0})
    assert info.value.path == "gate.min_accuracy.mmlu" and "not measured" in str(info.value)
    # nothing compressed: the model as loaded is judged
    with pytest.raises(GateError):
        Gate(min_accuracy={"mmlu": 0.6}).enforce({metric_key("mmlu", "before"): 0.5})


# --------------------------------------------------------------------------- next_sentence items
def test_next_sentence_items_are_deterministic_and_true() -> None:
    task = NextSentence(num_items=40, seed=3)
    docs = task_documents(task, path="tasks[0]")
    items = next_sentence_items(task, docs)
    assert items == next_sentence_items(task, docs) and len(items) == 40
    assert items != next_sentence_items(NextSentence(num_items=40, seed=4), docs)
    text = "\f".join(docs)
    answers = [0, 0, 0, 0]
    for item in items:
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        assert item.context + item.choices[item.answer] in text  # the true sentence follows its passage
        for j, choice in enumerate(item.choices):
            if j != item.answer:  # distractors come from other documents
                assert not any(item.context in d and choice.strip() in d for d in docs)
        answers[item.answer] += 1
    assert min(answers) >= 4  # the answer's position is spread, not always first


def test_the_held_out_split_gives_hundreds_of_items() -> None:
    task = NextSentence(num_items=10_000)
    assert len(next_sentence_items(task, task_documents(task, path="t"))) > 400


def test_task_text_errors_before_any_model(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("One sentence only.")
    with pytest.raises(DataError) as info:
        check_tasks((NextSentence(dataset=None, files=(str(short),)),))
    assert info.value.path == "tasks[0].files"
    with pytest.raises(DataError) as info:
        check_tasks((NextSentence(dataset=None, files=(str(tmp_path / "missing.txt"),)),))
    assert info.value.path == "tasks[0].files[0]"
    with pytest.raises(DataError) as info:
        check_tasks((Generate(prompts=("a",)), MMLU(path=str(tmp_path / "nowhere"))))
    assert info.value.path == "tasks[1].path"


def test_mmlu_prompt_is_hendrycks_format() -> None:
    task = NextSentence(num_items=3)
    q = questions_from_items(next_sentence_items(task, task_documents(task, path="t")), subjects=("python_docs",))
    prompt = mmlu_prompt(q[0], q[1:3])
    assert prompt.startswith("The following are multiple choice questions (with answers) about python docs.\n\n")
    assert prompt.endswith("\nD. " + q[0].choices[3] + "\nAnswer:")
    assert prompt.count("\nAnswer:") == 3 and f"Answer: {LETTERS[q[1].answer]}\n\n" in prompt
