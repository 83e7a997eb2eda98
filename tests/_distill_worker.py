"""Test helper, started by tests/test_megatron_distill.py under ``torch.distributed.run`` with 2 CPU processes
(gloo): two steps of ``runtime.megatron.distill`` at TP=2 or DP=2; rank 0 writes the loss curve as JSON.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/_distill_worker.py {tp|dp} OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(layout_kind: str, micro_batch_size: int) -> dict:
    """Two steps of distilling a perturbed reference-llama into its teacher (same inputs on every layout): the
    loss curve and the tokens the run reports."""
    import torch

    import test_megatron_distill as T
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime.data import REFERENCE_DIR
    from modelopt_typed_recipes.runtime.megatron import build
    from modelopt_typed_recipes.runtime.megatron import distill as md
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    layout = ParallelLayout(tensor_parallel=2) if layout_kind == "tp" else ParallelLayout()

    def model():
        m = build.build_model(get_arch("reference-llama"), layout, dtype="fp32", device="cpu", spec="local")
        build.import_hf(m, str(REFERENCE_DIR), dtype="fp32")
        return m

    teacher, student = model(), model()
    with torch.no_grad():  # a student that differs from its teacher the same way on every layout
        for name, p in student.named_parameters():
            if ".layers.2." in name or ".layers.3." in name:
                p.mul_(0.5)
    train = md.Training(steps=2, micro_batch_size=micro_batch_size, learning_rate=1e-4, lr_schedule="constant")
    _, report = md.distill(student, teacher, T._windows("reference-train", 8), train, md.KDLoss())
    return {"curve": [{"loss": r["loss"], "grad_norm": r["grad_norm"]} for r in report["curve"]],
            "tokens": report["tokens"]}


def main() -> None:
    import torch.distributed as dist

    from megatron_cpu_shim import megatron_on_cpu
    from modelopt_typed_recipes.runtime import distributed
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    kind, out = sys.argv[1], Path(sys.argv[2])
    distributed.init_process_group(device="cpu")
    distributed.set_layout(ParallelLayout(tensor_parallel=2) if kind == "tp" else ParallelLayout(), device="cpu")
    with megatron_on_cpu():
        result = run(kind, 2)
    if dist.get_rank() == 0:
        out.write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
