"""GPU tests of distillation on the Megatron-Core backend (run on the GPU machine:
``pytest -m gpu tests/test_megatron_distill_gpu.py``): short runs of the recipes benchmarks/distill_gpu.py
measures at length."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


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
