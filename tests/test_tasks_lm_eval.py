"""The optional lm-eval task (EleutherAI's lm-evaluation-harness, Python API) on the Hugging Face backend.

Without lm-eval the plan refuses the task with a typed error naming the extra (always tested). With it (the
``lm-eval`` extra installed), a task YAML over local files made from the held-out split runs before the stages,
after them and on the re-loaded export, and its accuracy equals a direct transformers computation of the same
rule (the choice with the highest log-likelihood after the passage); unknown names and missing data fail in
the pre-flight, before any model is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelopt_typed_recipes.errors import CompatibilityError, DataError, UnknownNameError
from modelopt_typed_recipes.plan import tasks as plan_tasks
from modelopt_typed_recipes.plan.check import check_recipe
from modelopt_typed_recipes.runtime.api import load_recipe
from modelopt_typed_recipes.spec.evaluation import metric_key

ITEMS = 24


def recipe(tmp: Path, task: dict, **changes: object) -> dict:
    return {"name": "lm-eval", "model": "reference-llama", "source": {"type": "builtin"},
            "stages": [{"technique": "quantize", "format": "fp8"}, {"technique": "export"}],
            "calibration": {"dataset": "reference-train", "num_samples": 4, "seq_length": 128, "batch_size": 4},
            "evaluation": None, "tasks": [task], "output_dir": str(tmp / "out"), "backend": "hf", "device": "cpu",
            **changes}


def test_without_lm_eval_the_plan_refuses_the_task_naming_the_extra(tmp_path: Path, monkeypatch) -> None:
    real = plan_tasks.importlib.util.find_spec
    monkeypatch.setattr(plan_tasks.importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    r = load_recipe(recipe(tmp_path, {"task": "lm_eval", "tasks": ["hellaswag"]}))
    [err] = [e for e in check_recipe(r, backend="hf").errors if isinstance(e, CompatibilityError)]
    assert err.path == "tasks[0].task" and "lm_eval" in err.message
    assert err.hint == "pip install 'modelopt-typed-recipes[lm-eval]'"
    # and the Megatron-Core backend refuses it whatever is installed
    errors = check_recipe(load_recipe(recipe(tmp_path, {"task": "lm_eval", "tasks": ["x"]}, backend="megatron",
                                             device="cuda")), backend="megatron").errors
    assert any(e.path == "tasks[0].task" and "Hugging Face" in e.message for e in errors)


@pytest.fixture(scope="module")
def local_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An lm-eval multiple-choice task over a .jsonl file of held-out next-sentence items (no Hub)."""
    from modelopt_typed_recipes.runtime.tasks.items import next_sentence_items, task_documents
    from modelopt_typed_recipes.spec.evaluation import NextSentence

    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    source = NextSentence(num_items=ITEMS, seed=3)
    with open(folder / "items.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"context": item.context, "choices": list(item.choices), "answer": item.answer}) + "\n"
                     for item in next_sentence_items(source, task_documents(source, path="t")))
    (folder / "local_next_sentence.yaml").write_text(
        "task: local_next_sentence\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'items.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: answer\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n", encoding="utf-8")
    return folder


def _direct_accuracy(folder: Path) -> float:
    """The same rule by hand with transformers: each choice's log-likelihood after the passage, one at a time."""
    import torch
    from transformers import AutoModelForCausalLM

    from modelopt_typed_recipes.catalog.models.reference import builtin_weights_dir
    from modelopt_typed_recipes.runtime.data import load_tokenizer

    weights = builtin_weights_dir("reference-llama")
    tok = load_tokenizer(weights)
    model = AutoModelForCausalLM.from_pretrained(str(weights), dtype=torch.float32).eval()
    right = 0
    docs = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    with torch.no_grad():
        for doc in docs:
            scores = []
            for choice in doc["choices"]:
                ctx = tok(doc["context"], add_special_tokens=False).input_ids
                whole = tok(doc["context"] + choice, add_special_tokens=False).input_ids
                cont = whole[len(ctx):]
                logp = model(torch.tensor([whole])).logits[0].log_softmax(-1)
                scores.append(sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont)))
            right += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    return right / len(docs)


def test_lm_eval_before_after_and_on_the_export(local_task: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    from modelopt_typed_recipes.runtime import api

    task = {"task": "lm_eval", "name": "harness", "tasks": ["local_next_sentence"], "include_path": str(local_task)}
    result = api.run_post_training(recipe(tmp_path, task), progress=False)
    for phase in ("before", "after", "export"):
        got = result.tasks["harness"][phase]
        assert got["scorer"] == "lm-eval" and got["total"] == ITEMS, got
        assert got["per_task"]["local_next_sentence"] == result.metrics[metric_key("harness", phase)]
    before = result.metrics[metric_key("harness", "before")]
    assert before == pytest.approx(_direct_accuracy(local_task), abs=1e-9)
    assert abs(result.metrics[metric_key("harness", "export")] - before) <= 2 / ITEMS  # FP8 moves a near-tie at most


def test_lm_eval_unknown_names_and_missing_data_fail_before_any_model(local_task: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    from modelopt_typed_recipes.runtime import api

    with pytest.raises(UnknownNameError) as info:
        api.run_post_training(recipe(tmp_path, {"task": "lm_eval", "tasks": ["local_next_sentense"],
                                                "include_path": str(local_task)}), progress=False)
    assert info.value.path == "tasks[0].tasks[0]" and "local_next_sentence" in info.value.hint
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "t.yaml").write_text((local_task / "local_next_sentence.yaml").read_text().replace(
        str(local_task / "items.jsonl"), str(gone / "nothing.jsonl")).replace("local_next_sentence", "gone_task"))
    with pytest.raises(DataError) as info:
        api.run_post_training(recipe(tmp_path, {"task": "lm_eval", "tasks": ["gone_task"], "include_path": str(gone)}),
                              progress=False)
    assert info.value.path == "tasks[0].tasks" and "HF_DATASETS_OFFLINE" in info.value.hint
    with pytest.raises(DataError) as info:
        api.run_post_training(recipe(tmp_path, {"task": "lm_eval", "tasks": ["local_next_sentence"], "metric": "f1",
                                                "include_path": str(local_task)}), progress=False)
    assert info.value.path == "tasks[0].metric" and "acc" in info.value.hint
    assert not (tmp_path / "out").exists()
