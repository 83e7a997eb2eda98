"""GPU: distillation on the Hugging Face backend on CUDA, with the shipped reference-llama and real text.

Run on the GPU machine: ``python -m pytest -q -m gpu -s tests/test_distill_hf_gpu.py`` (about a minute on an
H200). The CUDA counterpart of tests/test_distill_hf.py: NVFP4 (which needs CUDA) PTQ, then QAD from the model
before quantization, then the unified HF export re-loaded from disk, against the same recipe without the
distill stage; FP8 then ``teacher: none`` (QAT on the LM loss) with its FP8 export; a named teacher with
intermediate-layer pairs. Each case prints one JSON line (``{"case": ...}``) with its figures for
benchmarks/distill.md. Training text: ``reference-train`` (the model's own training split); held-out
perplexity: ``reference-heldout``, 32 windows of 256 tokens (the windows of benchmarks/distill.md's Megatron-Core
table, so the two backends' rows compare). The test on the CPU checks every recipe here as the GPU run will.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

CALIBRATION = {"dataset": "reference-train", "num_samples": 64, "seq_length": 256, "batch_size": 8}
EVALUATION = {"dataset": "reference-heldout", "num_samples": 32, "seq_length": 256, "batch_size": 8}
# benchmarks/distill.md's Megatron-Core QAD settings (benchmarks/distill_gpu.py): micro-batches of 16 windows of
# 256 tokens, lr 1e-5 cosine with 5 % warm-up to a tenth, clipping at 1.0, logits KL only
QAD_STEPS = 300
QAD = {"technique": "distill", "teacher": "before_compression", "data": {"dataset": "reference-train"},
       "steps": QAD_STEPS, "micro_batch_size": 16, "seq_length": 256, "learning_rate": 1e-5,
       "min_learning_rate": 1e-6, "warmup_steps": QAD_STEPS // 20, "clip_grad": 1.0}
QAT = {"technique": "distill", "teacher": "none", "skip_lm_loss": False, "data": {"dataset": "reference-heldout"},
       "steps": 40, "micro_batch_size": 8, "seq_length": 256, "learning_rate": 3e-4, "lr_schedule": "constant"}
NAMED = {"technique": "distill", "teacher": "builtin", "steps": 20, "micro_batch_size": 8, "seq_length": 256,
         "learning_rate": 1e-5, "skip_lm_loss": False, "kd_loss_scale": 0.5,
         "intermediate_layer_pairs": [["model.layers.2", "model.layers.2", "mse"],
                                      ["model.layers.4", "model.layers.4"]]}

# How far the re-loaded export may be from the model in memory. The QAD student is given the export's grid before
# it trains (distill.align_with_export), so what is left is arithmetic: the model in memory computes in bf16 with
# fake quantization, the re-load decodes the stored values and scales and quantizes its inputs itself. NVFP4: the
# PTQ export re-loaded at +0.32 % on this backend on an H200 (benchmarks/raw/session4/gpu_tests.log) and the
# Megatron-Core QAD exports within -0.33 .. +0.31 % (benchmarks/distill.md); 0.75 % is over twice that, and still
# below what NVFP4 PTQ costs (+1.15 % there), so an export of the untrained weights shows. FP8: +0.05 % measured,
# 0.5 % as tests/test_hf_export_gpu.py allows.
EXPORT_TOLERANCE_PCT = {"nvfp4": 0.75, "fp8": 0.5}


def recipe(out: Path, *stages: dict[str, Any], device: str = "cuda") -> dict[str, Any]:
    return {"model": "reference-llama", "source": "builtin", "stages": list(stages), "output_dir": str(out),
            "backend": "hf", "device": device, "calibration": dict(CALIBRATION), "evaluation": dict(EVALUATION)}


def bodies(fmt: str = "nvfp4") -> dict[str, list[dict[str, Any]]]:
    """Every recipe's stages here, by case (the CPU test checks them all)."""
    q, e = {"technique": "quantize", "format": fmt}, {"technique": "export"}
    return {"ptq": [q, e], "qad": [q, dict(QAD), e],
            "qat": [{"technique": "quantize", "format": "fp8"}, dict(QAT), e],
            "named": [{"technique": "quantize", "format": "fp8"}, dict(NAMED)]}


