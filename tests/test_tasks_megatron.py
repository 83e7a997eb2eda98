"""Evaluation tasks on the Megatron-Core backend: on the CPU through the TEST-ONLY shim (ModelOpt's
``megatron_prefill`` and ``megatron_generate`` over the reference model imported from its HF weights give
the same answers as the Hugging Face backend), and on a GPU (``pytest -m gpu tests/test_tasks_megatron.py``)
with ModelOpt's ``megatron_mmlu`` through the whole backend."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest

from _dist import init_gloo_world
from megatron_cpu_shim import megatron_on_cpu
from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.errors import CompatibilityError
from modelopt_typed_recipes.spec.evaluation import MMLU, Generate, NextSentence, metric_key
from modelopt_typed_recipes.spec.layout import ParallelLayout
from modelopt_typed_recipes.spec.recipe import Builtin, Recipe, TextData
from modelopt_typed_recipes.spec.techniques import Quantize

torch = pytest.importorskip("torch")
PROMPTS = ("The \"assert\" statement", "Assignment statements are used to")


@pytest.fixture(scope="module")
def reference_on_megatron():
    """(Megatron-Core model with the reference weights, the same model in transformers, tokenizer)."""
    from transformers import AutoModelForCausalLM

    from modelopt_typed_recipes.runtime import distributed
    from modelopt_typed_recipes.runtime.data import REFERENCE_DIR, load_tokenizer
    from modelopt_typed_recipes.runtime.megatron import build

    init_gloo_world()
    distributed.set_layout(ParallelLayout(), device="cpu")
    with megatron_on_cpu():
        mc = build.build_model(get_arch("reference-llama"), ParallelLayout(), dtype="fp32", device="cpu", spec="local")
        build.import_hf(mc, str(REFERENCE_DIR), dtype="fp32")
        hf = AutoModelForCausalLM.from_pretrained(str(REFERENCE_DIR), dtype=torch.float32).eval()
        yield mc, hf, load_tokenizer(REFERENCE_DIR)


def test_megatron_scores_and_generates_as_transformers_does(reference_on_megatron, tmp_path: Path) -> None:
    from modelopt_typed_recipes.runtime.hf.evaluate import HFTaskModel
    from modelopt_typed_recipes.runtime.megatron.tasks import MegatronTaskModel
    from modelopt_typed_recipes.runtime.tasks.items import read_items
    from modelopt_typed_recipes.runtime.tasks.run import evaluate_tasks

    mc, hf, tok = reference_on_megatron
    tasks = (NextSentence(num_items=32, seed=5), Generate(prompts=PROMPTS, max_new_tokens=8))
    items = read_items(tasks)
    ours = evaluate_tasks(tasks, items, MegatronTaskModel(mc, max_length=1024, workspace=tmp_path, progress=False),
                          tok)
    ref = evaluate_tasks(tasks, items, HFTaskModel(hf, device="cpu", progress=False), tok)
    assert ours["next_sentence"].correct == ref["next_sentence"].correct
    assert ours["next_sentence"].accuracy >= 0.6  # the reference model's signal survives the import
    assert ours["generate"].texts == ref["generate"].texts and all(ours["generate"].texts)


def fixture_questions(questions: int = 24) -> tuple[list, list]:
    """(dev, test) MMLU questions made of held-out next-sentence items: 10 dev, ``questions`` test."""
    from modelopt_typed_recipes.runtime.tasks.items import next_sentence_items, questions_from_items, task_documents

    task = NextSentence(num_items=questions + 10, seed=11)
    qs = questions_from_items(next_sentence_items(task, task_documents(task, path="t")),
                              subjects=("python_language", "python_library"))
    return qs[:10], qs[10:]


def mmlu_fixture(folder: Path, *, questions: int = 24) -> Path:
    """An MMLU-format folder (cais/mmlu layout) of held-out next-sentence items; 10 dev questions."""
    from modelopt_typed_recipes.runtime.tasks.items import write_mmlu_folder

    dev, test = fixture_questions(questions)
    return write_mmlu_folder(test, folder, dev=dev)


@pytest.fixture(scope="module")
def letter_model(reference_on_megatron, tmp_path_factory):
    """The reference model with the output rows of " A".." D" replaced by directions along which its last hidden
    state varies from question to question, in transformers and in Megatron-Core (the same weights): the plain
    model answers " A" to every fixture question, which any scorer that prefers " A" would match."""
    import copy

    from modelopt_typed_recipes.runtime.megatron import build
    from modelopt_typed_recipes.runtime.tasks.items import LETTERS, mmlu_prompt

    _, hf, tok = reference_on_megatron
    model = copy.deepcopy(hf)
    letters = [tok(f" {x}", add_special_tokens=False)["input_ids"][-1] for x in LETTERS]
    w = model.lm_head.weight
    with torch.no_grad():
        states = torch.stack([model(torch.tensor([tok(mmlu_prompt(q, ()))["input_ids"]]), output_hidden_states=True)
                              .hidden_states[-1][0, -1] for q in fixture_questions()[1][:12]])
        rows = torch.randn(len(letters), len(states), generator=torch.Generator().manual_seed(0)) @ (
            states - states.mean(0))
        rows -= rows.mean(0)
        w[letters] = rows / rows.norm(dim=1, keepdim=True) * w.norm(dim=1).mean() * 10
    folder = tmp_path_factory.mktemp("letters")
    model.save_pretrained(str(folder))
    mc = build.build_model(get_arch("reference-llama"), ParallelLayout(), dtype="fp32", device="cpu", spec="local")
    build.import_hf(mc, str(folder), dtype="fp32")
    return mc, model, tok


def test_modelopt_megatron_mmlu_answers_as_our_scorer(letter_model, tmp_path: Path, monkeypatch) -> None:
    """ModelOpt's own megatron_mmlu (reading the cais/mmlu folder with datasets, batching, scoring the answer
    letters; only its .cuda() kept on the CPU by the test shim) in Megatron-Core picks the letters our
    log-likelihood scorer picks on the same weights in transformers (0-shot, fp32): the same number right on the
    fixture's answers and on answers set all to A, to B, to C, to D (the same count of each letter picked)."""
    import attrs

    pytest.importorskip("datasets")
    from megatron_cpu_shim import megatron_mmlu_on_cpu
    from modelopt_typed_recipes.runtime.hf.evaluate import HFTaskModel
    from modelopt_typed_recipes.runtime.megatron.tasks import MegatronTaskModel
    from modelopt_typed_recipes.runtime.tasks.items import read_items, write_mmlu_folder
    from modelopt_typed_recipes.runtime.tasks.run import evaluate_tasks

    mc, hf, tok = letter_model
    mod = importlib.import_module("modelopt.torch.utils.plugins.megatron_mmlu")
    seen: list[int] = []  # the questions megatron_mmlu itself read back from the hand-over folder

    def spy(*args, **kwargs):
        ds = load_dataset(*args, **kwargs)
        seen.append(len(ds))
        return ds

    load_dataset = mod.load_dataset
    monkeypatch.setattr(mod, "load_dataset", spy)
    dev, test = fixture_questions()
    cases = [("fixture", test, 24), ("fixture, first 8", test, 8)]  # the same task name with other questions
    cases += [(f"all {x}", [attrs.evolve(q, answer=k) for q in test], 24) for k, x in enumerate("ABCD")]
    picked = []
    for label, questions, n in cases:
        folder = write_mmlu_folder(questions, tmp_path / label.replace(" ", "-").replace(",", ""), dev=dev)
        tasks = (MMLU(path=str(folder), fraction=n / 24, batch_size=5),)
        items = read_items(tasks)
        with megatron_mmlu_on_cpu():
            ours = evaluate_tasks(tasks, items, MegatronTaskModel(mc, max_length=1024, workspace=tmp_path / "w",
                                                                  progress=False), tok)["mmlu"]
        ref = evaluate_tasks(tasks, items, HFTaskModel(hf, device="cpu", progress=False), tok)["mmlu"]
        assert (ours.scorer, ref.scorer) == ("megatron_mmlu", "log-likelihood")
        assert seen[-1] == ours.total == ref.total == n and ours.correct == ref.correct, (label, seen, ours, ref)
        if label.startswith("all"):
            picked.append(ref.correct)
    assert sum(picked) == 24 and max(picked) <= 16, picked  # the letters vary: no constant answer passes this
    assert list((tmp_path / "w").iterdir()) == []  # the hand-over folders are gone


