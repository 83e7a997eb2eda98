"""The Megatron-Core runtime on the CPU: real Megatron-Core models and real ModelOpt calls.

Megatron-Core 0.16.1's forward needs CUDA; the TEST-ONLY shim in ``megatron_cpu_shim.py`` patches the
few CUDA calls (modelopt-api.md §8) for the duration of each test. Export and pruning are gated on this
machine's megatron-core (< 0.18); their call paths are tested up to the ModelOpt call.
"""

from __future__ import annotations

import importlib
import json
import math
import types
from pathlib import Path

import attrs
import pytest

from _dist import init_gloo_world
from _stage_events import record_stages_and_releases
from megatron_cpu_shim import megatron_on_cpu
from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.errors import CompatibilityError, SpecError
from modelopt_typed_recipes.plan.sources import saved_layer_spec
from modelopt_typed_recipes.spec.arch import Vocab
from modelopt_typed_recipes.spec.layout import ParallelLayout
from modelopt_typed_recipes.spec.recipe import HFCheckpoint, MegatronCheckpoint, Recipe, TextData
from modelopt_typed_recipes.spec.techniques import AutoQuantize, Export, Prune, Quantize

check_mod = importlib.import_module("modelopt_typed_recipes.plan.check")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def dist_cpu():
    from modelopt_typed_recipes.runtime import distributed

    init_gloo_world()
    distributed.set_layout(ParallelLayout(), device="cpu")
    with megatron_on_cpu():
        yield


def arch_4k(name="tiny-dense"):
    return attrs.evolve(get_arch(name), vocab=Vocab(size=4096, divisible_by=128))


@pytest.fixture(scope="module")
def hf_dense(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    from modelopt_typed_recipes.bridges.hf_config import to_hf_config
    from modelopt_typed_recipes.runtime.data import load_tokenizer

    d = tmp_path_factory.mktemp("hf") / "tiny-dense"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**to_hf_config(arch_4k())), dtype=torch.float32)
    model.save_pretrained(str(d))
    load_tokenizer(None).save_pretrained(str(d))
    return d


@pytest.fixture
def gpu_env(monkeypatch):
    env = check_mod.Environment(megatron_core="0.16.1", modelopt="0.47.0", cuda=True, gpu_count=1)
    monkeypatch.setattr(check_mod.Environment, "detect", classmethod(lambda cls: env))
    return env


CALIB = TextData(dataset="reference-train", num_samples=8, seq_length=64, batch_size=4)
EVAL = TextData(dataset="reference-heldout", num_samples=4, seq_length=64, batch_size=4)


def _batches(hf_dir, data=CALIB):
    from modelopt_typed_recipes.runtime import data as D

    return D.batches(D.token_windows(data, D.load_tokenizer(str(hf_dir))), data.batch_size)


def _model(hf_dir, arch=None):
    from modelopt_typed_recipes.runtime.megatron import build

    m = build.build_model(arch or arch_4k(), ParallelLayout(), dtype="fp32", device="cpu", spec="local")
    build.import_hf(m, str(hf_dir), dtype="fp32")
    return m


def test_config_mapping_counts_parameters(dist_cpu):
    from modelopt_typed_recipes.runtime.megatron import build

    for name in ("tiny-dense", "tiny-moe"):
        arch = get_arch(name)
        m = build.build_model(arch, ParallelLayout(), dtype="fp32", device="cpu", spec="local")
        assert sum(p.numel() for p in m.parameters()) == arch.params_total


def test_hf_import_matches_transformers_logits(dist_cpu, hf_dense):
    from modelopt.torch.utils.plugins.megatron_generate import megatron_prefill
    from transformers import AutoModelForCausalLM

    ids = _batches(hf_dense)[0][:2]
    mc = _model(hf_dense)
    with torch.no_grad():
        ours = megatron_prefill(mc, ids)[..., :4096]
        ref = AutoModelForCausalLM.from_pretrained(str(hf_dense), dtype=torch.float32).eval()(ids).logits
    assert (ours - ref).abs().max() < 1e-3


