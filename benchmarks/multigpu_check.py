"""Multi-GPU truth for the launch plan: does Megatron-Core's parallel_state agree with the plan's rank map?

Driver (one command, several layouts in sequence):

    python benchmarks/multigpu_check.py --gpus 2 --out benchmarks/multigpu_check_out

For each layout (TP=2, PP=2, CP=2 on tiny-dense; EP=2 and TP=2/ETP=1/EP=2 on tiny-moe) the driver builds the
plan with ``modelopt_typed_recipes.plan.launch.plan(..., program=[this file, --worker, ...])`` and runs the
plan's own ``argv`` with the plan's ``env``. Each worker (one per rank, started by torchrun) re-resolves the
plan from the same flags plus torchrun's variables, initialises torch.distributed (NCCL) and
``parallel_state.initialize_model_parallel`` with the layout, reads every group-local rank back from
parallel_state, runs one all-reduce over the tensor-parallel group, and rank 0 prints a table and
writes a JSON record. A mismatch exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAYOUTS = [
    {"name": "TP=2", "arch": "tiny-dense", "tensor_parallel": 2},
    {"name": "PP=2", "arch": "tiny-dense", "pipeline_parallel": 2},
    {"name": "CP=2", "arch": "tiny-dense", "context_parallel": 2},
    {"name": "EP=2", "arch": "tiny-moe", "expert_parallel": 2},
    {"name": "TP=2 ETP=1 EP=2", "arch": "tiny-moe", "tensor_parallel": 2, "expert_tensor_parallel": 1,
     "expert_parallel": 2},
]
FIELDS = ("tensor_parallel", "pipeline_parallel", "context_parallel", "expert_parallel", "expert_tensor_parallel")


def _flags(spec: dict) -> list[str]:
    out = ["--arch", spec["arch"], "--name", spec["name"]]
    for f in FIELDS:
        if f in spec:
            out += [f"--{f.replace('_', '-')}", str(spec[f])]
    return out


def _plan(args: argparse.Namespace, environ: dict | None, program: list[str] | None = None):
    from modelopt_typed_recipes.plan.launch import plan

    kw = {f: getattr(args, f) for f in FIELDS if getattr(args, f) is not None}
    return plan(args.arch, args.gpus, environ=environ, check_memory=False,
                program=program or ["benchmarks/multigpu_check.py"], **kw)


def worker(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    # the resolver sees torchrun's WORLD_SIZE/RANK/LOCAL_RANK here, as a real run would
    lp = _plan(args, dict(os.environ))
    lay = lp.layout
    rank = int(os.environ["RANK"])
    local = int(os.environ["LOCAL_RANK"])
    if args.backend == "nccl":
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:  # a CPU dry run of this script (gloo); the GPU machine uses NCCL
        dist.init_process_group("gloo")
    ps.initialize_model_parallel(**lay.parallel_state_kwargs())  # as the runtime's distributed.set_layout
    got = {
        "tensor": ps.get_tensor_model_parallel_rank(),
        "pipeline": ps.get_pipeline_model_parallel_rank(),
        "context": ps.get_context_parallel_rank(),
        "data": ps.get_data_parallel_rank(),
        "expert": ps.get_expert_model_parallel_rank(),
        "expert_tensor": ps.get_expert_tensor_parallel_rank(),
        "expert_data": ps.get_expert_data_parallel_rank(),
    }
    sizes = {
        "tensor": ps.get_tensor_model_parallel_world_size(),
        "pipeline": ps.get_pipeline_model_parallel_world_size(),
        "context": ps.get_context_parallel_world_size(),
        "data": ps.get_data_parallel_world_size(),
        "expert": ps.get_expert_model_parallel_world_size(),
        "expert_tensor": ps.get_expert_tensor_parallel_world_size(),
        "expert_data": ps.get_expert_data_parallel_world_size(),
    }
    mine = lp.rank_map[rank].to_dict()
    expect = {k: mine[k] for k in got}
    want_sizes = {k: lay.summary()[k] for k in sizes}
    # real traffic over the TP group: the sum of TP ranks
    t = torch.tensor([float(got["tensor"])], device="cuda" if args.backend == "nccl" else "cpu")
    dist.all_reduce(t, group=ps.get_tensor_model_parallel_group())
    tp_sum_ok = int(t.item()) == sum(range(lay.tensor_parallel))
    record = {"rank": rank, "local_rank": local, "node": mine["node"], "megatron": got, "plan": expect,
              "sizes": sizes, "plan_sizes": want_sizes, "tp_allreduce_ok": tp_sum_ok,
              "agree": got == expect and sizes == want_sizes and tp_sum_ok,
              "world_size_env": int(os.environ["WORLD_SIZE"]), "plan_world_size": lp.world_size,
              "dp_source": lp.environment["data_parallel"].source}
    records: list = [None] * dist.get_world_size()
    dist.all_gather_object(records, record)
    ok = all(r["agree"] for r in records)
    if rank == 0:
        print(f"== {args.name} on {args.arch}: {lay.short()} (DP from {record['dp_source']})")
        cols = ("tensor", "pipeline", "context", "data", "expert", "expert_tensor", "expert_data")
        short = {"tensor": "tp", "pipeline": "pp", "context": "cp", "data": "dp", "expert": "ep",
                 "expert_tensor": "etp", "expert_data": "edp"}
        print("rank node local | " + " ".join(f"{short[c]:>6}" for c in cols) + " | agree")
        for r in records:
            cells = " ".join(f"{r['megatron'][c]:>2}/{r['plan'][c]:<3}" for c in cols)
            print(f"{r['rank']:>4} {r['node']:>4} {r['local_rank']:>5} | {cells} | {r['agree']}")
        print("(cells: parallel_state rank / plan rank)")
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "multigpu_check.jsonl", "a") as f:
                f.write(json.dumps({"layout": args.name, "arch": args.arch, "short": lay.short(), "argv": list(lp.argv),
                                    "ok": ok, "ranks": records}) + "\n")
    ps.destroy_model_parallel()
    dist.destroy_process_group()
    return 0 if ok else 3


def driver(args: argparse.Namespace) -> int:
    failures = 0
    for spec in LAYOUTS:
        ns = argparse.Namespace(arch=spec["arch"], gpus=args.gpus, **{f: spec.get(f) for f in FIELDS})
        program = [str(Path(__file__).relative_to(ROOT)), "--worker", "--gpus", str(args.gpus), *_flags(spec)]
        if args.out:
            program += ["--out", args.out]
        program += ["--backend", args.backend]
        lp = _plan(ns, {}, program)
        argv = list(lp.argv)
        if shutil.which(argv[0]) is None:  # torchrun's console script missing: the same launcher as a module
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        env = {**os.environ, **dict(lp.env)}
        print("$ " + " ".join(argv), flush=True)
        t0 = time.time()
        rc = subprocess.run(argv, cwd=ROOT, env=env).returncode
        print(f"-> rc={rc} in {time.time() - t0:.1f}s", flush=True)
        failures += rc != 0
    print(f"multigpu_check: {len(LAYOUTS) - failures}/{len(LAYOUTS)} layouts agree")
    return 1 if failures else 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--arch", default="tiny-dense")
    p.add_argument("--name", default="")
    p.add_argument("--out", default="")
    p.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    for f in FIELDS:
        p.add_argument(f"--{f.replace('_', '-')}", dest=f, type=int)
    args = p.parse_args()
    return worker(args) if args.worker else driver(args)


if __name__ == "__main__":
    raise SystemExit(main())