def test_megatron_mmlu_never_falls_back_quietly(reference_on_megatron, tmp_path: Path, monkeypatch) -> None:
    """Without datasets the plan refuses the mmlu task (before any model); if ModelOpt's megatron_mmlu still
    fails to import at run time, the task fails with a typed error instead of another scorer's figure."""
    import sys

    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.runtime.megatron.tasks import MegatronTaskModel
    from modelopt_typed_recipes.runtime.tasks.items import read_items
    from modelopt_typed_recipes.runtime.tasks.run import evaluate_tasks

    mc, _, tok = reference_on_megatron
    task = MMLU(path=str(tmp_path))
    recipe = Recipe(name="t", model="reference-llama", source=Builtin(), stages=(Quantize(format="fp8"),),
                    tasks=(task,), output_dir=str(tmp_path / "o"), backend="megatron", device="cuda")
    gpu = Environment(megatron_core="0.16.1", modelopt="0.47.0", cuda=True, gpu_count=1)
    fixture = mmlu_fixture(tmp_path / "mmlu", questions=4)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "datasets", None)  # find_spec answers None, import raises ImportError
        for backend in ("megatron", "hf"):
            errors = check_recipe(recipe, env=gpu, backend=backend).errors
            assert [(e.path, "datasets" in str(e)) for e in errors if isinstance(e, CompatibilityError)] == [
                ("tasks[0].task", True)], backend
    monkeypatch.setitem(sys.modules, "modelopt.torch.utils.plugins.megatron_mmlu", None)
    lm = MegatronTaskModel(mc, max_length=1024, workspace=tmp_path / "w", progress=False)
    # the error names the offending task's place in the recipe, as the plan's check does (here the second task)
    with pytest.raises(CompatibilityError, match="megatron_mmlu") as info:
        tasks = (Generate(prompts=("a",)), MMLU(path=str(fixture)))
        evaluate_tasks(tasks, read_items(tasks), lm, tok, only=[1])
    assert info.value.path == "tasks[1].task"
    # so does a sampled generate task that a direct caller hands over without the plan's check
    with pytest.raises(CompatibilityError, match="greedily") as info:
        tasks = (MMLU(path=str(fixture)), Generate(prompts=("a",), greedy=False))
        evaluate_tasks(tasks, read_items(tasks), lm, tok, only=[1])
    assert info.value.path == "tasks[1].greedy"


