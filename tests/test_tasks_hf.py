"""Evaluation tasks through the Hugging Face backend on the CPU, with the shipped reference model: a real
accuracy signal (next_sentence well above chance), MMLU from a fixture in the cais/mmlu layout made from the
held-out split, generation with references, measurements before / after / on the re-loaded export, and a
gate that fails the run before anything is put in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelopt_typed_recipes.errors import DataError, GateError
from modelopt_typed_recipes.runtime import api
from modelopt_typed_recipes.runtime.tasks import items as task_items
from modelopt_typed_recipes.runtime.tasks.items import (
    items_digest,
    load_mmlu,
    mmlu_prompt,
    next_sentence_items,
    questions_from_items,
    read_items,
    task_documents,
    write_mmlu_folder,
)
from modelopt_typed_recipes.spec.evaluation import MMLU, Generate, NextSentence, metric_key

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

SUBJECTS = ("python_language", "python_library")
PROMPTS = ("The \"assert\" statement", "Assignment statements are used to")


@pytest.fixture(scope="module")
def mmlu_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MMLU-format fixture from the held-out split: 5 dev questions per subject, the rest as test."""
    task = NextSentence(num_items=34, seed=11)
    qs = questions_from_items(next_sentence_items(task, task_documents(task, path="t")), subjects=SUBJECTS)
    return write_mmlu_folder(qs[10:], tmp_path_factory.mktemp("mmlu") / "cais-mmlu", dev=qs[:10])


def recipe(tmp: Path, mmlu: Path, **changes: object) -> dict:
    return {
        "name": "tasks", "model": "reference-llama", "source": {"type": "builtin"},
        "stages": [{"technique": "quantize", "format": "int4_awq"}, {"technique": "export"}],
        "calibration": {"dataset": "reference-train", "num_samples": 8, "seq_length": 256, "batch_size": 8},
        "evaluation": {"dataset": "reference-heldout", "num_samples": 4, "seq_length": 256, "batch_size": 4},
        "tasks": [{"task": "next_sentence", "num_items": 48},
                  {"task": "mmlu", "path": str(mmlu), "few_shots": 2, "fraction": 0.5},
                  {"task": "generate", "prompts": list(PROMPTS), "max_new_tokens": 12}],
        "output_dir": str(tmp / "out"), "backend": "hf", "device": "cpu", **changes,
    }


def test_fixture_reads_as_megatron_mmlu_reads_it_and_as_save_to_disk(mmlu_dir: Path, tmp_path: Path) -> None:
    # ModelOpt's megatron_mmlu calls exactly this
    test = datasets.load_dataset(str(mmlu_dir), "all", split="test")
    dev = datasets.load_dataset(str(mmlu_dir), "all", split="dev")
    assert len(test) == 24 and len(dev) == 10 and set(test["subject"]) == set(SUBJECTS)
    ours = load_mmlu(MMLU(path=str(mmlu_dir), few_shots=5), path="tasks[0]")
    assert len(ours.test) == 24 and {s: len(v) for s, v in ours.dev.items()} == {s: 5 for s in SUBJECTS}
    # the same questions from a save_to_disk folder
    datasets.DatasetDict({"test": test, "dev": dev}).save_to_disk(str(tmp_path / "disk"))
    assert load_mmlu(MMLU(path=str(tmp_path / "disk"), few_shots=5), path="t") == ours
    # fraction: the first ceil(fraction * n) of each subject
    assert len(load_mmlu(MMLU(path=str(mmlu_dir), fraction=0.1), path="t").test) == 2 * 2
    with pytest.raises(DataError) as info:
        load_mmlu(MMLU(path=str(mmlu_dir), few_shots=6), path="tasks[2]")
    assert info.value.path == "tasks[2].few_shots" and "few_shots: 5" in str(info.value)
    broken = tmp_path / "broken"
    datasets.DatasetDict({"test": test.remove_columns("answer")}).save_to_disk(str(broken))
    with pytest.raises(DataError) as info:
        load_mmlu(MMLU(path=str(broken)), path="tasks[0]")
    assert info.value.path == "tasks[0].path" and "'answer'" in str(info.value)


