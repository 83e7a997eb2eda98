"""Distillation on Megatron-Core (``runtime.megatron.distill``) on the CPU: real GPTModels of reference-llama,
ModelOpt's Megatron distillation plugin, real backward passes (the TEST-ONLY shim lets the forward run).

The student is reference-llama with two decoder layers dropped (what Minitron's depth pruning leaves) or
quantized (QAD); the measure of progress is the teacher-student KL divergence on held-out windows the
training never sees, before and after a few steps.
"""

from __future__ import annotations

import json

import attrs
import pytest

from _dist import init_gloo_world
from megatron_cpu_shim import megatron_on_cpu
from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.errors import LayoutError, SpecError
from modelopt_typed_recipes.spec.layout import ParallelLayout
from modelopt_typed_recipes.spec.recipe import TextData

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

SEQ = 65
DTYPE = "fp32"  # bf16 matmuls on a 2-core CPU are several times slower; the loop is the same


@pytest.fixture(scope="module")
def dist_cpu():
    from modelopt_typed_recipes.runtime import distributed

    init_gloo_world()
    distributed.set_layout(ParallelLayout(), device="cpu")
    with megatron_on_cpu():
        yield


def _reference(num_layers_kept: tuple[int, ...] | None = None):
    from modelopt_typed_recipes.runtime.data import REFERENCE_DIR
    from modelopt_typed_recipes.runtime.megatron import build

    arch = get_arch("reference-llama")
    full = build.build_model(arch, ParallelLayout(), dtype=DTYPE, device="cpu", spec="local")
    build.import_hf(full, str(REFERENCE_DIR), dtype=DTYPE)
    if num_layers_kept is None:
        return full
    small = build.build_model(attrs.evolve(arch, num_layers=len(num_layers_kept)), ParallelLayout(), dtype=DTYPE,
                              device="cpu", spec="local")
    src = full.state_dict()
    dst = {}
    for k in small.state_dict():
        if k.startswith("decoder.layers."):
            i = int(k.split(".")[2])
            k_src = k.replace(f"decoder.layers.{i}.", f"decoder.layers.{num_layers_kept[i]}.", 1)
        else:
            k_src = k
        dst[k] = src[k_src]
    small.load_state_dict(dst)
    return small


def _windows(dataset: str, n: int):
    from modelopt_typed_recipes.runtime import data

    return data.token_windows(TextData(dataset=dataset, num_samples=n, seq_length=SEQ, batch_size=4),
                              data.load_tokenizer(None), path="data")


def _kl(teacher, student, windows) -> float:
    """Mean per-token KL(teacher || student) on ``windows`` (what logits distillation minimises)."""
    import torch.nn.functional as F
    from modelopt.torch.utils.plugins.megatron_generate import megatron_prefill

    with torch.no_grad():
        t = megatron_prefill(teacher, windows).float().log_softmax(-1)
        s = megatron_prefill(student, windows).float().log_softmax(-1)
    return float(F.kl_div(s, t, log_target=True, reduction="none").sum(-1).mean())


def _train(steps=6, lr=1e-4, **kw):
    from modelopt_typed_recipes.runtime.megatron import distill as md

    return md.Training(steps=steps, micro_batch_size=4, learning_rate=lr, warmup_steps=1, **kw)


def test_depth_pruned_student_gets_closer_to_its_teacher(dist_cpu):
    from modelopt_typed_recipes.runtime.megatron import distill as md

    teacher = _reference()
    teacher.requires_grad_(False)
    student = _reference((0, 1, 4, 5))
    held_out = _windows("reference-heldout", 4)
    before = _kl(teacher, student, held_out)
    out, report = md.distill(student, teacher, _windows("reference-train", 40), _train(steps=10), md.KDLoss())
    after = _kl(teacher, out, held_out)
    assert after < 0.92 * before, (before, after)  # measured: 0.147 -> 0.118 in 12 steps
    assert type(out).__name__ == "GPTModel"
    assert report["steps"] == 10 and report["tokens"] == 10 * 4 * (SEQ - 1)
    curve = report["curve"]
    assert curve[0]["lr"] == 0.0 and curve[1]["lr"] == pytest.approx(1e-4)  # Megatron's warm-up from 0
    assert all(r["logits_loss"] == pytest.approx(r["loss"]) for r in curve)  # skip_lm_loss: KD loss alone
    # the student's forward is GPTModel's again: no teacher, no per-instance overrides left behind
    assert "forward" not in vars(out) and "compute_language_model_loss" not in vars(out)
    assert not any("teacher" in k for k in out.state_dict())


