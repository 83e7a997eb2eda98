"""Where ModelOpt's max calibration of a SequentialMLP MoE spends its time, measured on the CPU.

Question behind it: qwen3-30b-a3b calibrates at ~1,000 tokens/s at EP2 on H200s (Megatron-Core's local spec,
SequentialMLP: each rank runs its 64 local experts one after another), ~5 ms per local expert call. Is that
cost paid per expert call (then more tokens per forward come nearly free) or per token?

What runs: a stack of ``--layers`` real Megatron-Core ``MoELayer`` modules (local spec: ``SequentialMLP`` of
``--experts`` experts, each a ``ColumnParallelLinear``/``RowParallelLinear`` SwiGLU MLP; top-``--topk`` router;
the alltoall token dispatcher) in a gloo world of one, made small (``--hidden``, ``--ffn``) so the matmuls
cost little. ModelOpt's real ``mtq.quantize(model, FP8_DEFAULT_CFG, forward_loop)`` converts it, and every
measurement runs inside its forward loop, i.e. in the calibration state (quantizers collecting amax).
For each batch (``--batches`` windows of ``--seq`` tokens) it times ``--reps`` forwards of the plain model
(before ``mtq.quantize``) and of the calibrating model, with and without
``torch.use_deterministic_algorithms(True, warn_only=True)``; times one local expert called alone at
``--expert-tokens`` token counts (per-call against per-token cost); counts the aten operations and the host
syncs (``aten._local_scalar_dense``: ``.item()``, ``bool(tensor)``) per forward with a dispatch mode; and
writes a cProfile of one calibrating forward. ``--config NVFP4_DEFAULT_CFG`` calibrates for NVFP4 instead
(quantization is off while calibrating, so that too runs on the CPU).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/moe_calib_cpu.py --out benchmarks/raw/moe_calib_cpu

Prints one JSON line per measurement and writes ``results_<tag>.jsonl`` and ``profile_*.txt`` under ``--out``
(``-O`` runs, which strip Python's ``assert`` statements, add ``_O``). Then the fixed and per-token costs:

    .venv/bin/python benchmarks/moe_calib_cpu.py --fit benchmarks/raw/moe_calib_cpu/results_*.jsonl
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the TEST-ONLY shim that lets Megatron-Core run on a CPU-only torch


def build_stack(args):
    """``--layers`` Megatron-Core MoE layers (local spec) with residual adds, as a decoder's MLP halves."""
    import torch
    import torch.nn.functional as F
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.spec_utils import build_module
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(
        num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=4, ffn_hidden_size=args.ffn,
        moe_ffn_hidden_size=args.ffn, num_moe_experts=args.experts, moe_router_topk=args.topk,
        moe_token_dispatcher_type=args.dispatcher, moe_router_load_balancing_type="aux_loss",
        moe_aux_loss_coeff=1e-3, gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False,
        bias_activation_fusion=False, use_cpu_initialization=True, params_dtype=torch.float32,
        perform_initialization=True)
    spec = get_gpt_layer_local_spec(num_experts=args.experts, moe_grouped_gemm=False)

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(
                build_module(spec.submodules.mlp, config=cfg) for _ in range(args.layers))
            self.config = cfg

        def forward(self, x):
            for layer in self.layers:
                out, _ = layer(x)
                x = x + out
            return x

    torch.manual_seed(0)
    stack = Stack().eval()
    for i, layer in enumerate(stack.layers):
        layer.set_layer_number(i + 1)
    assert type(stack.layers[0].experts).__name__ == "SequentialMLP", type(stack.layers[0].experts)
    return stack


@contextlib.contextmanager
def cpu_streams():
    """Megatron-Core 0.16's router names TE's GEMM even without TE (set to None: torch's matmul). The alltoall dispatcher copies its split sizes to the host on a side CUDA stream; on the CPU that
    stream is a no-op stand-in (the copies are already host tensors). Benchmark-only; undone afterwards."""
    import torch

    class _Event:
        def synchronize(self):
            pass

    class _Stream:
        def __init__(self, *a, **k):
            pass

        def wait_stream(self, other):
            pass

        def record_event(self, *a, **k):
            return _Event()

    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None  # megatron-core 0.16 names TE's GEMM even without TE; None picks torch's
    saved = (torch.cuda.Stream, torch.cuda.current_stream, torch.cuda.stream)
    default = _Stream()
    torch.cuda.Stream, torch.cuda.current_stream = _Stream, lambda *a, **k: default
    torch.cuda.stream = lambda s: contextlib.nullcontext()
    try:
        yield
    finally:
        torch.cuda.Stream, torch.cuda.current_stream, torch.cuda.stream = saved