@pytest.mark.parametrize("fmt", ["fp8", "int8_sq", "int4_awq"])
def test_wrapper_equals_direct_modelopt(dist_cpu, hf_dense, fmt):
    import copy

    import modelopt.torch.quantization as mtq
    from modelopt.torch.utils.plugins.megatron_generate import megatron_prefill

    from modelopt_typed_recipes.runtime.megatron import stages

    batches = _batches(hf_dense)
    preset = Quantize(format=fmt).preset
    direct = _model(hf_dense)

    def loop(m):
        with torch.no_grad():
            for b in batches:
                megatron_prefill(m, b, skip_return_logits=True)

    mtq.quantize(direct, copy.deepcopy(getattr(mtq, preset)), loop)
    ours = _model(hf_dense)
    stages.quantize(ours, Quantize(format=fmt), batches, progress=False, config=_config(Quantize(format=fmt)))
    a, b = stages.amax_state(direct), stages.amax_state(ours)
    assert a.keys() == b.keys() and len(a) > 4
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_round_trip_keeps_quantizers(dist_cpu, hf_dense, tmp_path):
    from modelopt_typed_recipes.runtime.megatron import build, stages

    batches = _batches(hf_dense)
    m = _model(hf_dense)
    stages.quantize(m, Quantize(format="fp8"), batches, progress=False, config=_config(Quantize(format="fp8")))
    ckpt = build.save_checkpoint(m, tmp_path / "ckpt", arch=arch_4k(), spec="local")
    assert (ckpt / "metadata.json").is_file() and (ckpt / "modelopt_state").is_dir()
    assert not (tmp_path / "ckpt.partial").exists()
    # a later run from this checkpoint rebuilds the spec it was saved with, whatever TE offers now
    src = MegatronCheckpoint(path=str(ckpt))
    assert saved_layer_spec(src) == "local"
    later = Recipe(model=arch_4k(), source=src, stages=(Quantize(format="fp8"),), output_dir=str(tmp_path / "o"),
                   backend="megatron", device="cuda")
    assert build.spec_for_run(later, te_available=True) == "local"
    fresh_src = attrs.evolve(later, source=MegatronCheckpoint(path=str(tmp_path)))  # nothing recorded there
    assert build.spec_for_run(fresh_src, te_available=True) == "modelopt"
    fresh = build.build_model(arch_4k(), ParallelLayout(), dtype="fp32", device="cpu", spec="local")
    fresh = build.load_checkpoint(fresh, ckpt)
    a, b = stages.amax_state(m), stages.amax_state(fresh)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert stages.quantizer_summary(fresh) == {"weight": 8, "input": 8}


def _config(stage):
    """The config the plan composes for a Quantize stage (what the backends give mtq.quantize)."""
    from modelopt_typed_recipes.plan.techniques.quantize import quantize_config

    return quantize_config(stage)[0].config


def _run(recipe, tmp_path):
    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.runtime.megatron import backend

    plan = check_recipe(recipe, env=Environment.detect(), backend="megatron")  # gpu_env: a GPU machine
    plan.raise_first()
    plan = attrs.evolve(plan, device="cpu", dtype="fp32", output_dir=tmp_path / "out",
                        staging_dir=tmp_path / "staging", progress=True)
    return backend.run(recipe, plan)


def test_backend_run_int4_awq_and_auto_quantize(dist_cpu, hf_dense, tmp_path, gpu_env):
    r = Recipe(name="t", model=arch_4k(), source=HFCheckpoint(path=str(hf_dense)),
               stages=(Quantize(format="int4_awq"),), calibration=CALIB, evaluation=EVAL, output_dir=str(tmp_path / "o"),
               backend="megatron", device="cuda")
    res = _run(r, tmp_path)
    st = res.stages[0]
    assert st.name == "quantize-int4_awq" and st.quantizer_summary == {"weight": 8}
    assert st.details["algorithm"]["method"] == "awq_lite"
    assert (tmp_path / "staging" / st.outputs[0] / "model_arch.yaml").is_file()
    before, after = res.metrics["perplexity_before"], res.metrics["perplexity_after"]
    assert math.isfinite(before) and abs(after / before - 1) < 0.05
    assert res.metrics["perplexity_change_pct"] == pytest.approx(100 * (after / before - 1))  # as the HF backend
    r2 = attrs.evolve(r, stages=(AutoQuantize(effective_bits=6.0, formats=("int4_awq", "fp8")),))
    res2 = _run(r2, tmp_path / "auto")
    assert res2.stages[0].effective_bits <= 6.0 and res2.stages[0].details["is_satisfied"]