def test_lm_loss_counts_when_not_skipped(dist_cpu):
    from modelopt_typed_recipes.runtime.megatron import distill as md

    teacher = _reference()
    student = _reference((0, 1, 4, 5))
    _, report = md.distill(student, teacher, _windows("reference-train", 8), _train(steps=1, lr=1e-6),
                           md.KDLoss(skip_lm_loss=False, kd_loss_scale=1.0))
    row = report["curve"][0]
    # ModelOpt's balancer: LM loss + KD loss rescaled to the LM loss's size -> twice the LM loss (~ln 45)
    assert row["loss"] > 2 * 3.0 and row["loss"] > 10 * row["logits_loss"]


def test_qad_keeps_quantizers_and_a_restorable_state(dist_cpu, tmp_path):
    import copy

    import modelopt.torch.opt as mto
    import modelopt.torch.quantization as mtq

    from modelopt_typed_recipes.runtime.megatron import build, stages
    from modelopt_typed_recipes.runtime.megatron import distill as md

    teacher = _reference()
    student = _reference()
    calib = _windows("reference-train", 8)
    mtq.quantize(student, copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG),
                 stages.forward_loop([calib[:4]], progress=False))
    n_quantizers = stages.quantizer_summary(student)
    w_before = student.decoder.layers[0].mlp.linear_fc1.weight.detach().clone()
    out, report = md.distill(student, teacher, _windows("reference-train", 12), _train(steps=3, lr=1e-5), md.KDLoss())
    assert stages.quantizer_summary(out) == n_quantizers  # fake quantization stays (STE gradients)
    assert not torch.equal(out.decoder.layers[0].mlp.linear_fc1.weight, w_before)  # the weights learned
    assert all(0 < r["loss"] < 1 for r in report["curve"])  # the KL of a 4-bit student to its bf16 self
    modes = [m for m, _ in mto.ModeloptStateManager(out).state_dict()]
    assert "kd_loss" not in modes and "export_student" not in modes and "quantize" in modes
    arch = get_arch("reference-llama")
    ckpt = build.save_checkpoint(out, tmp_path / "ckpt", arch=arch, spec="local")
    fresh = build.load_checkpoint(build.build_model(arch, ParallelLayout(), dtype=DTYPE, device="cpu", spec="local"),
                                  ckpt)
    assert stages.quantizer_summary(fresh) == n_quantizers
    assert torch.equal(fresh.decoder.layers[0].mlp.linear_fc1.weight, out.decoder.layers[0].mlp.linear_fc1.weight)


def test_finetune_without_teacher_lowers_the_lm_loss(dist_cpu):
    from modelopt_typed_recipes.runtime.megatron import distill as md

    student = _reference((0, 1, 4, 5))
    windows = _windows("reference-train", 8)
    _, report = md.distill(student, None, windows, _train(steps=6, lr=3e-4, lr_schedule="constant"), md.KDLoss())
    losses = [r["loss"] for r in report["curve"]]
    assert losses[-1] < losses[1]  # step 1 trains at lr 0 (warm-up); then the same 8 windows, fitted


