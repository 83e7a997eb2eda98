"""`check` says what the run would only find out late (issues 11 and 17): one test per stage kind and per
source kind, each against the refusal the runtime raises after loading libraries or building the model."""

from __future__ import annotations

import json
import re

import attrs
import pytest

from modelopt_typed_recipes.bridges import modelopt_names as mn
from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.errors import SpecError
from modelopt_typed_recipes.plan.budget import format_compression, minimum_effective_bits
from modelopt_typed_recipes.plan.check import Environment, check_recipe
from modelopt_typed_recipes.spec.recipe import Builtin, MegatronCheckpoint, RandomInit, Recipe, TextData
from modelopt_typed_recipes.spec.serde import from_dict
from modelopt_typed_recipes.spec.techniques import AutoQuantize, Export, Prune, Quantize

CPU = Environment(megatron_core="0.16.1", modelopt="0.47.0")
GPU_TE = Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=1, transformer_engine=True)


def recipe(*stages, model="tiny-dense", backend="hf", **kw):
    kw.setdefault("source", RandomInit())
    return Recipe(model=model, stages=tuple(stages), output_dir="/tmp/x", backend=backend, device="cpu"
                  if backend == "hf" else "cuda", **kw)


def found(report):
    return {(type(e).__name__, e.path) for e in report.errors}


# --------------------------------------------------------------------------- auto_quantize: the budget floor
def test_auto_quantize_budget_below_the_floor_is_refused():
    ref = dict(model="reference-llama", source=Builtin())
    low = check_recipe(recipe(AutoQuantize(effective_bits=6.0, formats=("int4_awq", "fp8")), **ref), env=CPU)
    assert ("SpecError", "stages[0].effective_bits") in found(low)
    err = next(e for e in low.errors if e.path == "stages[0].effective_bits")
    assert "6.1818" in err.message and "6.19" in err.hint
    ok = check_recipe(recipe(AutoQuantize(effective_bits=6.2, formats=("int4_awq", "fp8")), **ref), env=CPU)
    assert ok.ok, ok.errors
    # ModelOpt's own recipe at 6.0 bits: the same floor, reported at the recipe
    rec = check_recipe(recipe(AutoQuantize(recipe="general/auto_quantize/w4a8_awq_beta_fp8_at_6p0bits"), **ref),
                       env=CPU)
    assert ("SpecError", "stages[0].recipe") in found(rec)


def test_the_floor_counts_exclusions_and_follows_the_backend():
    arch = get_arch("reference-llama")
    fmts = [mn.preset_config("INT4_AWQ_CFG")]
    never = mn.default_disabled_patterns()
    base = minimum_effective_bits(mn.hf_modules(arch), fmts, disabled=never)
    assert base == pytest.approx(6.1818, abs=1e-4)
    # q_proj excluded: q, k and v share one choice (ModelOpt's grouping rules), so all three stay at 16 bits
    more = minimum_effective_bits(mn.hf_modules(arch), fmts, disabled=[*never, "*layers.0.self_attn.q_proj"])
    per_layer_qkv = 256 * (256 + 128 + 128)
    total = 6 * 786_432 + 4096 * 256
    assert more == pytest.approx(base + per_layer_qkv * 12 / total, abs=1e-9)
    # Megatron-Core without a recipe leaves the never-quantized layers out of the budget: 4 bits is reachable
    assert minimum_effective_bits(mn.mcore_modules(arch), fmts, disabled=never, cost_excluded=never) == 4.0


def test_format_costs_match_modelopt():
    from modelopt.torch.quantization.algorithms import QuantRecipe

    for preset in mn.MODEL_PRESETS:
        mine = format_compression(mn.preset_config(preset))
        assert mine == pytest.approx(QuantRecipe(preset).compression), preset


def test_the_floor_is_the_one_modelopt_reports(tmp_path):
    """A real ``mtq.auto_quantize`` on the CPU (reference-llama): the infeasible budget it refuses after
    inserting quantizers is refused by `check` with the same figure."""
    import torch

    from modelopt_typed_recipes.runtime.hf import quantize
    from modelopt_typed_recipes.runtime.hf.model import load_model

    r = recipe(AutoQuantize(effective_bits=6.0, formats=("int4_awq", "fp8")), model="reference-llama",
               source=Builtin())
    report = check_recipe(r, env=CPU)
    floor = float(re.search(r"reach on reference-llama: ([0-9]+\.[0-9]+) bits", report.errors[0].message).group(1))
    model, _tok, _dir = load_model(r, get_arch("reference-llama"), report.weights_dir, device="cpu", dtype="fp32")
    batches = [torch.randint(0, 4000, (2, 16))]
    with pytest.raises(SpecError) as info:
        quantize.auto_quantize(model, r.stages[0], batches, path="stages[0]", device="cpu", batch_size=2,
                               progress=False)
    theirs = float(re.search(r"minimum achievable effective bits is ([0-9]+\.[0-9]+)", info.value.message).group(1))
    assert floor == pytest.approx(theirs, abs=1e-4)


# --------------------------------------------------------------------------- quantize and export
def test_quantize_awq_on_a_moe_model_refused_when_exported_from_hf():
    rep = check_recipe(recipe(Quantize(format="int4_awq"), Export(), model="tiny-moe"), env=CPU)
    assert ("CompatibilityError", "stages[0].format") in found(rep)
    assert check_recipe(recipe(Quantize(format="fp8"), Export(), model="tiny-moe"), env=CPU).ok
    assert check_recipe(recipe(Quantize(format="int4_awq"), model="tiny-moe"), env=CPU).ok  # no export: fine


