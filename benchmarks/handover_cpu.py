"""The layout hand-over's save and load on two gloo ranks on the CPU: where its time goes, before and after (issue 9).

A scaled ``tiny-moe`` (many layers and experts, so each rank holds thousands of ModelOpt quantizers, as
qwen3-30b-a3b's ranks hold ~18,700) is built at EP2 (DP2), FP8-quantized by ModelOpt on a few tokens, and moved
to PP2 by the runtime's own ``backend._hand_over`` (the Megatron distributed checkpoint save, the new model's
build, the load). Each rank prints one JSON line: the hand-over's details (``save_s``, ``build_s``, ``load_s``),
the quantizer count, and a digest of every tensor the new layout holds (weights, amax), to compare modes.

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        benchmarks/handover_cpu.py --layers 8 --experts 128 [--profile DIR]

On GPUs, the real size (random weights; EP2 -> PP2 needs two): ``--device cuda --model qwen3-30b-a3b``.

``--profile DIR`` writes a cProfile of the save and of the load per rank. ``--ab N --before TREE`` (no
torchrun) alternates N pairs of fresh two-rank runs of this runtime (after) and of the one in TREE (before: an
unpacked ``git archive`` of the commit before the change) and prints the medians and whether every run's new
layout holds the same tensors.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = Path(os.environ.get("HANDOVER_TREE") or ROOT)
"""The source tree whose runtime is measured (``--ab``'s before: a checkout of the commit before the change)."""
sys.path.insert(0, str(TREE))
sys.path.insert(0, str(TREE / "tests"))  # the TEST-ONLY shim that lets Megatron-Core run on a CPU-only torch


def _digest(model) -> str:
    import torch

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if isinstance(v, torch.Tensor) and "_extra_state" not in k:
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    from modelopt.torch.quantization.nn import TensorQuantizer

    for name, mod in model.named_modules():  # each quantizer's settings (what its pickled extra state carries)
        if isinstance(mod, TensorQuantizer):
            h.update(f"{name}={sorted(mod.get_modelopt_state().items())!r}".encode())
    return h.hexdigest()[:16]


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def worker(args: argparse.Namespace) -> None:
    import attrs
    import torch

    from megatron_cpu_shim import megatron_on_cpu
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.plan.techniques.quantize import quantize_config
    from modelopt_typed_recipes.runtime import distributed
    from modelopt_typed_recipes.runtime.megatron import backend, build, stages
    from modelopt_typed_recipes.spec.layout import ParallelLayout
    from modelopt_typed_recipes.spec.techniques import Quantize

    cuda = args.device == "cuda"
    distributed.init_process_group(device=args.device)
    if args.model:
        arch = get_arch(args.model)
    else:
        tiny = get_arch("tiny-moe")
        arch = attrs.evolve(tiny, name="tiny-moe-scaled", num_layers=args.layers,
                            moe=attrs.evolve(tiny.moe, num_experts=args.experts))
    dtype = "bf16" if cuda else "fp32"  # the runtime's spec on GPUs (ModelOpt's with Transformer Engine)
    spec = build.choose_spec(te_available=build.has_transformer_engine(), prune=False) if cuda else "local"
    if not cuda:
        from megatron.core.transformer.moe import moe_utils

        moe_utils.te_general_gemm = None  # megatron-core 0.16 names TE's GEMM even without TE; None picks torch's
    old = ParallelLayout(expert_parallel=2, data_parallel=2)
    new = ParallelLayout(pipeline_parallel=2)
    rank = distributed.world()[0]
    with contextlib.nullcontext() if cuda else megatron_on_cpu():
        distributed.set_layout(old, seed=1, device=args.device)
        torch.manual_seed(0)
        model = build.build_model(arch, old, dtype=dtype, device=args.device, spec=spec)
        q = Quantize(format="fp8")
        batch = torch.randint(0, min(1024, arch.vocab.size), (2, 16), generator=torch.Generator().manual_seed(1))
        stages.quantize(model, q, [batch], progress=False, config=quantize_config(q)[0].config)
        n_quant = sum(stages.quantizer_summary(model).values())
        work = Path(args.work)
        staging = work / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        run = types.SimpleNamespace(model=model, layout=old,
                                    plan=types.SimpleNamespace(staging=lambda: staging, output_dir=work / "out"))
        sp = types.SimpleNamespace(index=1, layout=new)
        cpu: dict[str, float] = {}

        def measured(name, real):
            """``real`` with its CPU seconds (this process and the writer processes it forks) recorded: on a
            shared machine they vary far less than the wall seconds; with ``--profile`` also a cProfile."""
            def call(*a, **k):
                prof = cProfile.Profile() if args.profile else None
                t0 = _cpu_seconds()
                if prof:
                    prof.enable()
                try:
                    return real(*a, **k)
                finally:
                    if prof:
                        prof.disable()
                        prof.dump_stats(str(Path(args.profile) / f"{name}-rank{rank}.prof"))
                    cpu[f"{name}_cpu_s"] = round(_cpu_seconds() - t0, 3)
            return call

        build.save_checkpoint = measured("save", build.save_checkpoint)
        build.load_checkpoint = measured("load", build.load_checkpoint)
        t = time.perf_counter()
        details = backend._hand_over(run, sp, arch, dtype=dtype, device=args.device, spec=spec, seed=1)
        wall = time.perf_counter() - t
        row = {"rank": rank, "mode": args.mode, "model": arch.name, "layers": arch.num_layers,
               "experts": arch.moe.num_experts if arch.moe else 0,
               "quantizers": n_quant, "wall_s": round(wall, 3), "where": details["where"],
               **{k: round(details[k], 3) for k in ("save_s", "build_s", "load_s")},
               **cpu, "bytes": details["bytes"], "digest": None if args.model else _digest(run.model)}
    print("HANDOVER " + json.dumps(row), flush=True)


KEYS = ("save_s", "build_s", "load_s", "wall_s", "save_cpu_s", "load_cpu_s")
"""Per run, the slower rank's: seconds of the hand-over's parts (wall), and CPU seconds of its save and load."""


def ab(args: argparse.Namespace) -> None:
    rows: dict[str, list[dict]] = {"before": [], "after": []}
    trees = {"before": str(Path(args.before).resolve()), "after": str(ROOT)}
    for i in range(args.ab):
        for mode in ("before", "after") if i % 2 == 0 else ("after", "before"):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HANDOVER_TREE": trees[mode]}
            with tempfile.TemporaryDirectory(prefix="handover_ab_") as work:
                p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                    __file__, "--layers", str(args.layers), "--experts", str(args.experts),
                                    "--mode", mode, "--work", work], env=env, cwd=ROOT, capture_output=True, text=True)
            if p.returncode:
                sys.exit(p.stderr[-3000:])
            per_rank = [json.loads(line.split(" ", 1)[1]) for line in p.stdout.splitlines() if line.startswith("HANDOVER ")]
            per_rank.sort(key=lambda r: r["rank"])
            rows[mode].append({k: max(r[k] for r in per_rank) for k in KEYS}
                              | {"digests": [r["digest"] for r in per_rank], "quantizers": [r["quantizers"] for r in per_rank]})
            print(mode, json.dumps(rows[mode][-1]), flush=True)
    digests = {json.dumps(r["digests"]) for v in rows.values() for r in v}
    out = {"layers": args.layers, "experts": args.experts, "pairs": args.ab, "same_tensors": len(digests) == 1,
           **{m: {f"median_{k}": round(statistics.median(r[k] for r in v), 2) for k in KEYS}
              for m, v in rows.items()},
           "runs": rows}
    print(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: on GPUs (bf16, the runtime's "
                    "layer spec), e.g. with --model qwen3-30b-a3b --profile DIR for the real size's profile")
    ap.add_argument("--model", default=None, help="a registry model instead of the scaled tiny-moe (random weights)")
    ap.add_argument("--mode", choices=("before", "after"), default="after", help="a label for the printed row")
    ap.add_argument("--before", default=None, help="--ab: the source tree measured as before")
    ap.add_argument("--work", default=None)
    ap.add_argument("--profile", default=None, help="folder for save-rankN.prof and load-rankN.prof")
    ap.add_argument("--ab", type=int, default=0, help="alternating pairs of fresh runs (run without torchrun)")
    args = ap.parse_args()
    if args.ab:
        if not args.before:
            ap.error("--ab needs --before TREE")
        return ab(args)
    if args.work is None:  # the same folder on every rank: the hand-over's scratch folder is named after it
        args.work = str(Path(tempfile.gettempdir()) / "handover_cpu")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    worker(args)


if __name__ == "__main__":
    main()