def test_backend_refuses_export_and_bad_patterns_before_building(hf_dense, tmp_path, gpu_env):
    from modelopt_typed_recipes.runtime.megatron import backend

    r = Recipe(model=arch_4k(), source=HFCheckpoint(path=str(hf_dense)), stages=(Quantize(format="fp8"), Export()),
               output_dir=str(tmp_path / "o"), backend="megatron")
    with pytest.raises(CompatibilityError, match="megatron-core >= 0.18"):
        check_mod.check_recipe(r).raise_first()
    r = attrs.evolve(r, stages=(Quantize(format="fp8", exclude=("*layers.5.*",)),))
    with pytest.raises(Exception, match="matches no quantizer"):
        check_mod.check_recipe(r).raise_first()
    plan = attrs.evolve(check_mod.check_recipe(r), staging_dir=tmp_path / "s")
    with pytest.raises(SpecError, match="did not pass its check"):
        backend.run(r, plan)  # a plan with errors is never executed
    assert not (tmp_path / "o").exists()


def test_prune_call_path_up_to_modelopt(dist_cpu, hf_dense):
    from modelopt_typed_recipes.runtime.megatron import stages

    stage = Prune(num_layers=1, ffn_hidden_size=128)
    assert stages.prune_constraints(stage) == {"export_config": {"ffn_hidden_size": 128, "num_layers": 1}}
    assert stages.prune_constraints(Prune(params="400K")) == {"params": 400_000}
    assert not stages.minitron_available()  # no Transformer Engine / megatron-core < 0.18 here
    with pytest.raises(CompatibilityError, match="mcore_minitron"):
        stages.prune(_model(hf_dense), stage, arch_4k(), _batches(hf_dense), progress=False)
    # the hand-off: the pruned model's TransformerConfig becomes the architecture later stages use
    cfg = types.SimpleNamespace(num_layers=1, hidden_size=128, ffn_hidden_size=128, num_attention_heads=4,
                                kv_channels=32, num_moe_experts=None)
    new = stages.arch_after_prune(arch_4k(), stage, cfg)
    assert (new.num_layers, new.ffn_hidden_size, new.hidden_size) == (1, 128, 128)
    assert new.params_total < arch_4k().params_total
    bad = types.SimpleNamespace(**{**vars(cfg), "num_layers": 2})
    with pytest.raises(CompatibilityError, match="num_layers"):
        stages.arch_after_prune(arch_4k(), stage, bad)


def test_minitron_divisors_make_each_target_a_choice():
    from modelopt_typed_recipes.runtime.megatron import stages

    d = stages.minitron_divisors(Prune(hidden_size=192, ffn_hidden_size=640, num_layers=3))
    assert d == {"num_layers_divisor": 1, "hidden_size_divisor": 192, "ffn_hidden_size_divisor": 640}
    d = stages.minitron_divisors(Prune(ffn_hidden_size=96, moe_ffn_hidden_size=64, num_moe_experts=4))
    assert d["ffn_hidden_size_divisor"] == 32 and d["num_moe_experts_divisor"] == 4
    assert stages.minitron_divisors(Prune(params="400K")) == {}  # a search keeps ModelOpt's grid


def test_layer_spec_choice(dist_cpu):
    from modelopt_typed_recipes.runtime.megatron import build

    assert build.choose_spec(te_available=False, prune=True) == "local"
    assert build.choose_spec(te_available=True, prune=False) == "modelopt"
    assert build.choose_spec(te_available=True, prune=True) == "te"  # Megatron-LM's prune.sh builds this
    m = build.build_model(arch_4k(), ParallelLayout(), dtype="fp32", device="cpu", spec="local")
    assert type(m.decoder.layers[0].self_attention.linear_qkv).__name__ == "ColumnParallelLinear"
    with pytest.raises(ValueError, match="unknown layer spec"):
        build.build_model(arch_4k(), ParallelLayout(), dtype="fp32", device="cpu", spec="fast")