def test_tasks_before_after_and_on_the_reloaded_export(mmlu_dir: Path, tmp_path: Path) -> None:
    result = api.run_post_training(recipe(tmp_path, mmlu_dir), progress=False)
    m = result.metrics
    for phase in ("before", "after", "export"):
        for task in ("next_sentence", "mmlu"):
            assert 0 <= m[metric_key(task, phase)] <= 1, (task, phase, m)
        assert len(result.tasks["generate"][phase]["texts"]) == 2
    # a real signal: the reference model picks the true next sentence far above chance (0.25)
    assert m[metric_key("next_sentence", "before")] >= 0.6, m
    # INT4-AWQ moves it a little, not to chance
    assert abs(m[metric_key("next_sentence", "export")] - m[metric_key("next_sentence", "before")]) <= 0.15, m
    assert result.tasks["mmlu"]["before"]["total"] == 12 and result.tasks["mmlu"]["before"]["scorer"] == "log-likelihood"
    assert result.tasks["next_sentence"]["before"]["total"] == 48
    assert "generate" not in {k.split("_accuracy")[0] for k in m if "_accuracy_" in k}  # no references: no accuracy
    manifest = json.loads((Path(result.output_dir) / "manifest.json").read_text())
    assert manifest["result"]["tasks"]["next_sentence"]["export"]["accuracy"] == m[metric_key("next_sentence", "export")]


