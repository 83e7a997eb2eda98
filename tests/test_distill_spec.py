"""The distill stage as data and its checks before any model is built: YAML and Python agree, every bad
field is a typed error naming its path, and the plan refuses what the runtime could not do."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.errors import RecipeError, SpecError
from modelopt_typed_recipes.plan.check import check_recipe
from modelopt_typed_recipes.plan.environment import Environment
from modelopt_typed_recipes.plan.techniques import technique_for
from modelopt_typed_recipes.spec.recipe import Builtin, HFCheckpoint, Recipe
from modelopt_typed_recipes.spec.serde import from_dict, from_yaml, to_yaml
from modelopt_typed_recipes.spec.techniques import Distill, Export, Prune, Quantize
from modelopt_typed_recipes.spec.text import TrainingText

CPU = Environment(megatron_core="0.16.1", modelopt="0.47.0")


def recipe(*stages: Any, backend: str = "hf", **kw: Any) -> Recipe:
    return Recipe(model="reference-llama", source=Builtin(), stages=stages, output_dir="/tmp/distill-spec",
                  backend=backend, **kw)


def test_defaults_follow_megatron_lm() -> None:
    d = Distill(steps=20)
    assert d.teacher == "before_compression" and d.has_teacher
    assert d.logit_layers == ("output_layer", "output_layer")
    assert (d.skip_lm_loss, d.kd_loss_scale, d.logit_kl_temperature) == (True, 1.0, 1.0)
    assert (d.learning_rate, d.min_learning_rate, d.lr_schedule, d.clip_grad) == (5e-5, 1e-7, "cosine", 1.0)
    assert d.label == "distill-20steps"
    assert Distill(tokens="2M", teacher="none", skip_lm_loss=False).label == "finetune-2Mtokens"
    assert Distill(tokens="1M").total_steps(256) == -(-1_000_000 // 256)
    assert Distill(tokens=1000, micro_batch_size=2, gradient_accumulation_steps=2).total_steps(100, 2) == 2


def test_yaml_and_python_build_the_same_stage() -> None:
    text = """
model: reference-llama
source: builtin
output_dir: /tmp/x
stages:
  - {technique: quantize, format: fp8}
  - technique: distill
    teacher: {type: hf, path: /ckpt/teacher}
    intermediate_layer_pairs: [[model.layers.1, model.layers.1, mse]]
    data: {files: [a.txt]}
    steps: 30
    learning_rate: 1e-5
  - export