def test_calibration_data_errors(tmp_path):
    from modelopt_typed_recipes.errors import DataError
    from modelopt_typed_recipes.runtime import data as D

    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(DataError, match="empty"):
        D.token_windows(TextData(files=(str(empty),)), D.load_tokenizer(None))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError) as exc:
        D.token_windows(TextData(files=(str(bad),)), D.load_tokenizer(None))
    assert exc.value.path == "calibration.files[0]"
    with pytest.raises(DataError):
        D.token_windows(TextData(files=(str(tmp_path / "missing.txt"),)), D.load_tokenizer(None))
    short = tmp_path / "short.txt"
    short.write_text("a few words")
    with pytest.raises(DataError, match="fewer than one window"):
        D.token_windows(TextData(files=(str(short),), seq_length=256), D.load_tokenizer(None))
    assert Path(D.REFERENCE_DIR / "train.txt").is_file()


def test_auto_quantize_searches_attention_layers():
    """Regression: the search once disabled attention for every model (ModelOpt's Mamba-MoE unit leaked in)."""
    import fnmatch

    from modelopt_typed_recipes.runtime.megatron.stages import auto_quantize_inputs
    from modelopt_typed_recipes.spec.techniques import AutoQuantize

    inputs = auto_quantize_inputs(AutoQuantize(effective_bits=6.0, formats=("int4_awq", "fp8")))
    for name in ("decoder.layers.0.self_attention.linear_qkv", "decoder.layers.0.self_attention.linear_proj",
                 "decoder.layers.0.mlp.linear_fc1"):
        assert not any(fnmatch.fnmatch(name, p) for p in inputs.disabled_layers), name
    assert any(fnmatch.fnmatch("output_layer", p) for p in inputs.disabled_layers)


def test_exported_config_follows_pruned_moe_arch(tmp_path):
    from modelopt_typed_recipes.bridges.hf_config import to_hf_config
    from modelopt_typed_recipes.runtime.megatron import stages

    arch = get_arch("tiny-moe")
    (tmp_path / "config.json").write_text(json.dumps(to_hf_config(arch)))
    pruned = Prune(num_moe_experts=4, moe_ffn_hidden_size=32, num_layers=1).pruned(arch)
    changed = stages.sync_exported_config(tmp_path, pruned)
    # to_hf_config writes Qwen3-MoE's expert count in both spellings (transformers 4: num_experts, 5:
    # num_local_experts), so an export written by either version is synced
    assert changed == {"num_experts": (8, 4), "num_local_experts": (8, 4), "moe_intermediate_size": (64, 32),
                       "num_hidden_layers": (2, 1)}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert (cfg["num_experts"], cfg["moe_intermediate_size"], cfg["num_hidden_layers"]) == (4, 32, 1)
    assert cfg["num_local_experts"] == 4
    assert stages.sync_exported_config(tmp_path, pruned) == {}  # idempotent


