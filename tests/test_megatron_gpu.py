"""GPU tests of the Megatron-Core backend (run on the H100 machine: ``pytest -m gpu tests/test_megatron_gpu.py``)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("fmt,export", [("fp8", True), ("nvfp4", True), ("int4_awq", False), ("mxfp8", False)])
def test_tiny_dense_through_backend(tmp_path, fmt, export):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import megatron_gpu as G

    hf = G.write_hf_checkpoint("tiny-dense", tmp_path / "hf")
    recipe = G.make_recipe(G.arch_for("tiny-dense"), hf, dict(format=fmt), export=export, out=tmp_path / "out",
                           tag=f"gpu-{fmt}", samples=8, seq=128)
    res = G.run_recipe(recipe)
    assert res.stages[0].quantizer_summary["weight"] == 8
    assert abs(res.metrics["perplexity_after"] / res.metrics["perplexity_before"] - 1) < 0.05
    if export:
        edir = next(p for p in (tmp_path / "out").iterdir() if p.name.endswith("export-hf"))
        facts = G.check_export(edir, hf, fmt)
        assert facts["same_shape_config"] and facts["norms_embed_equal"] and not facts["missing_weights"]
        assert facts["quant_algo"] == fmt.upper()