def test_megatron_backend_measures_tasks_before_and_after(reference_on_megatron, tmp_path: Path) -> None:
    import attrs

    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.runtime.megatron import backend

    gpu = Environment(megatron_core="0.16.1", modelopt="0.47.0", cuda=True, gpu_count=1)
    recipe = Recipe(name="t", model="reference-llama", source=Builtin(), stages=(Quantize(format="fp8"),),
                    calibration=TextData(dataset="reference-train", num_samples=4, seq_length=128, batch_size=4),
                    tasks=(NextSentence(num_items=16), Generate(prompts=PROMPTS[:1], max_new_tokens=4)),
                    output_dir=str(tmp_path / "o"), backend="megatron", device="cuda")
    plan = check_recipe(recipe, env=gpu, backend="megatron")
    plan.raise_first()
    plan = attrs.evolve(plan, device="cpu", dtype="fp32", output_dir=tmp_path / "out",
                        staging_dir=tmp_path / "staging", progress=False)
    res = backend.run(recipe, plan)
    for phase in ("before", "after"):
        assert 0 <= res.metrics[metric_key("next_sentence", phase)] <= 1
        assert len(res.tasks["generate"][phase]["texts"]) == 1
    assert res.metrics[metric_key("next_sentence", "before")] >= 0.5
    # sampling is refused with the rest of the plan, before any model
    sampled = attrs.evolve(recipe, tasks=(Generate(prompts=("a",), greedy=False),))
    errors = check_recipe(sampled, env=gpu, backend="megatron").errors
    assert [e.path for e in errors if isinstance(e, CompatibilityError)] == ["tasks[0].greedy"]
    assert check_recipe(sampled, env=gpu, backend="hf").ok


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_megatron_tasks_and_gate_on_gpu(tmp_path: Path) -> None:
    """next_sentence and a generation check through the whole Megatron-Core backend on a GPU, equal to the
    Hugging Face backend's within near-ties, then a gate that fails the run; with ``datasets`` installed also
    ModelOpt's megatron_mmlu on the MMLU-format fixture (0-shot: the same prompt as the HF backend's scorer)."""
    import importlib.util

    from modelopt_typed_recipes.errors import GateError
    from modelopt_typed_recipes.runtime import api
    from modelopt_typed_recipes.runtime.tasks.items import (
        next_sentence_items,
        questions_from_items,
        task_documents,
        write_mmlu_folder,
    )

    tasks: list[dict] = [{"task": "next_sentence", "num_items": 100},
                         {"task": "generate", "prompts": list(PROMPTS), "max_new_tokens": 16}]
    with_mmlu = importlib.util.find_spec("datasets") is not None  # ModelOpt's megatron_mmlu reads with it
    if with_mmlu:
        task = NextSentence(num_items=44, seed=11)
        qs = questions_from_items(next_sentence_items(task, task_documents(task, path="t")),
                                  subjects=("python_language", "python_library"))
        tasks.insert(0, {"task": "mmlu", "path": str(write_mmlu_folder(qs[10:], tmp_path / "mmlu", dev=qs[:10])),
                         "batch_size": 4})
    doc = {"model": "reference-llama", "source": {"type": "builtin"},
           "stages": [{"technique": "quantize", "format": "fp8"}],
           "calibration": {"dataset": "reference-train", "num_samples": 16, "seq_length": 256, "batch_size": 8},
           "evaluation": {"dataset": "reference-heldout", "num_samples": 16, "seq_length": 256, "batch_size": 8},
           "tasks": tasks, "output_dir": str(tmp_path / "mc"), "backend": "megatron", "device": "cuda"}
    res = api.run_post_training(doc, progress=False)
    hf = api.run_post_training({**doc, "backend": "hf", "output_dir": str(tmp_path / "hf")}, progress=False)
    for phase in ("before", "after"):
        names = ["next_sentence"]
        if with_mmlu:
            assert res.tasks["mmlu"][phase]["scorer"] == "megatron_mmlu" and res.tasks["mmlu"][phase]["total"] == 34
            names.append("mmlu")
        for name in names:
            a, b = res.metrics[metric_key(name, phase)], hf.metrics[metric_key(name, phase)]
            assert math.isfinite(a) and abs(a - b) <= 0.1, (name, phase, a, b)  # bf16 vs fp32 may flip near-ties
        assert len(res.tasks["generate"][phase]["texts"]) == 2 and all(res.tasks["generate"][phase]["texts"])
    assert res.metrics[metric_key("next_sentence", "before")] >= 0.6
    assert not list(tmp_path.rglob(".mmlu-*"))  # the hand-over folders are gone
    with pytest.raises(GateError):
        api.run_post_training({**doc, "output_dir": str(tmp_path / "gated"),
                               "gate": {"min_accuracy": {"next_sentence": 0.99}}}, progress=False)
    assert not (tmp_path / "gated").exists()