def figures(case: str, result: Any, **extra: Any) -> dict[str, Any]:
    """The case's JSON line: perplexities, the distill stage's training figures, seconds and peak GPU memory."""
    d = result.stage("distill")
    det = d.details
    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    row = {"case": case, "device": where, **extra,
           "perplexity_before": result.metrics.get("perplexity_before"),
           "perplexity_before_distill": det.get("perplexity_before_stage"),
           "perplexity_after_distill": det.get("perplexity_after_stage"),
           "perplexity_export": result.metrics.get("perplexity_export"),
           "steps": det["steps"], "tokens": det["tokens"], "train_seconds": round(det["train_seconds"], 3),
           "tokens_per_second": round(det["tokens_per_second"]), "loss_first": det["loss_first"],
           "loss_last": det["loss_last"], "precision": det["precision"],
           "stage_seconds": {s.name: round(s.seconds, 3) for s in result.stages},
           "stage_peak_gib": {s.name: round((s.peak_memory_bytes or 0) / 2**30, 3) for s in result.stages},
           "run_seconds": round(result.seconds, 3),
           "timings": {k: round(v, 3) for k, v in result.timings.items()}}
    print(json.dumps(row), flush=True)
    return row


def gap_pct(ppl: float, base: float) -> float:
    return (ppl / base - 1) * 100


