"""Compare the memory plan's per-rank predictions with peaks measured on H100 (one command, CPU only):

    .venv/bin/python benchmarks/memory_plan.py [benchmarks/memory_plan_raw.jsonl]

Reads the raw measurements written by ``memory_plan_measure.py`` on the GPU machine, predicts each one
with ``modelopt_typed_recipes.plan.memory.estimate`` (stage ``prune`` = a bf16 calibration forward,
``quantize`` = the FP8 calibration/fake-quant forward) and prints, per model size and layout, measured
and predicted GiB and their ratio, then the median |error|. Writes ``benchmarks/memory_plan.json``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from memory_plan_measure import BATCH, SEQ, arch_for
from modelopt_typed_recipes.plan import memory
from modelopt_typed_recipes.plan.gpus import get_gpu
from modelopt_typed_recipes.spec.layout import ParallelLayout

GIB = 1024**3


def predictions(size: str, tp: int, model: memory.MemoryModel = memory.DEFAULT_MODEL) -> dict[str, int]:
    arch = arch_for(size)
    layout = ParallelLayout(tensor_parallel=tp)  # measured without SP: the local spec cannot run it
    gpu = get_gpu("h100-80gb")
    fwd = memory.estimate(arch, layout, gpu, stage="prune", batch=BATCH, seq_length=SEQ, model=model)
    q = memory.estimate(arch, layout, gpu, stage="quantize", batch=BATCH, seq_length=SEQ, quant_format="fp8",
                        model=model)
    return {"weights": fwd.terms["weights"], "forward": fwd.per_rank_bytes, "quantize": q.per_rank_bytes}


def main(path: str) -> int:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rank0 = [r for r in rows if r["rank"] == 0]
    out = []
    print(f"{'model':>6} {'TP':>3} {'what':>20} {'measured':>10} {'+buffer':>9} {'predicted':>10} {'pred/meas':>9}")
    errors = []
    seen_tp: set[int] = set()
    for r in rank0:
        pred = predictions(r["size"], r["tp"])
        # Megatron's GlobalMemoryBuffer keeps the bf16 attention-score buffer for the life of the process; the
        # second model measured in a process reuses the first one's, so its peak lacks that buffer
        heads = arch_for(r["size"]).attention.num_heads // r["tp"]
        buffer = 0 if r["tp"] not in seen_tp else r["batch"] * heads * r["seq"] * r["seq"] * 2
        seen_tp.add(r["tp"])
        peak_quant = max(r["calibrate"], r["fake_quant_forward"])
        for what, meas, extra, p in (("weights", r["weights"], 0, pred["weights"]),
                                     ("bf16 forward peak", r["forward"], buffer, pred["forward"]),
                                     ("fp8 quantize peak", peak_quant, buffer, pred["quantize"])):
            ratio = p / (meas + extra)
            errors.append(abs(ratio - 1))
            print(f"{r['size']:>6} {r['tp']:>3} {what:>20} {meas / GIB:>9.3f}G {extra / GIB:>8.3f}G "
                  f"{p / GIB:>9.3f}G {ratio:>9.3f}")
            out.append({"size": r["size"], "tp": r["tp"], "what": what, "measured_bytes": meas,
                        "reused_buffer_bytes": extra, "predicted_bytes": p, "ratio": round(ratio, 4),
                        "gpu": r.get("gpu"), "fp8_kernel": r.get("fp8_kernel")})
    print(f"median |pred/meas - 1| = {statistics.median(errors):.3f}; max = {max(errors):.3f}; n = {len(errors)}")
    (HERE / "memory_plan.json").write_text(json.dumps({"batch": BATCH, "seq": SEQ, "rows": out,
                                                       "median_abs_error": statistics.median(errors),
                                                       "max_abs_error": max(errors)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else str(HERE / "memory_plan_raw.jsonl")))