def test_master_weights_stay_fp32_and_clip(dist_cpu):
    from modelopt_typed_recipes.runtime.megatron import distill as md

    lin = torch.nn.Linear(4, 4).to(torch.bfloat16)
    opt = md.MasterAdamW(list(lin.parameters()), _train(steps=2, lr=0.1, clip_grad=0.5))
    assert all(m.dtype == torch.float32 for m in opt.masters)
    lin(torch.ones(2, 4, dtype=torch.bfloat16)).float().pow(2).sum().mul(100).backward()
    norm = opt.step()
    assert norm > 0.5
    assert all(p.grad is None for p in lin.parameters())
    assert torch.equal(lin.weight, opt.masters[0].to(torch.bfloat16))


def test_masked_sum_reads_the_criterion_tuple(dist_cpu):
    from modelopt_typed_recipes.runtime.megatron import distill as md

    loss = torch.arange(6.0).reshape(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert float(md.masked_sum(loss, mask)) == 0 + 1 + 3 + 5
    assert float(md.masked_sum((loss, True, False), mask)) == 9.0  # TP=1: nothing to reduce


def test_bad_layer_names_and_layouts_are_typed_errors(dist_cpu, monkeypatch):
    from megatron.core import parallel_state

    from modelopt_typed_recipes.runtime.megatron import distill as md

    teacher, student = _reference(), _reference((0, 1))
    with pytest.raises(SpecError, match="no module 'decoder.layers.7'") as err:
        md.wrap(student, teacher, md.KDLoss(intermediate_layer_pairs=(("decoder.layers.7", "decoder.layers.1"),)))
    assert err.value.hint
    monkeypatch.setattr(parallel_state, "get_pipeline_model_parallel_world_size", lambda: 2)
    with pytest.raises(LayoutError, match="PP=1"):
        md.train_loop(student, _windows("reference-train", 4), _train(steps=1), distilling=False)


def test_micro_batches_repeat_the_windows_in_order():
    from modelopt_typed_recipes.runtime.megatron import distill as md

    w = torch.arange(5).unsqueeze(1)
    it = md.micro_batches(w, 2)
    got = [next(it).flatten().tolist() for _ in range(4)]
    assert got == [[0, 1], [2, 3], [4, 0], [1, 2]]
    with pytest.raises(SpecError):
        next(md.micro_batches(w[:0], 2))


def _fp8_codes(weight, amax):
    """The codes FP8 fake quantization computes with (ModelOpt's rule: scale to 448, saturate, round)."""
    return (weight.detach().float() * (448.0 / amax.float())).clamp(-448, 448).to(torch.float8_e4m3fn)


def test_fp8_qat_past_the_ranges_snaps_onto_the_grid_the_export_writes(dist_cpu):
    """FP8 QAT at a high learning rate leaves Megatron-Core weights beyond the ranges calibrated before it.
    ``snap_to_grid`` puts them on their quantizers' grid: the logits stay bitwise what they were, and ModelOpt's
    Megatron exporter's per-layer path (``get_weight_scaling_factor`` then ``to_quantized_weight`` of the bf16
    weight, as ``GPTModelExporter`` calls them) casts values within the FP8 range to exactly the in-memory codes.
    Unsnapped, it casts values a non-saturating cast (PyTorch 2.11) makes NaN, and rounds some codes differently."""
    import copy

    import modelopt.torch.quantization as mtq
    from modelopt.torch.export.quant_utils import (
        get_quantization_format,
        get_weight_scaling_factor,
        to_quantized_weight,
    )
    from modelopt.torch.utils.plugins.megatron_generate import megatron_prefill

    from modelopt_typed_recipes.runtime.megatron import distill as md
    from modelopt_typed_recipes.runtime.megatron import stages
    from modelopt_typed_recipes.runtime.quant_grid import snap_to_grid

    student = _reference()
    mtq.quantize(student, copy.deepcopy(mtq.FP8_DEFAULT_CFG),
                 stages.forward_loop([_windows("reference-train", 4)], progress=False))
    student, _ = md.distill(student, None, _windows("reference-heldout", 16),
                            _train(steps=6, lr=3e-3, lr_schedule="constant"), md.KDLoss())
    layers = {n: m for n, m in student.named_modules()
              if getattr(m, "weight_quantizer", None) is not None and m.weight_quantizer.is_enabled}

    def cast(m):
        w = m.weight.detach().to(torch.bfloat16)  # the exporter's dtype
        return w, get_weight_scaling_factor(m), get_quantization_format(m)

    codes = {n: _fp8_codes(m.weight, m.weight_quantizer.amax) for n, m in layers.items()}
    unsnapped = {n: to_quantized_weight(*cast(m)) for n, m in layers.items()}
    assert max(float((w.float() / s).abs().max()) for w, s, _ in map(cast, layers.values())) > 464  # NaN on 2.11
    assert any(not torch.equal(unsnapped[n].view(torch.uint8), codes[n].view(torch.uint8)) for n in layers)
    held_out = _windows("reference-heldout", 4)
    with torch.no_grad():
        logits = megatron_prefill(student, held_out)

    report = snap_to_grid(student)
    assert report["weights"] == {"fp8": len(layers)} and report["values_beyond_range"] > 0
    with torch.no_grad():
        assert torch.equal(megatron_prefill(student, held_out), logits)  # the model computes what it computed
    for name, m in layers.items():
        w, scale, fmt = cast(m)
        assert float((w.float() / scale).abs().max()) <= 448 * (1 + 2**-8), name
        assert torch.equal(to_quantized_weight(w, scale, fmt).view(torch.uint8), codes[name].view(torch.uint8)), name
    snapped = {n: m.weight.detach().clone() for n, m in layers.items()}
    snap_to_grid(student)
    assert all(torch.equal(m.weight, snapped[n]) for n, m in layers.items())  # snapping again changes nothing


@pytest.fixture
def gpu_env(monkeypatch):
    import importlib

    check_mod = importlib.import_module("modelopt_typed_recipes.plan.check")
    env = check_mod.Environment(megatron_core="0.16.1", modelopt="0.47.0", cuda=True, gpu_count=1)
    monkeypatch.setattr(check_mod.Environment, "detect", classmethod(lambda cls: env))
    return env


def test_recipe_quantize_then_distill_on_the_backend(dist_cpu, tmp_path, gpu_env):
    """The executor as a recipe runs it: the teacher kept before the quantize stage, QAD, the stage's facts."""
    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.runtime.data import REFERENCE_DIR
    from modelopt_typed_recipes.runtime.megatron import backend
    from modelopt_typed_recipes.spec.recipe import HFCheckpoint, Recipe
    from modelopt_typed_recipes.spec.techniques import Distill, Export, Quantize
    from modelopt_typed_recipes.spec.text import TrainingText

    r = Recipe(name="qad", model=get_arch("reference-llama"), source=HFCheckpoint(path=str(REFERENCE_DIR)),
               stages=(Quantize(format="fp8"),
                       Distill(steps=3, micro_batch_size=2, seq_length=SEQ, learning_rate=1e-5,
                               data=TrainingText(dataset="reference-train"), save=True)),
               calibration=TextData(dataset="reference-train", num_samples=4, seq_length=SEQ, batch_size=4),
               evaluation=TextData(dataset="reference-heldout", num_samples=4, seq_length=SEQ, batch_size=4),
               output_dir=str(tmp_path / "o"), backend="megatron", device="cuda")
    plan = check_recipe(r, env=Environment.detect(), backend="megatron")
    plan.raise_first()
    plan = attrs.evolve(plan, device="cpu", dtype=DTYPE, output_dir=tmp_path / "out", staging_dir=tmp_path / "s",
                        progress=False)
    res = backend.run(r, plan)
    q, d = res.stages
    assert d.technique == "distill" and d.quantizer_summary == q.quantizer_summary  # QAD: quantizers kept
    det = d.details
    assert det["qad"] is True and det["steps"] == 3 and det["tokens"] == 3 * 2 * (SEQ - 1)
    assert det["seq_length"] == SEQ and det["lr_first"] == 1e-5 and det["epochs"] >= 1
    teacher = det["teacher"]
    assert teacher["teacher"] == "before_compression" and teacher["kept_before"] == q.name
    assert teacher["bytes_per_rank"] == 4 * get_arch("reference-llama").params_total  # fp32 copy, no quantizers
    ppl_q, ppl_after = det["perplexity_before_stage"], res.metrics["perplexity_after"]
    assert ppl_after == det["perplexity_after_stage"] != ppl_q and abs(ppl_after / ppl_q - 1) < 0.05
    assert (tmp_path / "s" / d.outputs[0] / "metadata.json").is_file()  # save: true wrote the distilled model

    # Megatron-LM's flow: a later run trains the quantized checkpoint further; it arrives with its quantizers
    from modelopt_typed_recipes.spec.recipe import MegatronCheckpoint

    saved = tmp_path / "saved"
    (tmp_path / "s" / d.outputs[0]).rename(saved)
    later = attrs.evolve(r, source=MegatronCheckpoint(path=str(saved)), evaluation=None, output_dir=str(tmp_path / "o2"),
                         stages=(Distill(teacher="none", skip_lm_loss=False, steps=1, micro_batch_size=2, seq_length=SEQ,
                                         learning_rate=1e-5, data=TrainingText(dataset="reference-train")),))
    plan = check_recipe(later, env=Environment.detect(), backend="megatron")
    plan.raise_first()
    plan = attrs.evolve(plan, device="cpu", dtype=DTYPE, output_dir=tmp_path / "out2", staging_dir=tmp_path / "s2",
                        progress=False)
    (again,) = backend.run(later, plan).stages
    assert again.details["qad"] is True and again.quantizer_summary == q.quantizer_summary
    # the checkpoint says its weights were trained while quantized: a recipe that only exports it snaps them
    assert json.loads((saved / MegatronCheckpoint.INFO_FILE).read_text())["trained_while_quantized"] is True
    export_only = check_recipe(attrs.evolve(later, stages=(Export(),)), env=Environment.detect(), backend="megatron")
    assert [s.snap_to_grid for s in export_only.stages] == [True]


def test_recipe_qat_then_export_hands_the_exporter_snapped_weights(dist_cpu, tmp_path, monkeypatch):
    """The export stage after QAT snaps the weights before ModelOpt's exporter sees them (the exporter is a
    recorder here: megatron-core 0.16 cannot import ModelOpt's); a PTQ export is handed the weights untouched."""
    import importlib
    import shutil
    from pathlib import Path

    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.runtime.data import REFERENCE_DIR
    from modelopt_typed_recipes.runtime.megatron import backend, stages
    from modelopt_typed_recipes.spec.recipe import HFCheckpoint, Recipe
    from modelopt_typed_recipes.spec.techniques import Distill, Export, Quantize
    from modelopt_typed_recipes.spec.text import TrainingText

    check_mod = importlib.import_module("modelopt_typed_recipes.plan.check")
    env = check_mod.Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=1)
    monkeypatch.setattr(check_mod.Environment, "detect", classmethod(lambda cls: env))
    seen: list[dict[str, tuple[bool, bool]]] = []

    def recorder(model, hf_reference, export_dir, **kw):  # per layer: (beyond its range, off the grid)
        seen.append({n: (bool((m.weight.abs() > m.weight_quantizer.amax * (1 + 2**-20)).any()),
                         not torch.equal(m.weight_quantizer(m.weight.detach()), m.weight.detach()))
                     for n, m in model.named_modules()
                     if getattr(m, "weight_quantizer", None) is not None and m.weight_quantizer.is_enabled})
        shutil.copy(Path(hf_reference) / "config.json", Path(export_dir) / "config.json")

    monkeypatch.setattr(stages, "export_hf", recorder)
    qat = Distill(teacher="none", skip_lm_loss=False, steps=6, micro_batch_size=4, seq_length=SEQ, learning_rate=3e-3,
                  lr_schedule="constant", warmup_steps=1, data=TrainingText(dataset="reference-heldout"))
    results = []
    for name, body in (("qat", (Quantize(format="fp8"), qat, Export())), ("ptq", (Quantize(format="fp8"), Export()))):
        r = Recipe(name=name, model=get_arch("reference-llama"), source=HFCheckpoint(path=str(REFERENCE_DIR)),
                   stages=body, output_dir=str(tmp_path / name),
                   calibration=TextData(dataset="reference-train", num_samples=4, seq_length=SEQ, batch_size=4),
                   backend="megatron", device="cuda")
        plan = check_recipe(r, env=Environment.detect(), backend="megatron")
        plan.raise_first()
        plan = attrs.evolve(plan, device="cpu", dtype=DTYPE, output_dir=tmp_path / name / "out",
                            staging_dir=tmp_path / name / "s", progress=False)
        results.append(backend.run(r, plan).stages[-1].details)
    (qat_export, ptq_export), (qat_layers, ptq_layers) = results, seen
    snapped = qat_export["snapped_to_grid"]
    assert snapped["weights"] == {"fp8": len(qat_layers)} and snapped["values_beyond_range"] > 0
    assert not any(beyond or off for beyond, off in qat_layers.values()), qat_layers
    assert "snapped_to_grid" not in ptq_export  # PTQ: ModelOpt's export of the calibrated weights, as they are
    assert not any(beyond for beyond, _ in ptq_layers.values()) and any(off for _, off in ptq_layers.values())