@pytest.fixture
def export_env(monkeypatch):
    """A machine whose megatron-core exports (>= 0.18), and ModelOpt's exporter replaced by a recorder: this
    machine's megatron-core 0.16 cannot import it. What is tested is our hand-over, not ModelOpt's writer."""
    from modelopt_typed_recipes.runtime.megatron import stages

    env = check_mod.Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=1)
    monkeypatch.setattr(check_mod.Environment, "detect", classmethod(lambda cls: env))
    calls = []

    def fake_export(model, hf_reference, export_dir, **kw):
        ref = Path(hf_reference)
        calls.append({"config": json.loads((ref / "config.json").read_text()),
                      "files": sorted(p.name for p in ref.iterdir())})
        (Path(export_dir) / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(stages, "export_hf", fake_export)
    return calls


def test_stages_hand_over_in_memory_and_save_only_what_is_asked(dist_cpu, tmp_path, export_env):
    """Random weights -> FP8 -> export: no checkpoint under ``save: auto`` (the export is the deliverable), an
    HF reference folder made from the architecture and the reference tokenizer (removed afterwards), and the
    manifest saying so; ``save: final`` writes the quantized model's checkpoint too."""
    from modelopt_typed_recipes.runtime.manifest import build_manifest
    from modelopt_typed_recipes.spec.recipe import RandomInit

    r = Recipe(name="t", model=arch_4k(), source=RandomInit(), stages=(Quantize(format="fp8"), Export()),
               calibration=CALIB, output_dir=str(tmp_path / "o"), backend="megatron", device="cuda")
    res = _run(r, tmp_path / "auto")
    quant, export = res.stages
    assert quant.outputs == () and quant.details["checkpoint"] == {
        "saved": False, "reason": "save: auto: stages[1] exports the final model"}
    staging = tmp_path / "auto" / "staging"
    # no checkpoint, no reference folder; the stage journal goes when run_post_training writes the manifest
    assert sorted(p.name for p in staging.iterdir()) == ["02-export-hf", "journal.json"]
    [call] = export_env
    assert call["config"]["architectures"] == ["Qwen3ForCausalLM"] and call["config"]["vocab_size"] == 4096
    assert "tokenizer.json" in call["files"] and call["config"]["eos_token_id"] is not None
    assert "reference tokenizer" in export.details["hf_reference"]
    from modelopt_typed_recipes.plan.check import Environment, check_recipe

    plan = attrs.evolve(check_recipe(r, env=Environment.detect(), backend="megatron"), device="cpu", dtype="fp32",
                        output_dir=tmp_path / "o", staging_dir=staging)
    assert [s.save.to_dict() if s.save else None for s in plan.stages] == [
        {"saved": False, "reason": "save: auto: stages[1] exports the final model"}, None]
    manifest = build_manifest(r, plan, res)
    assert manifest["recipe"]["save"] == "auto"
    assert manifest["saved"] == {"checkpoints": [{"stage": "quantize-fp8", "saved": False,
                                                  "reason": "save: auto: stages[1] exports the final model"}],
                                 "handovers": []}

    res = _run(attrs.evolve(r, save="final"), tmp_path / "final")
    quant = res.stages[0]
    assert quant.outputs == ("01-quantize-fp8/checkpoint",)
    assert quant.details["checkpoint"]["saved"] and quant.details["checkpoint"]["reason"] == "save: final: the final model"
    assert (tmp_path / "final" / "staging" / "01-quantize-fp8" / "checkpoint" / "metadata.json").is_file()


def test_check_refuses_exports_it_cannot_write(tmp_path, export_env):
    """What the run would only find out after quantizing, ``check`` says first."""
    (tmp_path / "metadata.json").write_text("{}")  # a Megatron distributed checkpoint has one
    src = MegatronCheckpoint(path=str(tmp_path))
    r = Recipe(model=arch_4k(), source=src, stages=(Quantize(format="fp8"), Export()),
               output_dir=str(tmp_path / "o"), backend="megatron", device="cuda")
    report = check_mod.check_recipe(r)
    assert [e.path for e in report.errors] == ["source.hf_reference"]
    from modelopt_typed_recipes.spec.recipe import RandomInit

    small = attrs.evolve(arch_4k(), vocab=Vocab(size=256, divisible_by=128))
    report = check_mod.check_recipe(attrs.evolve(r, model=small, source=RandomInit()))
    assert [e.path for e in report.errors] == ["model.vocab.size"] and "257" in report.errors[0].message


def test_layout_handover_frees_the_old_model_before_building_the_new(dist_cpu, tmp_path, monkeypatch):
    """Between layouts the model goes through a temporary checkpoint; the old model (and its reference cycles)
    must be gone before the new one is built, or both share the GPU (measured: the TP2 -> PP2 export peak
    held a second 8 GB copy of qwen3-8b; a traceback PuLP keeps from its import had pinned the stage's frame)."""
    import gc
    import weakref

    from modelopt_typed_recipes.runtime import distributed
    from modelopt_typed_recipes.runtime.backend import load_backend
    from modelopt_typed_recipes.runtime.megatron import build, stages

    backend = load_backend("megatron")  # as run_post_training does: ModelOpt imported before any model exists
    m = build.build_model(arch_4k(), ParallelLayout(), dtype="fp32", device="cpu", spec="local")
    stages.quantize(m, Quantize(format="fp8"), [torch.randint(0, 4096, (2, 32))], progress=False,
                    config=_config(Quantize(format="fp8")))
    before = stages.amax_state(m)
    build.save_checkpoint(m, tmp_path / "h", arch=arch_4k())
    gone = weakref.ref(m)
    events: list[tuple[str, bool]] = []  # the cache goes back once the old model is freed, before the new groups
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append(("release", gone() is None)))
    real_set_layout = distributed.set_layout
    monkeypatch.setattr(distributed, "set_layout",
                        lambda *a, **k: events.append(("set_layout", gone() is None)) or real_set_layout(*a, **k))
    gc.disable()  # only _reload's own collection may free it
    try:
        del m
        fresh = backend._reload(arch_4k(), ParallelLayout(), tmp_path / "h", dtype="fp32", device="cpu", spec="local",
                                seed=1)
    finally:
        gc.enable()
    assert gone() is None and not (tmp_path / "h").exists()
    assert events == [("release", True), ("set_layout", True)]
    after = stages.amax_state(fresh)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)


