"""ModelOpt's export packing of one real-size weight on the CPU, at several PyTorch thread counts.

ModelOpt's Megatron exporter moves each weight to the host (``.cpu()``) and packs it there with
``to_quantized_weight``; this times that call alone (FP8 and NVFP4) with ``torch.set_num_threads(N)`` for each N
given, and says how the CPU seconds spread over the threads (wall time on a shared machine varies; the spread
does not). It checks that every thread count gives the same bytes.

    .venv/bin/python benchmarks/cpu_pack.py --threads 1 2 --rows 4096 --cols 12288 --reps 3
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def per_thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each thread of this process (Linux /proc)."""
    out = {}
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[t] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=12288)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    from modelopt.torch.export.quant_utils import to_quantized_weight
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    weight = torch.randn(a.rows, a.cols, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    scale_2 = NVFP4QTensor.get_weights_scaling_factor_2(weight)
    scale, _ = NVFP4QTensor.get_weights_scaling_factor(weight, 16, scale_2)
    calls = {"fp8": (weight.abs().amax().float() / 448.0, "fp8"), "nvfp4": (scale, "nvfp4", scale_2, 16)}
    print(f"weight {a.rows}x{a.cols} bf16, {len(os.sched_getaffinity(0))} usable cores, load "
          f"{os.getloadavg()[0]:.2f}")
    first: dict[str, torch.Tensor] = {}
    for n in a.threads:
        torch.set_num_threads(n)
        for fmt, args in calls.items():
            to_quantized_weight(weight.clone(), *args)  # the pool's threads exist from here
            walls, spread = [], []
            for _ in range(a.reps):
                before = per_thread_cpu_s()
                t = time.perf_counter()
                packed = to_quantized_weight(weight.clone(), *args)
                walls.append(time.perf_counter() - t)
                spread = sorted((round(v - before.get(k, 0.0), 2) for k, v in per_thread_cpu_s().items()
                                 if v - before.get(k, 0.0) >= 0.01), reverse=True)
            same = first.setdefault(fmt, packed).view(torch.uint8).equal(packed.view(torch.uint8))
            print(f"threads={n} {fmt}: wall best {min(walls):.2f} s (runs {', '.join(f'{w:.2f}' for w in walls)}); "
                  f"CPU s per busy thread (last run) {spread}; same bytes as threads={a.threads[0]}: {same}")


if __name__ == "__main__":
    main()