def test_the_gpu_recipes_pass_check_on_this_machine() -> None:
    """CPU (runs in CI): every recipe the GPU tests run passes ``check`` for the HF backend as on a CUDA
    machine, so a GPU call is not spent on a recipe error."""
    import attrs

    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.runtime.api import load_recipe

    env = attrs.evolve(Environment.detect(), cuda=True, gpu_count=1)
    for case, stages in bodies().items():
        report = check_recipe(load_recipe(recipe(Path("/tmp/unused") / case, *stages)), env=env, backend="hf")
        assert report.ok, (case, [str(e) for e in report.errors])
        assert report.backend == "hf"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvfp4_qad_wins_back_part_of_the_ptq_loss_and_the_export_keeps_it(tmp_path: Path) -> None:
    """NVFP4 PTQ -> export against NVFP4 PTQ -> QAD (300 steps) -> export, both re-loaded from disk."""
    from modelopt_typed_recipes.runtime.api import run_post_training

    b = bodies("nvfp4")
    ptq_run = run_post_training(recipe(tmp_path / "ptq", *b["ptq"]), progress=False)
    result = run_post_training(recipe(tmp_path / "qad", *b["qad"]), progress=False)
    d = result.stage("distill")
    det = d.details
    base = result.metrics["perplexity_before"]
    ptq, qad = det["perplexity_before_stage"], det["perplexity_after_stage"]
    ptq_export, qad_export = ptq_run.metrics["perplexity_export"], result.metrics["perplexity_export"]
    row = figures("hf-nvfp4-qad", result, ptq_export=ptq_export, gap_ptq_pct=round(gap_pct(ptq, base), 3),
                  gap_qad_pct=round(gap_pct(qad, base), 3), gap_ptq_export_pct=round(gap_pct(ptq_export, base), 3),
                  gap_qad_export_pct=round(gap_pct(qad_export, base), 3),
                  export_vs_memory_pct=round(gap_pct(qad_export, qad), 3))

    # the QAD run starts from the PTQ run's model: the same calibration, the same quantizers
    assert ptq == pytest.approx(ptq_run.metrics["perplexity_after"], rel=1e-3)
    assert base < ptq, (base, ptq)  # NVFP4 costs something to win back
    # distillation wins back at least a third of the NVFP4 gap (Megatron-Core: 77 % with these settings)
    assert qad < ptq and qad - base <= (ptq - base) * 2 / 3, row
    assert result.metrics["perplexity_after"] == pytest.approx(qad)
    # the export holds the trained, quantized weights: re-loaded from disk it computes what the model in memory
    # computes, and beats the PTQ export re-loaded the same way
    assert abs(gap_pct(qad_export, qad)) <= EXPORT_TOLERANCE_PCT["nvfp4"], row
    assert qad_export < ptq_export, row
    assert (det["steps"], det["tokens"], det["teacher"]) == (QAD_STEPS, QAD_STEPS * 16 * 255, "before_compression")
    assert det["precision"] == "fp32 master weights, bf16 autocast"
    assert det["aligned_with_export"] and len(det["loss_curve"]) == 11
    # the per-token KL of an NVFP4 student to its own bf16 weights: small, positive, finite
    assert all(0 < x < 1 for x in det["loss_curve"]), det["loss_curve"]
    assert det["tokens_per_second"] > 0 and 0 < (d.peak_memory_bytes or 0) < 16 * 2**30
    assert result.stage("export").details["reloaded_layers"].get("nvfp4", 0) > 0
    cfg = json.loads((Path(result.output_dir) / "export" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_algo"] == "NVFP4"
    manifest = json.loads((Path(result.output_dir) / "manifest.json").read_text())
    assert [s["technique"] for s in manifest["result"]["stages"]] == ["quantize", "distill", "export"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp8_then_teacher_none_trains_on_the_lm_loss_and_exports_it(tmp_path: Path) -> None:
    """FP8 PTQ, then quantization-aware training on the LM loss of the held-out text itself (no teacher), then
    the FP8 export: the held-out perplexity must fall (a finetune that learns), on disk too."""
    from modelopt_typed_recipes.runtime.api import run_post_training

    result = run_post_training(recipe(tmp_path / "qat", *bodies()["qat"]), progress=False)
    stage = result.stage("distill")
    det = stage.details
    before, after = det["perplexity_before_stage"], det["perplexity_after_stage"]
    exported = result.metrics["perplexity_export"]
    row = figures("hf-fp8-teacher-none", result, export_vs_memory_pct=round(gap_pct(exported, after), 3))
    assert stage.name == "finetune-40steps" and det["teacher"] == "none" and "loss_parts_first" not in det
    # the first step's loss is the LM loss of the FP8 model on held-out text: ln(41) = 3.7
    assert 2.0 < det["loss_first"] < 6.0 and math.isfinite(det["loss_last"])
    # 40 x 8 windows: 2.6 passes over the 123 held-out windows (the 32 measured among them) at 3e-4: a clear fall
    assert after < 0.95 * before, row
    assert abs(gap_pct(exported, after)) <= EXPORT_TOLERANCE_PCT["fp8"], row
    assert result.stage("export").details["reloaded_layers"].get("fp8", 0) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_named_teacher_and_intermediate_pairs_on_cuda(tmp_path: Path) -> None:
    """A teacher loaded from the shipped weights onto the GPU, MSE and cosine intermediate pairs, the LM loss."""
    from modelopt_typed_recipes.runtime.api import run_post_training

    result = run_post_training(recipe(tmp_path / "named", *bodies()["named"]), progress=False)
    det = result.stage("distill").details
    figures("hf-fp8-named-teacher", result)
    assert det["teacher"] == "builtin:builtin"
    for parts in (det["loss_parts_first"], det["loss_parts_last"]):
        assert parts["logits_loss"] >= 0 and parts["intermediate_loss"] > 0 and parts["lm_loss"] > 0, parts
        assert all(math.isfinite(v) for v in parts.values()), parts
    # 20 steps at 1e-5 from the model's own weights: a trained model, not a broken one
    assert abs(det["perplexity_after_stage"] / det["perplexity_before_stage"] - 1) < 0.05, det
    saved = Path(result.output_dir) / result.stage("distill").outputs[0] / "modelopt_model.pth"
    assert saved.is_file()