"""
    r = from_yaml(text, Recipe)
    py = Distill(teacher={"type": "hf", "path": "/ckpt/teacher"},
                 intermediate_layer_pairs=[["model.layers.1", "model.layers.1", "mse"]], data={"files": ["a.txt"]},
                 steps=30, learning_rate=1e-5)
    assert r.stages[1] == py
    assert isinstance(py.teacher, HFCheckpoint) and isinstance(py.data, TrainingText)
    assert from_yaml(to_yaml(r), Recipe) == r
    assert Distill(steps=1, teacher=None, skip_lm_loss=False).teacher == "none"
    assert Distill(steps=1, teacher="builtin").teacher == Builtin()


BAD: list[tuple[dict[str, Any], str]] = [
    ({}, "steps"),
    ({"steps": 3, "tokens": 10}, "steps"),
    ({"steps": 0}, "steps"),
    ({"steps": 3, "teacher": "nonee"}, "teacher"),
    ({"steps": 3, "teacher": {"type": "random"}}, "teacher.type"),
    ({"steps": 3, "teacher": "none"}, "skip_lm_loss"),
    ({"steps": 3, "teacher": "none", "skip_lm_loss": False, "intermediate_layer_pairs": [["a", "b"]]},
     "intermediate_layer_pairs"),
    ({"steps": 3, "logit_kl_temperature": 0}, "logit_kl_temperature"),
    ({"steps": 3, "logit_kl_temperature": -1.5}, "logit_kl_temperature"),
    ({"steps": 3, "kd_loss_scale": -1}, "kd_loss_scale"),
    ({"steps": 3, "kd_loss_scale": 0}, "kd_loss_scale"),
    ({"steps": 3, "intermediate_layer_pairs": [["a"]]}, "intermediate_layer_pairs[0]"),
    ({"steps": 3, "intermediate_layer_pairs": [["a", "b", "l1"]]}, "intermediate_layer_pairs[0][2]"),
    ({"steps": 3, "logit_layers": ["output_layer"]}, "logit_layers"),
    ({"tokens": "lots"}, "tokens"),
    ({"steps": 3, "learning_rate": 0}, "learning_rate"),
    ({"steps": 3, "min_learning_rate": 1.0}, "min_learning_rate"),
    ({"steps": 3, "warmup_steps": 3}, "warmup_steps"),
    ({"steps": 3, "warmup_steps": -1}, "warmup_steps"),
    ({"steps": 3, "lr_schedule": "wsd"}, "lr_schedule"),
    ({"steps": 3, "adam_beta2": 1.0}, "adam_beta2"),
    ({"steps": 3, "clip_grad": -1}, "clip_grad"),
    ({"steps": 3, "micro_batch_size": 0}, "micro_batch_size"),
    ({"steps": 3, "seq_length": -4}, "seq_length"),
    ({"steps": 3, "data": {"dataset": "nope"}}, "data.dataset"),
    ({"steps": 3, "data": {}}, "data.dataset"),
    ({"steps": 3, "bogus": 1}, "bogus"),
]


@pytest.mark.parametrize(("fields", "path"), BAD)
def test_bad_fields_name_their_path_from_yaml_and_python(fields: dict[str, Any], path: str) -> None:
    doc = {"model": "reference-llama", "source": "builtin", "output_dir": "/tmp/x",
           "stages": [{"technique": "quantize", "format": "fp8"}, {"technique": "distill", **fields}]}
    with pytest.raises(SpecError) as yaml_err:
        from_dict(doc, Recipe)
    assert yaml_err.value.path == f"stages[1].{path}", yaml_err.value
    if "bogus" in fields:
        return
    with pytest.raises(SpecError) as py_err:
        Distill(**fields)
    assert py_err.value.path == path, py_err.value


_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8),
                    st.lists(st.text(max_size=4), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                               max_size=2))


@given(field=st.sampled_from([a.name for a in attrs.fields(Distill) if a.name != "technique"]), value=_values)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_bad_values_are_typed_errors(field: str, value: Any) -> None:
    """Any value in any field: a valid stage or a RecipeError naming that field (never a bare exception)."""
    base: dict[str, Any] = {"technique": "distill", "steps": 5}
    if field == "tokens":
        base.pop("steps")
    doc = {"model": "reference-llama", "source": "builtin", "output_dir": "/tmp/x",
           "stages": [{"technique": "quantize", "format": "fp8"}, {**base, field: value}]}
    try:
        from_dict(doc, Recipe)
    except RecipeError as err:
        assert err.path.startswith("stages[1]"), err
    try:
        Distill(**{**{k: v for k, v in base.items() if k != "technique"}, field: value})
    except RecipeError as err:
        assert err.path.split(".")[0].split("[")[0] in {a.name for a in attrs.fields(Distill)}, err


# --------------------------------------------------------------------------- the plan's checks
def test_before_compression_needs_a_compression_stage_before() -> None:
    plan = check_recipe(recipe(Distill(steps=5), Export()), env=CPU)
    assert [e.path for e in plan.errors] == ["stages[0].teacher"]
    assert "teacher: none" in plan.errors[0].hint
    ok = check_recipe(recipe(Quantize(format="fp8"), Distill(steps=5), Export()), env=CPU)
    assert ok.ok, ok.errors
    finetune = check_recipe(recipe(Distill(steps=5, teacher="none", skip_lm_loss=False)), env=CPU)
    assert finetune.ok, finetune.errors


def test_distill_after_export_is_refused() -> None:
    with pytest.raises(SpecError) as err:
        recipe(Quantize(format="fp8"), Export(), Distill(steps=5))
    assert err.value.path == "stages[1]"


def test_a_teacher_of_another_vocabulary_or_family_is_refused(tmp_path: Any) -> None:
    import json

    from modelopt_typed_recipes.bridges.hf_config import to_hf_config
    from modelopt_typed_recipes.catalog import get_arch

    arch = get_arch("reference-llama")
    for name, change in (("same", {}), ("vocab", {"vocab_size": arch.vocab.size + 64})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**to_hf_config(arch), **change}))
    ok = check_recipe(recipe(Quantize(format="fp8"), Distill(steps=5, teacher=HFCheckpoint(path=str(tmp_path / "same")))),
                      env=CPU)
    assert ok.ok, ok.errors
    bad = check_recipe(recipe(Quantize(format="fp8"), Distill(steps=5, teacher=HFCheckpoint(path=str(tmp_path / "vocab")))),
                       env=CPU)
    assert [(type(e).__name__, e.path) for e in bad.errors] == [("CompatibilityError", "stages[1].teacher")]
    missing = check_recipe(recipe(Quantize(format="fp8"), Distill(steps=5, teacher=HFCheckpoint(path=str(tmp_path / "no")))),
                           env=CPU)
    assert [e.path for e in missing.errors] == ["stages[1].teacher.path"]



def test_a_megatron_teacher_is_checked_with_the_architecture_its_checkpoint_records(tmp_path: Any) -> None:
    """A Megatron checkpoint this package saved records its architecture (``model_arch.yaml``), which the run builds
    the teacher with before its ``hf_reference``: the check reads the same record, so a teacher of another
    vocabulary is refused before any model is built (it would fail at the first logits comparison), and a pruned
    teacher's unpruned reference does not stand in for it."""
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.plan.sources import builtin_weights
    from modelopt_typed_recipes.spec.recipe import MegatronCheckpoint

    arch = get_arch("reference-llama")
    gpu = Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=1)

    def teacher(name: str, recorded: Any, hf_reference: Any = None) -> MegatronCheckpoint:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metadata.json").write_text("{}")
        (folder / "model_arch.yaml").write_text(to_yaml(recorded))
        return MegatronCheckpoint(path=str(folder), hf_reference=None if hf_reference is None else str(hf_reference))

    def checked(src: MegatronCheckpoint) -> Any:
        return check_recipe(recipe(Quantize(format="fp8"), Distill(steps=5, teacher=src), backend="megatron"), env=gpu)

    other_vocab = attrs.evolve(arch, vocab=attrs.evolve(arch.vocab, size=arch.vocab.size + 64, padded_size=None))
    bad = checked(teacher("vocab", other_vocab))
    assert [(type(e).__name__, e.path) for e in bad.errors] == [("CompatibilityError", "stages[1].teacher")]
    assert "vocabulary" in bad.errors[0].message
    same = checked(teacher("same", arch))
    assert same.ok, same.errors
    assert not any("read at run time" in w for w in same.warnings)
    # a pruned teacher with its unpruned model's folder as hf_reference: the plan's teacher is the pruned one
    pruned = Prune(num_layers=4).pruned(arch)
    deep = checked(teacher("pruned", pruned, builtin_weights(arch)))
    whole = checked(teacher("whole", arch, builtin_weights(arch)))
    assert deep.ok and whole.ok, (deep.errors, whole.errors)
    teacher_bytes = [c.stages[1].memory["terms"]["teacher"] for c in (deep, whole)]
    assert teacher_bytes[0] < teacher_bytes[1]  # 4 layers of 6