class _OpCounter:
    """Counts aten operations (each is one kernel launch or more on a GPU) and host syncs while active."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counts = self.counts = collections.Counter()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counts[str(func.overloadpacket)] += 1
                return func(*args, **(kwargs or {}))

        self.mode = Mode()


def _inputs(args, batch):
    import torch

    g = torch.Generator().manual_seed(batch)
    return torch.randn(args.seq, batch, args.hidden, generator=g)  # Megatron's [s, b, h]


def _time(model, x, reps):
    """Median and least wall seconds of ``reps`` forwards, and the least CPU seconds of this process (the CPU
    is shared: CPU time is less disturbed by other processes than wall time)."""
    import torch

    with torch.no_grad():
        model(x)  # warm-up
        times, cpu = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            model(x)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return statistics.median(times), min(times), min(cpu)


def _expert_calls(model, args, tag, emit):
    """One local expert called alone (what SequentialMLP's loop does per expert), at growing token counts: the
    per-call cost is the time at few tokens, the per-token cost the slope."""
    import torch

    expert = model.layers[0].experts.local_experts[0]
    counter = _OpCounter()
    with torch.no_grad():
        for n in args.expert_tokens:
            x, probs = torch.randn(n, args.hidden), torch.ones(n)
            expert(x, probs)
            best_wall = best_cpu = float("inf")
            for _ in range(3):
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.expert_reps):
                    expert(x, probs)
                best_wall = min(best_wall, (time.perf_counter() - t0) / args.expert_reps)
                best_cpu = min(best_cpu, (time.process_time() - c0) / args.expert_reps)
            counter.counts.clear()
            with counter.mode:
                expert(x, probs)
            emit({"what": "expert_call", "model": tag, "tokens": n, "us_per_call_wall": round(1e6 * best_wall, 1),
                  "us_per_call_cpu": round(1e6 * best_cpu, 1), "aten_ops": sum(counter.counts.values()),
                  "host_syncs": counter.counts["aten._local_scalar_dense"]})


def _sweep(model, args, tag, emit, deterministic=False):
    import torch

    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        for batch in args.batches:
            tokens = batch * args.seq
            med, best, cpu = _time(model, _inputs(args, batch), args.reps)
            calls = args.layers * args.experts
            emit({"what": "forward", "model": tag, "deterministic": deterministic, "batch": batch,
                  "tokens": tokens, "median_s": round(med, 5), "min_s": round(best, 5), "min_cpu_s": round(cpu, 5),
                  "tokens_per_s": round(tokens / best, 1), "ms_per_expert_call": round(1e3 * best / calls, 4)})
    finally:
        torch.use_deterministic_algorithms(False)


def _count_ops(model, args, tag, emit, batch, deterministic=False):
    import torch

    counter = _OpCounter()
    profile = cProfile.Profile()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        with torch.no_grad(), counter.mode:
            profile.enable()
            model(_inputs(args, batch))
            profile.disable()
    finally:
        torch.use_deterministic_algorithms(False)
    calls = args.layers * args.experts
    stats = pstats.Stats(profile)
    pycalls = {name: sum(v[1] for k, v in stats.stats.items() if f"'{name}'" in k[2])
               for name in ("item", "tolist", "cpu", "numpy")}
    c = counter.counts
    emit({"what": "ops", "model": tag, "deterministic": deterministic, "batch": batch, "aten_ops": sum(c.values()),
          "aten_ops_per_expert_call": round(sum(c.values()) / calls, 1),
          "host_syncs_local_scalar_dense": c["aten._local_scalar_dense"],
          "host_syncs_per_expert_call": round(c["aten._local_scalar_dense"] / calls, 2),
          "python_calls": pycalls, "top_ops": c.most_common(15)})


def _package(filename: str) -> str:
    for name in ("modelopt", "megatron", "torch"):
        if f"/{name}/" in filename:
            return name
    return "C calls (aten ops, builtins)" if filename == "~" else "other Python"


def _profile(model, args, tag, out: Path | None, batch, emit):
    import torch

    profile = cProfile.Profile()
    x = _inputs(args, batch)
    with torch.no_grad():
        model(x)
        profile.enable()
        model(x)
        profile.disable()
    stats = pstats.Stats(profile)
    by_package = collections.Counter()
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():
        by_package[_package(filename)] += tottime
    total = sum(by_package.values())
    calls = args.layers * args.experts
    emit({"what": "profile", "model": tag, "batch": batch, "profiled_s": round(total, 4),
          "ms_per_expert_call_profiled": round(1e3 * total / calls, 4),
          "self_time_share": {k: round(v / total, 3) for k, v in by_package.most_common()}})
    if out is None:
        return
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(profile, stream=buf).strip_dirs().sort_stats(key).print_stats(40)
        (out / f"profile{'_O' if sys.flags.optimize else ''}_{tag}_b{batch}_{key}.txt").write_text(buf.getvalue())


def fit(paths) -> list[dict]:
    """Least squares ``seconds = per_forward + per_token * tokens`` over each results file's forward sweeps
    (least wall seconds of each batch) and ``us = per_call + per_token * tokens`` over its single expert calls."""
    import numpy as np

    out = []
    for path in paths:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        groups = collections.defaultdict(list)
        for r in rows:
            if r["what"] == "forward":
                groups[("forward", r["model"], r["deterministic"])].append((r["tokens"], r["min_s"]))
            elif r["what"] == "expert_call":
                groups[("expert_call", r["model"], False)].append((r["tokens"], r["us_per_call_cpu"]))
        for (what, model, det), pts in groups.items():
            x, y = np.array(pts, dtype=float).T
            slope, intercept = np.polyfit(x, y, 1)
            row = {"file": Path(path).name, "what": what, "model": model, "deterministic": det,
                   "fixed": round(float(intercept), 5), "per_token": round(float(slope), 8),
                   "fixed_share_at_max_tokens": round(float(intercept / (intercept + slope * x.max())), 3)}
            out.append(row)
            print(json.dumps(row))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--topk", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--ffn", type=int, default=64)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--config", default="FP8_DEFAULT_CFG", choices=["FP8_DEFAULT_CFG", "NVFP4_DEFAULT_CFG"],
                   help="ModelOpt's config; while calibrating, quantization is off, so NVFP4's calibration runs "
                        "on the CPU too")
    p.add_argument("--dispatcher", default="alltoall", choices=["alltoall", "allgather"])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--expert-tokens", type=int, nargs="+", default=[1, 16, 64, 256, 1024, 4096])
    p.add_argument("--expert-reps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--fit", nargs="+", metavar="RESULTS_JSONL",
                   help="only fit fixed + per-token costs to earlier results files and print them")
    args = p.parse_args(argv)
    if args.fit:
        fit(args.fit)
        return

    import torch

    torch.set_num_threads(args.threads)
    import modelopt
    import modelopt.torch.quantization as mtq
    from megatron.core import __version__ as mcore_version
    from megatron.core import parallel_state

    from _dist import init_gloo_world
    from megatron_cpu_shim import megatron_on_cpu

    rows = []
    out = args.out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    emit({"what": "setup", "torch": torch.__version__, "modelopt": modelopt.__version__,
          "megatron_core": mcore_version, "threads": torch.get_num_threads(),
          "python_optimize": sys.flags.optimize, **{
              k: v for k, v in vars(args).items() if k != "out"}})
    init_gloo_world()
    parallel_state.initialize_model_parallel(1, 1)
    with megatron_on_cpu(), cpu_streams():
        model = build_stack(args)
        _sweep(model, args, "plain", emit)
        _count_ops(model, args, "plain", emit, args.batches[0])
        _expert_calls(model, args, "plain", emit)
        for batch in (args.batches[0], args.batches[-1]):
            _profile(model, args, "plain", out, batch, emit)

        tag = "calib_" + args.config.split("_")[0].lower()

        def forward_loop(m):
            # every measurement runs here: ModelOpt's max calibration state (quantize off, amax collection on)
            _expert_calls(m, args, tag, emit)
            _sweep(m, args, tag, emit)
            _sweep(m, args, tag, emit, deterministic=True)
            for batch in (args.batches[0], args.batches[-1]):
                _count_ops(m, args, tag, emit, batch)
                _profile(m, args, tag, out, batch, emit)
            _count_ops(m, args, tag, emit, args.batches[0], deterministic=True)

        t0 = time.perf_counter()
        mtq.quantize(model, getattr(mtq, args.config), forward_loop)
        emit({"what": "mtq.quantize", "wall_s": round(time.perf_counter() - t0, 2),
              "quantizers": sum(type(m).__name__ == "TensorQuantizer" for m in model.modules()),
              "expert_fc1": type(model.layers[0].experts.local_experts[0].linear_fc1).__name__})
    if out is not None:
        name = f"results_{tag}{'_O' if sys.flags.optimize else ''}.jsonl"
        with (out / name).open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
