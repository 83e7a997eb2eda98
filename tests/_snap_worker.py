"""Test helper, started by tests/test_snap_ranks.py (gloo, one process per rank): the export's snap onto the grid
(``snap_to_grid(model, counts_here=distributed.counts_here)``, as ``runtime/megatron/steps.py`` calls it) of one
quantized tiny-moe, held whole by one process or split over two ranks in several layouts.

``python tests/_snap_worker.py save CKPT OUT.json`` (one process): tiny-moe built and quantized (FP8, calibrated
on the CPU), its weights grown past their calibrated ranges (what training does), saved as a Megatron distributed
checkpoint in CKPT; then snapped: OUT.json holds the figures.

``python tests/_snap_worker.py load CKPT OUT.json LAYOUT...`` (each rank): for each layout (``tp2``, ``tp2-etp1``,
``pp2``, ``ep2``, ``dp2``), the checkpoint loaded into a model built for it and snapped twice: ``whole`` (the rule)
and ``naive`` (every rank counts all it holds), the weights put back between the two. Rank 0 writes OUT.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYOUTS = {"one": {}, "tp2": {"tensor_parallel": 2}, "tp2-etp1": {"tensor_parallel": 2, "expert_tensor_parallel": 1},
           "pp2": {"pipeline_parallel": 2}, "ep2": {"expert_parallel": 2, "data_parallel": 2},
           "dp2": {"data_parallel": 2}}
"""Each layout's sizes: ``tp2-etp1`` copies the experts on both ranks, ``ep2`` the dense weights, ``dp2`` all."""

GROW = 1.25
"""Each quantized weight times this: the largest values lie beyond their quantizer's range."""


def _model(layout_name: str):
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime import distributed
    from modelopt_typed_recipes.runtime.megatron import build
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    layout = ParallelLayout(**LAYOUTS[layout_name])
    distributed.set_layout(layout, device="cpu")
    return build.build_model(get_arch("tiny-moe"), layout, dtype="fp32", device="cpu", spec="local")


def save(ckpt: Path) -> dict:
    import torch
    from megatron.core.transformer.moe import moe_utils

    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.plan.techniques.quantize import quantize_config
    from modelopt_typed_recipes.runtime import distributed
    from modelopt_typed_recipes.runtime.megatron import build, stages
    from modelopt_typed_recipes.runtime.quant_grid import snap_to_grid
    from modelopt_typed_recipes.spec.techniques import Quantize

    # megatron-core 0.16's router names Transformer Engine's GEMM even where TE is absent; None picks torch's
    moe_utils.te_general_gemm = getattr(moe_utils, "te_general_gemm", None)
    torch.manual_seed(0)
    model = _model("one")
    stage = Quantize(format="fp8")
    config = quantize_config(stage)[0].config
    # two formats: the attention weights INT8 per output channel (a tensor-parallel rank holds its channels of QKV)
    config["quant_cfg"].insert(3, {"quantizer_name": "*self_attention*weight_quantizer",
                                   "cfg": {"num_bits": 8, "axis": 0}})
    tokens = torch.randint(0, 1024, (4, 32), generator=torch.Generator().manual_seed(1))
    stages.quantize(model, stage, [tokens], progress=False, config=config)
    with torch.no_grad():
        for m in model.modules():
            q = getattr(m, "weight_quantizer", None)
            if q is not None and q.is_enabled and getattr(m, "weight", None) is not None:
                m.weight.mul_(GROW)
    build.save_checkpoint(model, ckpt, arch=get_arch("tiny-moe"), checks=False)
    return snap_to_grid(model, counts_here=distributed.counts_here)


def load(ckpt: Path, layouts: list[str]) -> dict:
    import torch

    from modelopt_typed_recipes.runtime import distributed
    from modelopt_typed_recipes.runtime.megatron import build
    from modelopt_typed_recipes.runtime.quant_grid import snap_to_grid

    out = {}
    for name in layouts:
        model = build.load_checkpoint(_model(name), ckpt, checks=False)
        kept = {n: p.detach().clone() for n, p in model.named_parameters()}
        naive = snap_to_grid(model, counts_here=lambda module, weight: (True, True))
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(kept[n])
        whole = snap_to_grid(model, counts_here=distributed.counts_here)
        out[name] = {"whole": whole, "naive": naive}
    return out


def main() -> None:
    import torch.distributed as dist

    from megatron_cpu_shim import megatron_on_cpu
    from modelopt_typed_recipes.runtime import distributed

    what, ckpt, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    distributed.init_process_group(device="cpu")
    with megatron_on_cpu():
        figures = save(ckpt) if what == "save" else load(ckpt, sys.argv[4:])
    if dist.get_rank() == 0:
        out.write_text(json.dumps(figures))
    distributed.shutdown()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