def test_layer_names_fit_the_backend_and_the_pruned_arch() -> None:
    pairs = [["decoder.layers.1", "decoder.layers.1"]]
    hf = check_recipe(recipe(Quantize(format="fp8"), Distill(steps=5, intermediate_layer_pairs=pairs)), env=CPU)
    assert [e.path for e in hf.errors] == ["stages[1].intermediate_layer_pairs[0][0]",
                                           "stages[1].intermediate_layer_pairs[0][1]"]
    assert "model.layers.1" in hf.errors[0].hint
    deep = check_recipe(recipe(Quantize(format="fp8"), Distill(steps=5, intermediate_layer_pairs=[
        ["model.layers.5", "model.layers.6"]])), env=CPU)
    assert [e.path for e in deep.errors] == ["stages[1].intermediate_layer_pairs[0][1]"]  # 6 layers: 0..5
    logits = check_recipe(recipe(Quantize(format="fp8"), Distill(steps=5, logit_layers=["a", "b"])), env=CPU)
    assert [e.path for e in logits.errors] == ["stages[1].logit_layers"]
    gpu = Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=1, transformer_engine=True)
    pruned = check_recipe(recipe(Prune(num_layers=4), Distill(steps=5, intermediate_layer_pairs=[
        ["decoder.layers.4", "decoder.layers.5"]]), Quantize(format="fp8"), backend="megatron"), env=gpu)
    assert [e.path for e in pruned.errors if "intermediate" in e.path] == ["stages[1].intermediate_layer_pairs[0][0]"]