def test_export_subdir_and_seed_mistakes_fail_at_load():
    doc = {"model": "tiny-dense", "source": {"type": "random"}, "output_dir": "/tmp/x", "backend": "hf",
           "stages": [{"technique": "quantize", "format": "fp8"}, {"technique": "export", "subdir": "manifest.json"}]}
    with pytest.raises(SpecError, match=r"stages\[1\]\.subdir"):
        from_dict(doc, Recipe)
    doc["stages"][1]["subdir"] = "hf"
    with pytest.raises(SpecError, match="seed"):
        from_dict({**doc, "seed": 2**64}, Recipe)


# --------------------------------------------------------------------------- prune
def test_prune_to_a_params_target_needs_evaluation_data():
    st = Prune(params=400_000)
    rep = check_recipe(recipe(st, backend="megatron"), env=GPU_TE)
    assert ("SpecError", "evaluation") in found(rep)
    with_eval = recipe(st, backend="megatron", evaluation=TextData(dataset="reference-heldout"))
    assert ("SpecError", "evaluation") not in found(check_recipe(with_eval, env=GPU_TE))


# --------------------------------------------------------------------------- sources, data, the model builder
def test_source_kinds_the_backend_cannot_load(tmp_path):
    ck = tmp_path / "ckpt"
    ck.mkdir()
    mc = MegatronCheckpoint(path=str(ck))
    assert ("CompatibilityError", "source.type") in found(check_recipe(recipe(Quantize(format="fp8"), source=mc),
                                                                       env=CPU))
    rep = check_recipe(recipe(Quantize(format="fp8"), source=mc, backend="megatron"), env=GPU_TE)
    assert ("SpecError", "source.path") in found(rep)  # no metadata.json
    (ck / "metadata.json").write_text(json.dumps({}))
    rep = check_recipe(recipe(Quantize(format="fp8"), source=mc, backend="megatron"), env=GPU_TE)
    assert ("SpecError", "source.path") not in found(rep)
    assert ("SpecError", "source") in found(check_recipe(recipe(Quantize(format="fp8"), source=Builtin()), env=CPU))
    small = attrs.evolve(get_arch("tiny-dense"), vocab=attrs.evolve(get_arch("tiny-dense").vocab, size=200,
                                                                      padded_size=None))
    assert ("SpecError", "model.vocab.size") in found(check_recipe(recipe(Quantize(format="fp8"), model=small),
                                                                   env=CPU))
    too_long = MegatronCheckpoint(path="/tmp/" + "x" * 300)  # found by the fuzzer: ENAMETOOLONG on the first stat
    assert ("SpecError", "source.path") in found(check_recipe(recipe(Quantize(format="fp8"), source=too_long,
                                                                     backend="megatron"), env=GPU_TE))
    tilde = MegatronCheckpoint(path="~no-such-user-here/ckpt")
    assert ("SpecError", "source.path") in found(check_recipe(recipe(Quantize(format="fp8"), source=tilde,
                                                                     backend="megatron"), env=GPU_TE))


def test_missing_calibration_files(tmp_path):
    data = TextData(files=(str(tmp_path / "nope.txt"),))
    assert ("DataError", "calibration.files[0]") in found(check_recipe(recipe(Quantize(format="fp8"),
                                                                               calibration=data), env=CPU))


def test_architectures_the_megatron_builder_refuses():
    arch = get_arch("tiny-dense")
    for changed, path in ((attrs.evolve(arch, activation=attrs.evolve(arch.activation, type="quick_geglu")),
                           "model.activation.type"),):
        rep = check_recipe(recipe(Quantize(format="fp8"), model=changed, backend="megatron"), env=GPU_TE)
        assert ("CompatibilityError", path) in found(rep)
    hybrid = next(a for a in _registry() if a.mamba is not None)
    rep = check_recipe(recipe(Quantize(format="fp8"), model=hybrid.name, backend="megatron"), env=GPU_TE)
    assert ("CompatibilityError", "model") in found(rep)


def _registry():
    from modelopt_typed_recipes.catalog import list_archs

    return list_archs()


def test_the_activation_gate_follows_the_megatron_builder():
    """Every activation type: `check` refuses it exactly when the Megatron-Core builder does."""
    import typing

    from modelopt_typed_recipes.errors import CompatibilityError
    from modelopt_typed_recipes.plan.run_gates import MEGATRON_ACTIVATIONS
    from modelopt_typed_recipes.runtime.megatron.build import transformer_config
    from modelopt_typed_recipes.spec.arch import Activation
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    arch = get_arch("tiny-dense")
    kinds = typing.get_args(typing.get_type_hints(Activation)["type"])
    assert "swiglu" in kinds and "quick_geglu" in kinds
    for act in kinds:
        changed = attrs.evolve(arch, activation=attrs.evolve(arch.activation, type=act))
        try:
            transformer_config(changed, ParallelLayout(), dtype="fp32", cpu_init=True)
            built = True
        except CompatibilityError:
            built = False
        assert built == (act in MEGATRON_ACTIVATIONS), act


def test_a_modelopt_recipe_name_too_long_for_the_file_system_is_unknown():
    """Found by benchmarks/fuzz.py: a 300-character recipe name raised ENAMETOOLONG from the file lookup."""
    rep = check_recipe(recipe(AutoQuantize(recipe="general" + "x" * 300)), env=CPU)
    assert ("UnknownNameError", "stages[0].recipe") in found(rep)
