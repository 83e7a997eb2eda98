"""Planning commands: ``plan`` (layout, memory and launch commands of one stage) and ``env`` (the
resolved environment with the source of every value).

Both read plain data only: no torch, Megatron-Core or ModelOpt import, so they answer in well under a
second. Bad layouts exit 2 with the typed message (the dispatcher in ``cli/__init__.py`` does that).
"""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING

from .output import print_json, table

if TYPE_CHECKING:
    from ..plan.gpus import GpuSpec
    from ..plan.launch import LaunchPlan

STAGE_CHOICES = ("quantize", "auto_quantize", "prune", "export", "distill")


def _stage_name(text: str) -> str:
    """``--stage``: one name per technique; the old spelling ``auto-quantize`` is still accepted."""
    from ..plan.rules import STAGE_ALIASES

    return STAGE_ALIASES.get(text, text)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plan",
        help="validate a parallel layout for one stage and print its memory plan and launch commands",
        description="Resolve the layout (flags > --profile > the seed's TP/PP/... variables > torchrun/Slurm "
        "variables > defaults), check it against the model and the stage, estimate per-rank memory and "
        "print the torchrun/srun/sbatch commands. Without any layout setting the smallest layout that fits "
        "is chosen and the remaining GPUs do data parallelism.",
    )
    p.add_argument("name", help="architecture: short name, Hugging Face id or alias")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in total (over all nodes)")
    p.add_argument("--gpu", default="h100-80gb", help="GPU model (a100-80gb, h100-80gb, h200-141gb, b200-192gb, "
                   "gb200); 'auto' reads the local GPU through nvidia-ml-py")
    p.add_argument("--nodes", type=int, help="nodes the GPUs are spread over (default: as few as hold them)")
    p.add_argument("--stage", type=_stage_name, choices=STAGE_CHOICES,
                   help="post-training stage (default: the profile's, else quantize)")
    for flag, dest, what in (("--tp", "tensor_parallel", "tensor"), ("--pp", "pipeline_parallel", "pipeline"),
                             ("--cp", "context_parallel", "context"), ("--ep", "expert_parallel", "expert"),
                             ("--etp", "expert_tensor_parallel", "expert tensor"), ("--dp", "data_parallel", "data")):
        p.add_argument(flag, dest=dest, type=int, help=f"{what} parallel size")
    p.add_argument("--sp", dest="sequence_parallel", action=argparse.BooleanOptionalAction, default=None,
                   help="sequence parallelism (default: off, as in Megatron; needs TP > 1 and the TE layer spec)")
    p.add_argument("--first-stage-layers", type=int, help="uneven pipeline: layers of the first stage")
    p.add_argument("--last-stage-layers", type=int, help="uneven pipeline: layers of the last stage")
    p.add_argument("--profile", help="a launch profile (see `profiles`) whose layout acts as the recipe's")
    p.add_argument("--seq-length", type=int, help="calibration sequence length (default: the model's)")
    p.add_argument("--batch", type=int, default=1, help="calibration batch size (default: 1)")
    p.add_argument("--format", dest="quant_format", default="fp8", help="quantization format (default: fp8)")
    p.add_argument("--no-memory-check", dest="check_memory", action="store_false",
                   help="print the plan even when it does not fit")
    p.add_argument("--sbatch", action="store_true", help="print only the sbatch script")
    p.add_argument("--json", action="store_true", help="print one JSON object for programs")
    p.set_defaults(handler=cmd_plan)

    p = sub.add_parser("env", help="show the resolved run environment and where each value came from")
    p.add_argument("--json", action="store_true", help="print one JSON object for programs")
    p.set_defaults(handler=cmd_env)