def test_mmlu_scorer_equals_a_direct_transformers_computation(mmlu_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from modelopt_typed_recipes.catalog.models.reference import builtin_weights_dir
    from modelopt_typed_recipes.runtime.data import load_tokenizer
    from modelopt_typed_recipes.runtime.hf.evaluate import HFTaskModel
    from modelopt_typed_recipes.runtime.tasks.run import run_mmlu

    folder = builtin_weights_dir("reference-llama")
    tok = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    task = MMLU(path=str(mmlu_dir), few_shots=1, batch_size=5)
    data = load_mmlu(task, path="t")
    ours = run_mmlu(task, data, HFTaskModel(model, device="cpu", progress=False), tok, path="t", seed=0)
    letters = [tok.encode(f" {c}", add_special_tokens=False)[-1] for c in "ABCD"]
    right = 0
    with torch.no_grad():
        for q in data.test:  # one prompt at a time, no padding
            ids = tok(mmlu_prompt(q, data.dev[q.subject][:1]), return_tensors="pt").input_ids
            right += int(model(ids).logits[0, -1, letters].argmax()) == q.answer
    assert ours.correct == right and ours.total == len(data.test) == 24


def test_generate_references_and_a_gate_that_fails_leaves_nothing(mmlu_dir: Path, tmp_path: Path) -> None:
    # the unmodified model's own greedy continuations are the references: it matches them all before
    fp8 = [{"technique": "quantize", "format": "fp8"}, {"technique": "export"}]
    first = api.run_post_training(recipe(tmp_path / "a", mmlu_dir, stages=fp8, tasks=[
        {"task": "generate", "prompts": list(PROMPTS), "max_new_tokens": 12}]), progress=False)
    refs = [t.strip()[:20] for t in first.tasks["generate"]["before"]["texts"]]
    assert all(refs), first.tasks
    gated = recipe(tmp_path / "b", mmlu_dir, stages=fp8, tasks=[
        {"task": "generate", "prompts": list(PROMPTS), "max_new_tokens": 12, "references": refs},
        {"task": "next_sentence", "num_items": 24}],
        gate={"min_accuracy": {"next_sentence": 0.99}, "max_accuracy_drop": {"generate": 1.0}})
    with pytest.raises(GateError) as info:
        api.run_post_training(gated, progress=False)
    assert info.value.path == "gate.min_accuracy.next_sentence" and "below the gate's 0.99" in str(info.value)
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []  # no output, no staging
    # a gate the model clears: the run lands, generation matched its references before
    passed = api.run_post_training({**gated, "gate": {"min_accuracy": {"next_sentence": 0.5}}}, progress=False)
    assert passed.metrics[metric_key("generate", "before")] == 1.0
    assert (Path(passed.output_dir) / "export" / "config.json").is_file()


def test_mmlu_before_is_measured_again_when_the_folder_holds_other_questions(tmp_path: Path) -> None:
    """The result before the stages is kept for the process (several recipes, one model); the same task spec on
    a folder rewritten with another question set is measured again, not read back from the first."""
    task = NextSentence(num_items=34, seed=11)
    qs = questions_from_items(next_sentence_items(task, task_documents(task, path="t")), subjects=SUBJECTS)
    folder = tmp_path / "cais-mmlu"
    fp8 = [{"technique": "quantize", "format": "fp8"}]
    small = {"dataset": "reference-train", "num_samples": 2, "seq_length": 128, "batch_size": 2}

    def run(out: str) -> dict:
        doc = recipe(tmp_path / out, folder, stages=fp8, calibration=small, evaluation=None,
                     tasks=[{"task": "mmlu", "path": str(folder)}])
        return api.run_post_training(doc, progress=False).tasks["mmlu"]

    write_mmlu_folder(qs[10:], folder, dev=qs[:10])
    first = run("a")
    assert first["before"]["total"] == 24
    write_mmlu_folder(qs[10:20], folder, dev=qs[:10])
    second = run("b")
    assert second["before"]["total"] == second["after"]["total"] == 10, second


def test_each_tasks_data_is_read_once_by_the_backend(mmlu_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The cache key of the result before the stages and the measurements before, after and on the export all
    use one read of each task's data: the MMLU folder's test split and the next_sentence file are read once by
    the pre-flight check and once by the backend, however many phases there are."""
    from modelopt_typed_recipes.runtime import data

    heldout = (data.REFERENCE_DIR / "heldout.txt").read_text(encoding="utf-8").split(data.DOC_SEPARATOR)
    text = tmp_path / "docs.jsonl"
    text.write_text("".join(json.dumps({"text": d}) + "\n" for d in heldout if d.strip()), encoding="utf-8")
    reads = {"mmlu": 0, "next_sentence": 0}
    rows, documents = task_items._rows, data.read_documents

    def counting_rows(folder: Path, split: str, *, where: str):
        reads["mmlu"] += split == "test" and folder == mmlu_dir
        return rows(folder, split, where=where)

    def counting_documents(spec, *, path: str = "calibration"):
        reads["next_sentence"] += str(text) in spec.files
        return documents(spec, path=path)

    monkeypatch.setattr(task_items, "_rows", counting_rows)
    monkeypatch.setattr(data, "read_documents", counting_documents)
    small = {"dataset": "reference-train", "num_samples": 2, "seq_length": 128, "batch_size": 2}
    tasks = [{"task": "mmlu", "path": str(mmlu_dir), "fraction": 0.25},
             {"task": "next_sentence", "dataset": None, "files": [str(text)], "num_items": 8}]
    result = api.run_post_training(recipe(tmp_path, mmlu_dir, calibration=small, evaluation=None, tasks=tasks,
                                          stages=[{"technique": "quantize", "format": "fp8"},
                                                  {"technique": "export"}]), progress=False)
    assert all(set(result.tasks[name]) == {"before", "after", "export"} for name in reads), result.tasks
    assert result.tasks["next_sentence"]["before"]["total"] == 8
    assert reads == {"mmlu": 2, "next_sentence": 2}, reads


def test_items_digest_follows_the_items_asked(mmlu_dir: Path) -> None:
    """The cache key's part read from the data: the same items give the same digest, other items another."""
    def digest(task) -> str:
        return items_digest(read_items([task])[0])

    mmlu = MMLU(path=str(mmlu_dir), few_shots=2, fraction=0.5)
    assert digest(mmlu) == digest(MMLU(path=str(mmlu_dir), few_shots=2, fraction=0.5))
    assert len({digest(mmlu), digest(MMLU(path=str(mmlu_dir), few_shots=2, fraction=0.25)),
                digest(MMLU(path=str(mmlu_dir), few_shots=0, fraction=0.5))}) == 3  # other questions; no dev split read
    sentences = NextSentence(num_items=8, seed=3)
    assert digest(sentences) == digest(NextSentence(num_items=8, seed=3))
    assert len({digest(sentences), digest(NextSentence(num_items=8, seed=4)),
                digest(NextSentence(num_items=9, seed=3))}) == 3
    # generate asks its spec's prompts: nothing is read, and the spec's own hash tells its tasks apart
    assert read_items([Generate(prompts=("a",))]) == [None]
    assert digest(Generate(prompts=("a",))) == digest(Generate(prompts=("b",)))
