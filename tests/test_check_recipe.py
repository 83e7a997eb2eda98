"""check_recipe and the `check` CLI: typed errors with paths, gates, coverage, speed, no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from modelopt_typed_recipes.plan.check import Environment, check_recipe
from modelopt_typed_recipes.spec.recipe import HFCheckpoint, RandomInit, Recipe
from modelopt_typed_recipes.spec.techniques import AutoQuantize, Export, Prune, Quantize

GPU_OLD = Environment(megatron_core="0.16.1", modelopt="0.47.0", cuda=True, gpu_count=1)
GPU_NEW = attrs.evolve(GPU_OLD, megatron_core="0.19.2")
GPU_TE = attrs.evolve(GPU_NEW, transformer_engine=True)
CPU = Environment(megatron_core="0.16.1", modelopt="0.47.0")


def recipe(*stages, model="tiny-dense", backend="megatron", **kw):
    return Recipe(model=model, source=RandomInit(), stages=tuple(stages), output_dir="/tmp/x", backend=backend, **kw)


def paths(report):
    return [(type(e).__name__, e.path) for e in report.errors]


def test_good_recipe_is_ok_with_coverage():
    rep = check_recipe(recipe(Quantize(format="fp8"), Export()), env=GPU_NEW)
    assert rep.ok, rep.errors
    cov = rep.stages[0].coverage
    assert cov.modules["attention_qkv"] == {"quantized": 2, "total": 2}
    assert cov.modules["output_layer"] == {"quantized": 0, "total": 1}
    assert cov.quantizers == {"weight": 8, "input": 8}
    assert rep.stages[1].layout.tensor_parallel == 1


def test_every_problem_reported_with_paths():
    st = Quantize(format="nvfp4", exclude=("*layers.9.*", "*self_attn*"), kv_cache="fp8")
    rep = check_recipe(recipe(st, Export()), env=CPU)
    got = paths(rep)
    assert ("CompatibilityError", "backend") in got  # no CUDA
    assert ("CompatibilityError", "stages[0].format") in got  # NVFP4 needs CUDA
    assert ("CompatibilityError", "stages[0].kv_cache") in got  # KV needs TE attention
    assert ("SpecError", "stages[0].exclude[0]") in got
    assert ("SpecError", "stages[0].exclude[1]") in got
    assert ("CompatibilityError", "stages[1]") in got  # export needs core >= 0.18
    hints = {e.path: e.hint for e in rep.errors}
    assert "0..1" in hints["stages[0].exclude[0]"]
    assert "self_attention" in hints["stages[0].exclude[1]"]


def test_export_of_awq_and_smoothquant_refused():
    for fmt in ("int4_awq", "int8_sq", "w4a8_awq", "mxfp8"):
        rep = check_recipe(recipe(Quantize(format=fmt), Export()), env=GPU_NEW)
        assert ("CompatibilityError", "stages[0].format") in paths(rep), fmt
        assert check_recipe(recipe(Quantize(format=fmt)), env=GPU_NEW).ok


def test_prune_gates():
    rep = check_recipe(recipe(Prune(num_layers=1)), env=GPU_OLD)
    msgs = " ".join(e.message for e in rep.errors)
    assert "megatron-core >= 0.18" in msgs and "Transformer Engine" in msgs
    assert check_recipe(recipe(Prune(num_layers=1)), env=GPU_TE).ok
    rep = check_recipe(recipe(Prune(num_layers=1), backend="hf"), env=GPU_TE)
    assert ("CompatibilityError", "stages[0]") in paths(rep)


def test_moe_prune_from_hf_is_refused_before_the_gpu(tmp_path):
    from modelopt_typed_recipes.spec.recipe import HFCheckpoint

    (tmp_path / "config.json").write_text("{}")
    moe = Recipe(model="tiny-moe", source=HFCheckpoint(path=str(tmp_path)), stages=(Prune(num_moe_experts=4),),
                 output_dir="/tmp/x", backend="megatron")
    rep = check_recipe(moe, env=GPU_TE)
    assert any("mixture-of-experts" in e.message and e.path == "stages[0]" for e in rep.errors), rep.errors
    assert check_recipe(recipe(Prune(num_moe_experts=4), model="tiny-moe"), env=GPU_TE).ok  # random init: no import
    dense = Recipe(model="tiny-dense", source=HFCheckpoint(path=str(tmp_path)), stages=(Prune(num_layers=1),),
                   output_dir="/tmp/x", backend="megatron")
    assert not any("mixture" in e.message for e in check_recipe(dense, env=GPU_TE).errors)


@pytest.mark.parametrize(
    ("saved", "stage", "env", "message"),
    [
        ("te", Quantize(format="fp8"), GPU_NEW, "needs Transformer Engine"),
        ("modelopt", Prune(num_layers=1), GPU_TE, "Minitron prunes the Transformer Engine layer spec"),
        ("local", Prune(num_layers=1), GPU_TE, "saved with the 'local' spec"),
    ],
)
def test_megatron_checkpoint_is_rebuilt_with_its_saved_spec(tmp_path, saved, stage, env, message):
    import json

    from modelopt_typed_recipes.spec.recipe import MegatronCheckpoint

    (tmp_path / MegatronCheckpoint.INFO_FILE).write_text(json.dumps({"layer_spec": saved}))
    (tmp_path / "metadata.json").write_text("{}")  # a Megatron distributed checkpoint has one
    rec = Recipe(model="tiny-dense", source=MegatronCheckpoint(path=str(tmp_path)), stages=(stage,),
                 output_dir="/tmp/x", backend="megatron")
    assert any(message in e.message for e in check_recipe(rec, env=env).errors)
    ok = Recipe(model="tiny-dense", source=MegatronCheckpoint(path=str(tmp_path)), stages=(Quantize(format="fp8"),),
                output_dir="/tmp/x", backend="megatron")
    assert check_recipe(ok, env=GPU_TE).ok  # with TE every saved spec can be rebuilt


def test_a_megatron_checkpoints_hf_reference_of_another_model_is_refused(tmp_path):
    """The export writes ``hf_reference``'s config.json beside the weights of ``model``: a folder of another model
    is refused at ``model`` before the GPU work, naming the field and the registry model the folder holds."""
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.plan.sources import builtin_weights
    from modelopt_typed_recipes.spec.recipe import MegatronCheckpoint

    (tmp_path / "metadata.json").write_text("{}")
    reference = builtin_weights(get_arch("reference-llama"))
    assert reference is not None

    def errors(model, hf_reference):
        src = MegatronCheckpoint(path=str(tmp_path), hf_reference=hf_reference)
        rec = Recipe(model=model, source=src, stages=(Quantize(format="fp8"), Export()), output_dir="/tmp/x",
                     backend="megatron")
        return [e for e in check_recipe(rec, env=GPU_TE).errors if e.path in ("model", "source.hf_reference")]

    [err] = errors("qwen3-8b", str(reference))
    assert (err.path, type(err).__name__) == ("model", "CompatibilityError")
    assert "not the model in source.hf_reference" in err.message and "layers 36 against 6" in err.message
    assert err.hint == "model: reference-llama (the registry's architecture of this checkpoint)"
    assert errors("reference-llama", str(reference)) == []
    assert errors("qwen3-8b", "Qwen/Qwen3-8B") == []  # a Hub id: the export reads it on the GPU machine


def test_a_pruned_megatron_checkpoint_with_its_unpruned_hf_reference_is_accepted(tmp_path):
    """A checkpoint this package saved after pruning records the pruned architecture (``model_arch.yaml``); its
    ``hf_reference`` is the unpruned model's folder, whose tokenizer the run reads and whose config the export starts
    from (ModelOpt's exporter writes the model's layers, hidden, FFN and head sizes over it). ``model`` is checked
    against the recorded architecture, what the shards hold; the reference only on what neither rewrites."""
    from modelopt_typed_recipes.bridges.hf_config import to_hf_config
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.plan.sources import builtin_weights
    from modelopt_typed_recipes.spec.recipe import MegatronCheckpoint
    from modelopt_typed_recipes.spec.serde import to_yaml

    def checkpoint(name, arch):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metadata.json").write_text("{}")
        (folder / "model_arch.yaml").write_text(to_yaml(arch))
        return folder

    def errors(model, folder, hf_reference, *stages):
        src = MegatronCheckpoint(path=str(folder), hf_reference=str(hf_reference))
        rec = Recipe(model=model, source=src, stages=stages, output_dir="/tmp/x", backend="megatron")
        return [(e.path, e.message) for e in check_recipe(rec, env=GPU_TE).errors
                if e.path in ("model", "source.hf_reference")]

    reference = builtin_weights(get_arch("reference-llama"))
    pruned = Prune(num_layers=4).pruned(get_arch("reference-llama"))
    shallow = checkpoint("shallow", pruned)
    assert errors(pruned, shallow, reference, Quantize(format="fp8"), Export()) == []
    assert errors(pruned, shallow, reference, Quantize(format="fp8")) == []
    # a model other than the one the shards hold fails their load after the build: refused at model
    [(path, message)] = errors("reference-llama", shallow, reference, Quantize(format="fp8"))
    assert path == "model" and "model_arch.yaml" in message and "layers 6 against 4" in message

    # MoE: the export keeps the reference's expert sizes, so only a recipe without export may use that reference
    moe = get_arch("tiny-moe")
    moe_reference = tmp_path / "moe-reference"
    moe_reference.mkdir()
    (moe_reference / "config.json").write_text(json.dumps(to_hf_config(moe)))
    fewer = Prune(num_moe_experts=4).pruned(moe)
    fewer_experts = checkpoint("fewer-experts", fewer)
    assert errors(fewer, fewer_experts, moe_reference, Quantize(format="fp8")) == []
    [(path, message)] = errors(fewer, fewer_experts, moe_reference, Quantize(format="fp8"), Export())
    assert path == "source.hf_reference" and "experts 4 against 8" in message
    # a reference of another vocabulary tokenizes for another embedding: refused with or without export
    [(path, message)] = errors(fewer, fewer_experts, reference, Quantize(format="fp8"))
    assert path == "source.hf_reference" and "vocabulary" in message
    # a reference of another model type (same vocabulary) would give the export another model's config
    qwen = tmp_path / "qwen-reference"
    qwen.mkdir()
    other = attrs.evolve(get_arch("qwen3-0.6b"), vocab=get_arch("reference-llama").vocab)
    (qwen / "config.json").write_text(json.dumps(to_hf_config(other)))
    [(path, message)] = errors(pruned, shallow, qwen, Quantize(format="fp8"), Export())
    assert path == "source.hf_reference" and "model type 'llama' against 'qwen3'" in message

    # pruned by another tool (Megatron-LM's prune.py): no record, so a model no larger than the reference in every
    # size pruning cuts is checked as a recorded one is; a larger one cannot have come from it
    unrecorded = tmp_path / "unrecorded"
    unrecorded.mkdir()
    (unrecorded / "metadata.json").write_text("{}")
    assert errors(pruned, unrecorded, reference, Quantize(format="fp8"), Export()) == []
    [(path, message)] = errors(fewer, unrecorded, moe_reference, Quantize(format="fp8"), Export())
    assert path == "source.hf_reference" and "experts 4 against 8" in message
    [(path, message)] = errors(attrs.evolve(pruned, name="deeper", num_layers=8), unrecorded, reference,
                               Quantize(format="fp8"))
    assert path == "model" and "layers 8 against 6" in message


def test_kv_cache_ok_with_te_and_counts_kv_quantizers():
    rep = check_recipe(recipe(Quantize(format="fp8", kv_cache="fp8")), env=GPU_TE)
    assert rep.ok, rep.errors
    assert rep.stages[0].coverage.quantizers["kv"] == 4  # k and v on 2 layers
    assert rep.stages[0].coverage.modules["kv_cache"]["quantized"] == 2


def test_experts_only_on_dense_model_quantizes_nothing():
    rep = check_recipe(recipe(Quantize(format="NVFP4_EXPERTS_ONLY_CFG")), env=GPU_NEW)
    assert ("SpecError", "stages[0].format") in paths(rep)
    assert check_recipe(recipe(Quantize(format="NVFP4_EXPERTS_ONLY_CFG"), model="tiny-moe"), env=GPU_NEW).ok


def test_unknown_preset_and_kv_only_preset():
    rep = check_recipe(recipe(Quantize(format="FP8_DEFAUL_CFG")), env=GPU_NEW)
    assert paths(rep) == [("UnknownNameError", "stages[0].format")]
    assert "FP8_DEFAULT_CFG" in rep.errors[0].hint
    rep = check_recipe(recipe(Quantize(format="FP8_KV_CFG")), env=GPU_NEW)
    assert "kv_cache" in rep.errors[0].hint


def test_recipes_checked_by_type_and_user_file_patterns(tmp_path):
    rep = check_recipe(recipe(Quantize(recipe="general/auto_quantize/nvfp4_fp8_at_5p4bits")), env=GPU_NEW)
    assert paths(rep) == [("SpecError", "stages[0].recipe")]
    rep = check_recipe(recipe(Quantize(recipe="general/ptq/nvfp4_mlp_weight_only")), env=GPU_NEW)
    assert rep.ok, rep.errors
    f = tmp_path / "mine.yaml"
    f.write_text("metadata: {recipe_type: ptq}\nquantize:\n  algorithm: max\n  quant_cfg:\n"
                 "    - {quantizer_name: '*', enable: false}\n"
                 "    - {quantizer_name: '*q_proj*weight_quantizer', cfg: {num_bits: [4, 3], axis: null}}\n")
    rep = check_recipe(recipe(Quantize(recipe=str(f))), env=GPU_NEW)
    got = paths(rep)
    assert got.count(("SpecError", "stages[0].recipe")) == 2  # the unmatched pattern, and nothing quantized
    rep = check_recipe(recipe(Quantize(recipe="general/ptq/no_such_recipe")), env=GPU_NEW)
    assert paths(rep) == [("UnknownNameError", "stages[0].recipe")]


def test_layouts_checked_and_export_replanned():
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    rep = check_recipe(recipe(Quantize(format="fp8"), Export()), env=GPU_NEW, layout=ParallelLayout(tensor_parallel=2))
    assert rep.ok, rep.errors
    assert rep.stages[0].layout.tensor_parallel == 2
    assert rep.stages[1].layout.tensor_parallel == 1 and rep.stages[1].layout.pipeline_parallel == 2
    rep = check_recipe(recipe(Quantize(format="fp8")), env=GPU_NEW, layout=ParallelLayout(tensor_parallel=8))
    assert any(e.path.startswith("layout") for e in rep.errors)
    rep = check_recipe(recipe(AutoQuantize(effective_bits=6.0, formats=("int4_awq", "fp8"))), env=GPU_NEW,
                       layout=ParallelLayout(pipeline_parallel=2))
    assert rep.ok and rep.stages[0].layout.pipeline_parallel == 1  # re-planned for auto-quantize


def test_missing_checkpoint_directory():
    r = Recipe(model="tiny-dense", source=HFCheckpoint(path="/nonexistent/dir"), stages=(Quantize(format="fp8"),),
               output_dir="/tmp/x", backend="megatron")
    assert ("SpecError", "source.path") in paths(check_recipe(r, env=GPU_NEW))


def test_hf_backend_uses_hf_names():
    r = recipe(Quantize(format="fp8", exclude=("*q_proj*",)), backend="hf")
    rep = check_recipe(r, env=CPU)
    assert rep.ok, rep.errors
    assert rep.stages[0].coverage.naming == "hf"
    assert rep.stages[0].coverage.modules["attention_qkv"] == {"quantized": 4, "total": 6}


def _cli(*args, cwd=None, env_extra=None):
    import os

    env = {**os.environ, **env_extra} if env_extra else None
    return subprocess.run([sys.executable, "-m", "modelopt_typed_recipes", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60, env=env)


def test_cli_check_json_fast_and_without_torch(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model: tiny-dense\nsource: {type: random}\nstages:\n"
                 "  - {technique: quantize, format: fp8, exclude: ['*layers.7.*']}\noutput_dir: /tmp/o\nbackend: megatron\n")
    t = time.perf_counter()
    p = _cli("check", str(f), "--json", "--assume-gpu")
    assert time.perf_counter() - t < 15  # wall clock, interpreter start included (slack for a loaded machine)
    assert p.returncode == 2
    out = json.loads(p.stdout)
    assert out["ok"] is False
    assert {"path": "stages[0].exclude[0]"}.items() <= out["errors"][0].items()
    assert out["coverage"]["stages[0]"]["modules"]["mlp_fc1"]["quantized"] == 2
    # CPU seconds of the check itself (process time: a loaded machine slows the wall clock, not this)
    code = ("import sys, time; t=time.process_time(); from modelopt_typed_recipes.cli import main; "
            f"rc=main(['check', {str(f)!r}, '--json']); "
            "assert not any(m.split('.')[0] in ('torch','megatron','modelopt','transformers') for m in sys.modules), "
            "[m for m in sys.modules if m.startswith(('torch','megatron','modelopt'))][:5]; "
            "print(time.process_time()-t, file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert float(p.stderr.strip().splitlines()[-1]) < 1.0


def test_cli_check_named_recipe_text():
    p = _cli("check", "qwen3-8b:fp8", "--assume-gpu", "--backend", "megatron")
    assert "attention_qkv" in p.stdout and "36" in p.stdout



def test_hf_backend_refuses_a_multi_rank_launch(monkeypatch, tmp_path):
    """torchrun with the HF backend would run the whole recipe on every rank into one staging folder: ``check``
    and ``run_post_training`` refuse it (YAML and Python alike) before any work, naming the field and the fix."""
    from modelopt_typed_recipes.errors import CompatibilityError
    from modelopt_typed_recipes.runtime.api import run_post_training

    recipe = Recipe.load(Path(__file__).parent.parent / "examples" / "reference-fp8.yaml")
    recipe = attrs.evolve(recipe, output_dir=str(tmp_path / "out"))
    env = Environment.detect()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    plan = check_recipe(recipe, env=env, backend="hf")
    assert [e.path for e in plan.errors] == ["backend"]
    assert "2 processes" in str(plan.errors[0]) and "torchrun" in plan.errors[0].hint
    assert "backend: megatron" in plan.errors[0].hint
    from modelopt_typed_recipes.spec.serde import to_dict

    for given in (recipe, to_dict(recipe)):
        with pytest.raises(CompatibilityError, match="2 processes") as caught:
            run_post_training(given, progress=False)
        assert caught.value.path == "backend"
    assert list(tmp_path.iterdir()) == []
    p = _cli("check", str(Path(__file__).parent.parent / "examples" / "reference-fp8.yaml"), "--json",
             env_extra={"WORLD_SIZE": "2", "RANK": "0"})
    assert p.returncode == 2 and json.loads(p.stdout)["errors"][0]["path"] == "backend"
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert check_recipe(recipe, env=env, backend="hf").errors == ()
