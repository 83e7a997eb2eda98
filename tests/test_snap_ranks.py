"""The export's snap onto the grid counts the whole model when ranks hold its parts (``snap_to_grid`` with
``distributed.counts_here``, as the Megatron-Core export step calls it).

One quantized tiny-moe (FP8, its attention weights INT8 per channel; weights grown past their ranges) is snapped
by one process, then loaded on two gloo ranks split five ways: TP2 (dense and expert weights split along the
tensor), TP2 with expert-TP 1 (experts copied on both ranks), PP2 (layers split), EP2 (experts split, dense weights
copied) and DP2 (all copied, as an export on more ranks than pipeline stages runs). Every split reports the one
process's figures; counting all that each rank holds (``naive``) would not, wherever a weight is copied.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _ranks import launch_ranks

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("tp2", "tp2-etp1", "pp2", "ep2", "dp2")


def _worker(what: str, ckpt: Path, out: Path, ranks: int, *splits: str) -> dict:
    done = launch_ranks(["tests/_snap_worker.py", what, str(ckpt), str(out), *splits], ranks, cwd=ROOT, timeout=600,
                        OMP_NUM_THREADS="1")
    for proc in done:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_split_models_report_the_one_process_figures_each_weight_counted_once(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    one = _worker("save", ckpt, tmp_path / "one.json", 1)
    # 2 layers: 8 experts x (fc1, fc2) in FP8, (QKV, proj) in INT8 per channel
    assert one["weights"] == {"fp8": 32, "int8": 4} and one["values_beyond_range"] > 0
    two = _worker("load", ckpt, tmp_path / "two.json", 2, *SPLITS)
    assert {name: two[name]["whole"] for name in SPLITS} == dict.fromkeys(SPLITS, one)
    naive = {name: two[name]["naive"] for name in SPLITS}
    assert naive["pp2"] == one  # nothing copied: each rank's part is its own
    assert naive["dp2"] == {"weights": {"fp8": 64, "int8": 8}, "values_beyond_range": 2 * one["values_beyond_range"]}
    # TP2: each weight split in two, counted on both ranks; its values once. Expert TP 1: the experts copied too
    assert naive["tp2"] == {**one, "weights": {"fp8": 64, "int8": 8}}
    assert naive["tp2-etp1"]["weights"] == {"fp8": 64, "int8": 8}
    assert naive["tp2-etp1"]["values_beyond_range"] > one["values_beyond_range"]
    # EP2: the experts split (FP8 counted once), the dense weights copied (INT8 twice, their values too)
    assert naive["ep2"]["weights"] == {"fp8": 32, "int8": 8}
    assert naive["ep2"]["values_beyond_range"] > one["values_beyond_range"]


def test_one_process_counts_every_weight_it_holds_without_torch_distributed() -> None:
    """No process group: ``counts_here`` counts every weight and value, and nothing is reduced."""
    import copy

    import modelopt.torch.quantization as mtq
    import torch.distributed as dist

    from modelopt_typed_recipes.runtime import distributed
    from modelopt_typed_recipes.runtime.quant_grid import snap_to_grid

    if dist.is_initialized() and dist.get_world_size() > 1:  # pragma: no cover - pytest runs one process
        pytest.skip("a process group of several ranks is running")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False), torch.nn.Linear(32, 16, bias=False))
    mtq.quantize(model, copy.deepcopy(mtq.FP8_DEFAULT_CFG), lambda m: m(torch.randn(4, 64)))
    with torch.no_grad():
        for layer in model:
            layer.weight.mul_(1.25)
    twin = copy.deepcopy(model)
    assert distributed.counts_here(model[0], model[0].weight) == (True, True)
    report = snap_to_grid(model, counts_here=distributed.counts_here)
    assert report == snap_to_grid(twin) and report["weights"] == {"fp8": 2} and report["values_beyond_range"] > 0
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(model, twin, strict=True))