class _Killed(BaseException):
    """Stands in for a kill in-process: not an Exception, so nothing on the way catches it."""


def test_a_stopped_run_continues_from_the_last_stage_checkpoint(dist_cpu, hf_dense, tmp_path, export_env, monkeypatch):
    """FP8 (save: all) -> export, stopped after the quantize stage is recorded, then inside the export, then after
    the export: each next run loads the recorded checkpoint, skips the finished stages and ends with the numbers
    of a run never stopped. Under ``save: auto`` (the quantized model handed over in memory) it starts again and
    says why."""
    from modelopt_typed_recipes.plan.journal import JOURNAL_NAME, Journal
    from modelopt_typed_recipes.runtime.megatron import stages

    r = Recipe(name="t", model=arch_4k(), source=HFCheckpoint(path=str(hf_dense)), stages=(Quantize(format="fp8"), Export()),
               calibration=CALIB, evaluation=EVAL, output_dir=str(tmp_path / "o"), backend="megatron", device="cuda",
               save="all")
    straight = _run(r, tmp_path / "straight")
    quantized = []
    real_quantize, real_finish, real_export = stages.quantize, Journal.finish_stage, stages.export_hf
    monkeypatch.setattr(stages, "quantize", lambda *a, **k: quantized.append(1) or real_quantize(*a, **k))

    def journal_of(run_dir):
        return json.loads((run_dir / "staging" / JOURNAL_NAME).read_text())["stages"]

    def kill_after(index):
        def finish(self, i, *a, **k):
            real_finish(self, i, *a, **k)
            if i == index:
                raise _Killed
        monkeypatch.setattr(Journal, "finish_stage", finish)

    run_dir = tmp_path / "killed"
    kill_after(0)
    with pytest.raises(_Killed):
        _run(r, run_dir)
    assert [(s["result"]["name"], s["state"]) for s in journal_of(run_dir)] == [
        ("quantize-fp8", "01-quantize-fp8/checkpoint")]

    monkeypatch.setattr(Journal, "finish_stage", real_finish)
    def export_then_die(*a, **k):
        real_export(*a, **k)
        raise _Killed
    monkeypatch.setattr(stages, "export_hf", export_then_die)
    with pytest.raises(_Killed):
        _run(r, run_dir)
    assert len(quantized) == 1  # the first killed run's: the second skipped stage 0
    assert (run_dir / "staging" / "02-export-hf" / "model.safetensors").exists()  # half a stage: redone next

    monkeypatch.setattr(stages, "export_hf", real_export)
    kill_after(1)
    with pytest.raises(_Killed):
        _run(r, run_dir)
    assert [s["state"] for s in journal_of(run_dir)] == ["01-quantize-fp8/checkpoint"] * 2  # export: the model it wrote
    monkeypatch.setattr(Journal, "finish_stage", real_finish)
    res = _run(r, run_dir)  # every stage done: the checkpoint is loaded only to measure after the stages
    assert len(quantized) == 1 and res.resumed_from == 2
    assert res.notes == ("resuming a stopped run of this recipe: 2 stage(s) done, all stages were finished",)
    assert [s.name for s in res.stages] == ["quantize-fp8", "export-hf"]
    assert res.stages[0].details["checkpoint"]["saved"] is True
    for key in ("perplexity_before", "perplexity_after"):
        assert res.metrics[key] == pytest.approx(straight.metrics[key], rel=1e-6), key

    # save: auto hands the quantized model to the export in memory: nothing to continue from
    auto = attrs.evolve(r, save="auto")
    kill_after(0)
    with pytest.raises(_Killed):
        _run(auto, tmp_path / "auto")
    monkeypatch.setattr(Journal, "finish_stage", real_finish)
    res = _run(auto, tmp_path / "auto")
    assert res.resumed_from is None and len(quantized) == 3
    assert "did not save the model after it (the save policy handed it over in memory; save: all" in res.notes[0]
    assert res.notes[0].endswith("starting from the beginning")
    assert res.metrics["perplexity_after"] == pytest.approx(straight.metrics["perplexity_after"], rel=1e-6)