def test_megatron_layout_rules_for_distill() -> None:
    from modelopt_typed_recipes.errors import LayoutError
    from modelopt_typed_recipes.plan import rules
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    found = rules.stage_problems(ParallelLayout(pipeline_parallel=2), "distill")
    assert [(type(e), e.path) for e in found] == [(LayoutError, "pipeline_parallel")]
    assert rules.stage_problems(ParallelLayout(tensor_parallel=2, data_parallel=2), "distill") == []


def test_registered_with_both_executors() -> None:
    tech = technique_for(Distill(steps=1))
    assert tech.name == "distill" and not tech.calibrates
    assert set(tech.executors) == {"hf", "megatron"}


def test_megatron_memory_figure_says_which_gpu_it_assumes() -> None:
    """No GPU known here: the figure is for an H100 and says so (summary and a note naming the stage), and that
    the distillation formula is not yet measured; a GPU found here is used and nothing is assumed."""
    stages = (Quantize(format="fp8"), Distill(steps=5))
    seen = {}
    for name in (None, "NVIDIA L40S", "h200-141gb"):
        env = Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=1,
                          transformer_engine=True, gpu_name=name)
        report = check_recipe(recipe(*stages, backend="megatron"), env=env)
        assert report.errors == (), report.errors
        memory = report.stages[1].memory
        notes = [w for w in report.warnings if w.startswith("stages[1]: the distillation memory figure")]
        seen[name] = (memory["gpu"], memory["gpu_assumed"], memory["measured_formula"], len(notes))
        if notes:
            assert "assumes h100-80gb GPUs" in notes[0] and "not yet compared with a measured peak" in notes[0]
            assert (name or "no GPU") in notes[0]
    assert seen == {None: ("h100-80gb", True, False, 1), "NVIDIA L40S": ("h100-80gb", True, False, 1),
                    "h200-141gb": ("h200-141gb", False, False, 0)}
    assert report.to_dict()["stages"][1]["memory"]["gpu_assumed"] is False


@pytest.mark.parametrize(("techniques", "expected"), [
    (("quantize", "distill", "export"), True),  # QAT / QAD: the export snaps the trained weights
    (("auto_quantize", "prune", "distill", "distill", "export"), True),
    (("quantize", "export"), False),  # PTQ: ModelOpt's export of the calibrated weights, untouched
    (("distill", "quantize", "export"), False),  # trained before the ranges were calibrated
    (("quantize", "distill", "quantize", "export"), False),  # calibrated again after training
    (("prune", "distill", "export"), False),  # nothing quantized
])
def test_an_export_snaps_only_weights_trained_after_quantization(techniques: tuple[str, ...], expected: bool) -> None:
    from types import SimpleNamespace

    from modelopt_typed_recipes.plan.techniques.distill import trained_while_quantized

    stages = tuple(SimpleNamespace(technique=t) for t in techniques)
    assert trained_while_quantized(stages, len(stages) - 1) is expected
    assert trained_while_quantized(stages, 0) is False