def test_recipe_named_teacher_then_finetune(dist_cpu, tmp_path, gpu_env):
    """A teacher named by its checkpoint (built and loaded for the stage), then a stage with no teacher."""
    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.runtime.data import REFERENCE_DIR
    from modelopt_typed_recipes.runtime.megatron import backend
    from modelopt_typed_recipes.spec.recipe import HFCheckpoint, Recipe
    from modelopt_typed_recipes.spec.techniques import Distill

    kw = dict(steps=2, micro_batch_size=2, seq_length=SEQ, learning_rate=1e-5)
    r = Recipe(name="named", model=get_arch("reference-llama"), source=HFCheckpoint(path=str(REFERENCE_DIR)),
               stages=(Distill(teacher=HFCheckpoint(path=str(REFERENCE_DIR)), **kw),
                       Distill(teacher="none", skip_lm_loss=False, **kw)),
               calibration=TextData(dataset="reference-train", num_samples=4, seq_length=SEQ, batch_size=4),
               output_dir=str(tmp_path / "o"), backend="megatron", device="cuda")
    plan = check_recipe(r, env=Environment.detect(), backend="megatron")
    plan.raise_first()
    plan = attrs.evolve(plan, device="cpu", dtype=DTYPE, output_dir=tmp_path / "out", staging_dir=tmp_path / "s",
                        progress=False)
    named, finetune = backend.run(r, plan).stages
    assert named.details["teacher"]["teacher"] == "HFCheckpoint" and named.details["teacher"]["arch"]
    assert named.details["loss_first"] < 1e-3  # the student starts as its teacher: KL ~ 0
    assert finetune.details["teacher"] == {"teacher": "none"} and 1 < finetune.details["loss_first"] < 10


@pytest.mark.parametrize("kind", ["tp", "dp"])
def test_two_processes_match_one(dist_cpu, tmp_path, kind):
    """TP=2 (logits KL reduced over the vocabulary shards, norm counted once per duplicate) gives the losses and
    gradient norms of TP=1; DP=2 (each replica half of a global micro-batch, gradients averaged) gives the
    gradient norms of one process with the whole micro-batch; both report the tokens the whole run trained on."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from _distill_worker import run
    from modelopt_typed_recipes.runtime.distributed import free_port

    out = tmp_path / "curve.json"
    worker = Path(__file__).resolve().parent / "_distill_worker.py"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), str(worker), kind, str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(out.read_text())
    one = run("one", 2 if kind == "tp" else 4)
    assert two["tokens"] == one["tokens"] == 2 * (2 if kind == "tp" else 4) * (SEQ - 1)
    for a, b in zip(two["curve"], one["curve"], strict=True):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        if kind == "tp":
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
