"""GPU tests of distillation on the Megatron-Core backend (run on the GPU machine:
``pytest -m gpu -s tests/test_megatron_distill_gpu.py``): short runs of the recipes benchmarks/distill_gpu.py
measures at length, and FP8 QAT then the export of the trained weights (the case ``runtime.quant_grid`` exists
for). The one CPU test checks the FP8 QAT recipe as the GPU run will."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# tests/test_distill_hf_gpu.py's FP8 QAT case on this backend: 40 steps of 8 windows of 256 tokens of the held-out
# text itself at a constant 3e-4, the language-model loss only. Adam moves every weight by about the learning rate
# a step, so the largest weights leave the range calibrated before training, which FP8 export has to survive.
QAT_STEPS, QAT_LR = 40, 3e-4
# FP8 export against the model in memory: the stored codes are the in-memory codes (snapped), so what is left is
# the arithmetic of two bf16 forwards (Megatron-Core's with fake quantization, transformers' over the decoded
# weights); tests/test_hf_export_gpu.py and tests/test_distill_hf_gpu.py allow 0.5 % (measured there: +0.05 %,
# -0.03 %).
FP8_EXPORT_TOLERANCE_PCT = 0.5


def fp8_qat_stages() -> tuple:
    from modelopt_typed_recipes.spec.techniques import Distill, Export, Quantize
    from modelopt_typed_recipes.spec.text import TrainingText

    qat = Distill(teacher="none", skip_lm_loss=False, data=TrainingText(dataset="reference-heldout"), seq_length=256,
                  micro_batch_size=8, steps=QAT_STEPS, learning_rate=QAT_LR, lr_schedule="constant")
    return Quantize(format="fp8"), qat, Export()


def non_finite_tensors(export_dir: Path) -> tuple[list[str], int]:
    """The names of the exported tensors holding a NaN or an infinity, and how many FP8 tensors were read."""
    from safetensors import safe_open

    bad, fp8 = [], 0
    for f in sorted(export_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open is no mapping: it has keys() but no __iter__
                t = st.get_tensor(name)
                fp8 += t.dtype == torch.float8_e4m3fn
                if t.is_floating_point() and not bool(torch.isfinite(t.float()).all()):
                    bad.append(name)
    return bad, fp8


def test_the_fp8_qat_recipe_passes_check_for_a_gpu():
    """CPU (runs in CI): the recipe of test_fp8_qat_past_the_calibrated_ranges_exports_finite_weights passes
    ``check`` for the Megatron-Core backend as on the GPU machine, so a GPU call is not spent on a recipe error."""
    import attrs

    import distill_gpu as G
    from modelopt_typed_recipes.plan.check import Environment, check_recipe

    env = attrs.evolve(Environment.detect(), megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=1)
    report = check_recipe(G.recipe("gpu-fp8-qat", fp8_qat_stages(), Path("/tmp/unused")), env=env, backend="megatron")
    assert report.ok, [str(e) for e in report.errors]
    assert [s.technique for s in report.stages] == ["quantize", "distill", "export"] and report.device == "cuda"


@gpu
@needs_cuda
def test_fp8_qat_past_the_calibrated_ranges_exports_finite_weights(tmp_path):
    """FP8 PTQ, QAT on the LM loss that moves weights past the ranges calibrated before it, the unified HF export:
    the export snaps the trained weights onto their quantizers' grid (ModelOpt 0.47 casts weight/scale to FP8
    unclamped, and PyTorch 2.11 makes a value beyond 448 NaN), so the files hold no NaN and, re-loaded from disk,
    compute what the distilled model in memory computed."""
    import distill_gpu as G

    t = time.perf_counter()
    out = tmp_path / "out"
    res = G.run_recipe(G.recipe("gpu-fp8-qat", fp8_qat_stages(), out))
    q, d, e = res.stages
    det = d.details
    before, after = det["perplexity_before_stage"], det["perplexity_after_stage"]
    snapped = e.details.get("snapped_to_grid", {})
    edir = next(p for p in out.iterdir() if p.name.endswith("export-hf"))
    bad, fp8_tensors = non_finite_tensors(edir)
    disk, counts = G.export_perplexity(edir)
    row = {"case": "megatron-fp8-teacher-none", "device": torch.cuda.get_device_name(0),
           "perplexity_before": res.metrics.get("perplexity_before"), "perplexity_before_distill": before,
           "perplexity_after_distill": after, "perplexity_after_export": res.metrics.get("perplexity_after"),
           "perplexity_export_reloaded": disk, "export_vs_memory_pct": round(100 * (disk / after - 1), 3),
           "snapped_to_grid": snapped, "fp8_tensors": fp8_tensors, "non_finite_tensors": bad[:8],
           "reloaded_layers": counts, "steps": det["steps"], "tokens": det["tokens"],
           "train_seconds": round(det["train_seconds"], 3), "loss_first": det["loss_first"],
           "loss_last": det["loss_last"], "stage_seconds": {s.name: round(s.seconds, 3) for s in res.stages},
           "wall_s": round(time.perf_counter() - t, 1)}
    print(json.dumps(row, default=str), flush=True)

    assert d.quantizer_summary == q.quantizer_summary and q.quantizer_summary["weight"] > 0
    assert det["teacher"] == {"teacher": "none"} and (det["steps"], det["tokens"]) == (QAT_STEPS, QAT_STEPS * 8 * 255)
    assert math.isfinite(det["loss_last"]) and after < 0.95 * before, row  # it trained (HF backend: 41.1 -> 14.2)
    # the export really met weights beyond their ranges: the case the snap exists for, not a PTQ-like export
    assert snapped.get("weights", {}).get("fp8", 0) > 0 and snapped["values_beyond_range"] > 0, row
    # snapping changes no code the model computes with
    assert res.metrics["perplexity_after"] == pytest.approx(after, rel=1e-3), row
    assert fp8_tensors > 0 and counts.get("fp8", 0) > 0 and not bad, row
    assert abs(disk / after - 1) * 100 <= FP8_EXPORT_TOLERANCE_PCT, row


@gpu
@needs_cuda
def test_nvfp4_qad_exports_what_it_computes(tmp_path):
    import distill_gpu as G
    from modelopt_typed_recipes.spec.techniques import Export, Quantize

    out = tmp_path / "out"
    res = G.run_recipe(G.recipe("gpu-qad", (Quantize(format="nvfp4"), G.distill_stage(30, 1e-5), Export()), out))
    q, d, _e = res.stages
    assert d.quantizer_summary == q.quantizer_summary and q.quantizer_summary["weight"] > 0
    assert d.details["teacher"]["kept_before"] == q.name and d.details["steps"] == 30
    assert all(0 < x < 1 for x in d.details["loss_curve"])  # the KL of an NVFP4 student to its bf16 self
    ppl = res.metrics["perplexity_after"]
    assert abs(ppl / d.details["perplexity_before_stage"] - 1) < 0.05
    edir = next(p for p in out.iterdir() if p.name.endswith("export-hf"))
    disk, counts = G.export_perplexity(edir)
    assert counts.get("nvfp4", 0) > 0
    assert abs(disk / ppl - 1) < 0.02  # the file on disk computes what the distilled model in memory computed


@gpu
@needs_cuda
def test_minitron_depth_prune_then_distill(tmp_path):
    """Needs Transformer Engine (ModelOpt's mcore_minitron mode registers only with it)."""
    import distill_gpu as G
    from modelopt_typed_recipes.runtime.megatron import stages
    from modelopt_typed_recipes.spec.techniques import Export, Prune

    if not stages.minitron_available():
        pytest.skip("Transformer Engine is not installed: ModelOpt's mcore_minitron mode is absent")
    out = tmp_path / "out"
    res = G.run_recipe(G.recipe("gpu-minitron", (Prune(num_layers=4), G.distill_stage(60, 3e-4), Export()), out))
    p, d, _e = res.stages
    assert d.details["after_prune"] and d.details["teacher"]["kept_before"] == p.name
    assert res.metrics["perplexity_after"] < d.details["perplexity_before_stage"]  # distillation recovers some loss
    edir = next(x for x in out.iterdir() if x.name.endswith("export-hf"))
    disk, _ = G.export_perplexity(edir)
    assert abs(disk / res.metrics["perplexity_after"] - 1) < 0.02