def test_the_plan_says_which_export_snaps() -> None:
    """The decision is the plan's (``StagePlan.snap_to_grid``, in ``plan --json``); both backends' exports read it."""
    qad = check_recipe(recipe(Quantize(format="fp8"), Distill(steps=5), Export()), env=CPU)
    assert [s.snap_to_grid for s in qad.stages] == [False, False, True]
    assert qad.to_dict()["stages"][2]["snap_to_grid"] is True
    ptq = check_recipe(recipe(Quantize(format="fp8"), Export()), env=CPU)
    assert not any(s.snap_to_grid for s in ptq.stages)
    fakequant = check_recipe(recipe(Quantize(format="fp8"), Distill(steps=5), Export(format="vllm_fakequant")),
                             env=CPU)
    assert not fakequant.stages[2].snap_to_grid


def test_an_export_after_training_a_quantized_megatron_checkpoint_snaps(tmp_path) -> None:
    """A Megatron checkpoint saved with ModelOpt's state (a quantize stage's save, Megatron-LM's quantize script)
    comes back quantized: a recipe that trains it (QAD from the quantized checkpoint, as Megatron-LM's flow runs
    it) and exports trained weights past their calibrated ranges, so its export snaps them as after a quantize
    stage. A checkpoint without ModelOpt's state, or an export not after training, does not snap."""
    from modelopt_typed_recipes.spec.recipe import MegatronCheckpoint

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "metadata.json").write_text("{}")

    def snaps(*stages: Any) -> list[bool]:
        r = Recipe(model="reference-llama", source=MegatronCheckpoint(path=str(ckpt)), stages=stages,
                   output_dir=str(tmp_path / "out"), backend="megatron")
        return [s.snap_to_grid for s in check_recipe(r, env=CPU, backend="megatron").stages]

    assert snaps(Distill(steps=5, teacher="none", skip_lm_loss=False), Export()) == [False, False]  # plain weights: nothing quantized
    (ckpt / "modelopt_state").mkdir()
    assert snaps(Distill(steps=5, teacher="none", skip_lm_loss=False), Export()) == [False, True]
    assert snaps(Export()) == [False]  # PTQ export of the checkpoint as it was calibrated


def test_an_export_of_a_checkpoint_this_package_trained_while_quantized_snaps(tmp_path) -> None:
    """A checkpoint saved after QAT/QAD (a distill stage's ``save: true``) says so in its info file: a later recipe
    that only exports it snaps the trained weights, as the export in the training run would have; one saved after
    PTQ (or saying nothing) is exported as it was calibrated."""
    import json

    from modelopt_typed_recipes.spec.recipe import MegatronCheckpoint

    def snaps(info: dict[str, Any], *stages: Any) -> list[bool]:
        ckpt = tmp_path / json.dumps(info, sort_keys=True).replace('"', "").replace(" ", "")
        ckpt.mkdir()
        (ckpt / "metadata.json").write_text("{}")
        (ckpt / "modelopt_state").mkdir()
        (ckpt / MegatronCheckpoint.INFO_FILE).write_text(json.dumps(info))
        r = Recipe(model="reference-llama", source=MegatronCheckpoint(path=str(ckpt)), stages=stages,
                   output_dir=str(tmp_path / "out"), backend="megatron")
        return [s.snap_to_grid for s in check_recipe(r, env=CPU, backend="megatron").stages]

    assert snaps({"layer_spec": "local", "trained_while_quantized": True}, Export()) == [True]
    assert snaps({"layer_spec": "local", "trained_while_quantized": False}, Export()) == [False]
    assert snaps({"layer_spec": "local"}, Export()) == [False]
    # quantized again before the export: its ranges are calibrated to the trained weights
    assert snaps({"layer_spec": "modelopt", "trained_while_quantized": True}, Quantize(format="fp8"), Export()) == [
        False, False]