def cmd_plan(args: argparse.Namespace) -> int:
    from ..plan.launch import plan

    gpu: GpuSpec | str = args.gpu
    if gpu == "auto":
        from ..plan.gpus import detect

        found = detect()
        if found is None:
            from ..errors import CompatibilityError

            raise CompatibilityError("no GPU found through nvidia-ml-py", path="gpu", hint="name one, e.g. h100-80gb")
        gpu = found
    recipe = None
    stage, on_host = args.stage or "quantize", False
    if args.profile:
        from ..catalog.profiles import get_profile

        profile = get_profile(args.profile)
        recipe = profile.layout_fields()
        stage = args.stage or profile.stage
        on_host = profile.use_cpu_initialization and stage == "export"
    lp = plan(
        args.name, args.gpus, stage=stage, gpu=gpu, nodes=args.nodes, weights_on_host=on_host,
        tensor_parallel=args.tensor_parallel, pipeline_parallel=args.pipeline_parallel,
        context_parallel=args.context_parallel, expert_parallel=args.expert_parallel,
        expert_tensor_parallel=args.expert_tensor_parallel, data_parallel=args.data_parallel,
        sequence_parallel=args.sequence_parallel, first_stage_layers=args.first_stage_layers,
        last_stage_layers=args.last_stage_layers, recipe=recipe, seq_length=args.seq_length, batch=args.batch,
        quant_format=args.quant_format, check_memory=args.check_memory,
    )  # fmt: skip
    if args.json:
        print_json(lp.summary())
        return 0
    if args.sbatch:
        print(lp.sbatch_script, end="")
        return 0
    _print_plan(lp)
    return 0


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def _print_plan(lp: LaunchPlan) -> None:
    lay = lp.layout
    m = lp.memory
    head = [
        ("layout", f"{lay.short()}  ({lp.layout_source})"),
        ("world size", f"{lp.world_size} = {lp.nnodes} node(s) x {lp.nproc_per_node} processes"),
        ("expert data parallel", str(lay.expert_data_parallel)),
        ("memory per rank", (f"{_gib(m.per_rank_bytes)} of {_gib(m.usable_bytes)} usable "
                             f"({_gib(m.capacity_bytes)} total) -> {'fits' if m.fits else 'DOES NOT FIT'}")),
        *((f"  {k}", _gib(v)) for k, v in m.terms.items() if v),
        *((("host memory per rank", f"{_gib(m.host_bytes)} (model built on the CPU, as Megatron-LM's export)"),)
          if m.host_bytes else ()),
        ("  exported weights", _gib(m.weights_quantized_bytes) + f" ({m.quant_format})"),
        ("torchrun", shlex.join(lp.argv)),
        *((("srun", shlex.join(lp.srun_argv)),) if lp.nnodes > 1 else ()),
        ("env", " ".join(f"{k}={shlex.quote(v)}" for k, v in lp.env)),
        ("seed env", " ".join(f"{k}={shlex.quote(v)}" for k, v in lp.seed_env)),
    ]
    table(f"{lp.arch}: {lp.stage} on {lp.gpus} x {lp.gpu}", ["setting", "value"], head, header=False)

    columns = ("rank", "node", "local", "tp", "pp", "cp", "dp", "ep", "etp", "edp")
    shown = lp.rank_map[:32]
    rows = ([str(x) for x in (r.rank, r.node, r.local_rank, r.tensor, r.pipeline, r.context, r.data, r.expert,
                              r.expert_tensor, r.expert_data)] for r in shown)
    caption = f"first {len(shown)} of {len(lp.rank_map)} ranks (--json prints the first 1024)" if len(lp.rank_map) > len(shown) else ""
    table("rank map (Megatron-Core order tp-cp-ep-dp-pp)", columns, rows, right=columns, caption=caption)


def cmd_env(args: argparse.Namespace) -> int:
    from ..plan.resolve import resolve

    renv = resolve()
    if args.json:
        print_json(renv.to_dict())
        return 0
    rows, defaults = [], []
    for i, (name, r) in enumerate(renv.values.items()):
        value = shlex.join(r.value) if isinstance(r.value, tuple) else ("-" if r.value is None else str(r.value))
        rows.append((name, value, r.source))
        if r.is_default:
            defaults.append(i)
    table("run environment (highest precedence first: argument, recipe, env, torchrun, slurm, default)",
          ["setting", "value", "source"], rows, dim=defaults)
    return 0
