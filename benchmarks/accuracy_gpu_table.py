#!/usr/bin/env python3
"""Render benchmarks/accuracy_gpu.md's table and accuracy_gpu.png from the raw JSON an H100 run wrote.

The raw file comes from `bash benchmarks/gpu_megatron.sh prewarm-parallel accuracy` on the GPU machine
($OUT/megatron_accuracy.json, copied to benchmarks/raw/). DEVICE labels the plot.

    .venv/bin/python benchmarks/accuracy_gpu_table.py [RAW.json [DEVICE]]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {"fp8": 1.0, "int8_sq": 2.0, "nvfp4": 8.0, "int4_awq": 10.0}


def main() -> None:
    raw = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "raw" / "megatron_accuracy_h200_shared_loader.json"
    device = sys.argv[2] if len(sys.argv) > 2 else "H200"
    rows = json.loads(raw.read_text())["rows"]
    lines = ["| format | ppl before | ppl after | change | target | met | seconds |", "|---|---:|---:|---:|---:|:---:|---:|"]
    changes = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['format']} | - | - | error: {r['error']} | - | - | - |")
            continue
        change = 100 * (r["ppl_after"] / r["ppl_before"] - 1)
        changes.append((r["format"], change))
        target = TARGETS.get(r["format"])
        met = "-" if target is None else ("yes" if change <= target else "**no**")
        tgt = "-" if target is None else f"<= +{target:g} %"
        lines.append(
            f"| {r['format']} | {r['ppl_before']:.3f} | {r['ppl_after']:.3f} | {change:+.2f} % | {tgt} | {met} | {r['seconds']} |"
        )
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [n for n, _ in changes]
    ax.bar(names, [c for _, c in changes], color="#76b900")
    for i, n in enumerate(names):
        if n in TARGETS:
            ax.plot([i - 0.4, i + 0.4], [TARGETS[n]] * 2, color="k", lw=1, ls="--")
    ax.set_ylabel("held-out perplexity change (%)")
    ax.set_title(f"reference-llama, Megatron-Core backend on {device} (dashed: target)")
    ax.axhline(0, color="grey", lw=0.5)
    fig.tight_layout()
    fig.savefig(HERE / "accuracy_gpu.png", dpi=120)


if __name__ == "__main__":
    main()