def test_run_post_training_continues_a_stopped_megatron_run(dist_cpu, hf_dense, tmp_path, export_env, monkeypatch):
    """The whole of run_post_training (lock, staging folder, journal, manifest, swap) around a Megatron-Core run
    stopped inside its export (Ctrl-C keeps the staging folder, as a kill does): the same call continues with the
    export from the quantize stage's checkpoint and puts one finished folder in place, journal left out."""
    from modelopt_typed_recipes.plan import outputs
    from modelopt_typed_recipes.runtime import api
    from modelopt_typed_recipes.runtime.megatron import stages

    real_plan = api.plan_run
    monkeypatch.setattr(api, "plan_run", lambda *a, **k: attrs.evolve(real_plan(*a, **k), device="cpu", dtype="fp32"))
    out = tmp_path / "out"
    r = Recipe(name="t", model=arch_4k(), source=HFCheckpoint(path=str(hf_dense)), stages=(Quantize(format="fp8"), Export()),
               calibration=CALIB, evaluation=EVAL, output_dir=str(out), backend="megatron", device="cuda", save="all")
    real_export = stages.export_hf

    def export_then_stop(*a, **k):
        real_export(*a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(stages, "export_hf", export_then_stop)
    with pytest.raises(KeyboardInterrupt):
        api.run_post_training(r, progress=False)
    [staging] = tmp_path.glob(".out.partial-*")
    assert json.loads((staging / "journal.json").read_text())["stages"][0]["state"] == "01-quantize-fp8/checkpoint"
    assert not out.exists() and not outputs.lock_path(out).exists()
    monkeypatch.setattr(stages, "export_hf", real_export)
    res = api.run_post_training(r, progress=False)
    assert res.resumed_from == 1 and "continuing with stages[1]" in " ".join(res.notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    manifest = outputs.read_manifest(out)
    assert manifest is not None and set(manifest["files"]) == set(outputs.inventory(out))
    assert "journal.json" not in manifest["files"] and (out / "01-quantize-fp8" / "checkpoint" / "metadata.json").is_file()


def test_each_stage_gives_the_cuda_cache_back_before_the_next_work(dist_cpu, tmp_path, export_env, monkeypatch):
    """After a batch-48 calibration of a 30 B MoE on two H200s, the next NCCL call died with "Cuda failure 2 'out
    of memory'": PyTorch's allocator held the freed calibration blocks and NCCL allocates outside it. The stage
    loop gives the cache back before the first stage (what loading and the measurements before left) and after every
    stage: before the next stage and before the measurements after."""
    from modelopt_typed_recipes.runtime.megatron import stages, steps
    from modelopt_typed_recipes.spec.recipe import RandomInit

    events = record_stages_and_releases(monkeypatch, steps, ("quantize", "export"))
    real_perplexity = stages.perplexity
    monkeypatch.setattr(stages, "perplexity", lambda *a, **k: events.append("perplexity") or real_perplexity(*a, **k))
    r = Recipe(name="t", model=arch_4k(), source=RandomInit(), stages=(Quantize(format="fp8"), Export()),
               calibration=CALIB, evaluation=EVAL, output_dir=str(tmp_path / "o"), backend="megatron", device="cuda")
    res = _run(r, tmp_path)
    assert math.isfinite(res.metrics["perplexity_after"])
    assert events == ["perplexity", "release", "quantize", "quantize done", "release", "export", "export done", "release",
                      "perplexity"]


def test_the_cache_is_given_back_before_a_hand_over_writes_its_checkpoint(dist_cpu, tmp_path, export_env,
                                                                         monkeypatch):
    """A move between layouts saves through the checkpoint writer, whose first gather opens NCCL's point-to-point
    channels (buffers outside PyTorch's allocator): the stage before has given its cached blocks back by then.
    The save here stops the run (one process has no second layout to load into); nothing is left behind."""
    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.runtime.megatron import backend, build, steps
    from modelopt_typed_recipes.runtime.megatron import handover as H
    from modelopt_typed_recipes.spec.recipe import RandomInit

    events = record_stages_and_releases(monkeypatch, steps, ("quantize", "export"))

    def save(model, folder, **_kw):
        events.append("save")
        Path(folder).mkdir(parents=True, exist_ok=True)
        raise OSError("stop after the save began")

    monkeypatch.setattr(build, "save_checkpoint", save)
    monkeypatch.setenv(H.ENV, "output")  # the scratch folder under the staging folder, where the test can look
    r = Recipe(name="t", model=arch_4k(), source=RandomInit(), stages=(Quantize(format="fp8"), Export()),
               calibration=CALIB, output_dir=str(tmp_path / "o"), backend="megatron", device="cuda")
    plan = check_recipe(r, env=Environment.detect(), backend="megatron")
    plan.raise_first()
    quant, export = plan.stages
    plan = attrs.evolve(plan, device="cpu", dtype="fp32", output_dir=tmp_path / "out", staging_dir=tmp_path / "staging",
                        stages=(quant, attrs.evolve(export, layout=ParallelLayout(tensor_parallel=2))))
    with pytest.raises(OSError, match="stop after"):
        backend.run(r, plan)
    assert events == ["release", "quantize", "quantize done", "release", "save"]
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == ["journal.json"]  # hand-over folder gone


def test_folders_under_the_home_directory_load_as_check_read_them(dist_cpu, hf_dense, tmp_path, export_env,
                                                                  monkeypatch):
    """``check`` reads ``~/...`` source folders under the home directory; the Megatron-Core run loads the same
    folders (it handed the raw ``~`` path to the importer, the checkpoint loader and the exporter, which failed after
    building the model): an HF source, then its saved checkpoint with an ``hf_reference``, both given from ``~``."""
    home = Path(hf_dense).parent.parent  # holds this test's folders too
    monkeypatch.setenv("HOME", str(home))
    assert tmp_path.parent == home

    def tilde(p: Path) -> str:
        return "~/" + str(p.relative_to(home))

    r = Recipe(name="t", model=arch_4k(), source=HFCheckpoint(path=tilde(hf_dense)), stages=(Quantize(format="fp8"),),
               calibration=CALIB, output_dir=str(tmp_path / "o"), backend="megatron", device="cuda", save="final")
    (quant,) = _run(r, tmp_path / "first").stages
    saved = tmp_path / "first" / "staging" / quant.outputs[0]
    later = attrs.evolve(r, source=MegatronCheckpoint(path=tilde(saved), hf_reference=tilde(hf_dense)),
                         stages=(Export(),))
    (export,) = _run(later, tmp_path / "later").stages
    [call] = export_env
    assert call["config"]["vocab_size"] == 4096 and "tokenizer.json" in call["files"]
    assert export.outputs and (tmp_path / "later" / "staging" / export.outputs[0] / "model.safetensors").is_file()
