"""Launch plans: the layout, rank map, memory plan and exact commands of one stage, before any GPU work.

``plan(arch, gpus, stage=...)`` resolves the layout (arguments > recipe > the seed's variables >
torchrun/Slurm > defaults), checks it against the model and the stage, estimates per-rank memory
and builds the commands as argument lists: ``torchrun`` on one node (``--standalone``) or several
(c10d rendezvous), ``srun`` (one torchrun per node), a complete sbatch script, the environment to
export, and the seed's variables for running Megatron-LM's own scripts with a correct process count.

When nothing sets the layout, the plan picks the smallest layout that fits in memory and fills the
remaining GPUs with data parallelism (prune and export: pipeline only).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, overload

import attrs

from ..errors import LayoutError, brief
from ..spec.arch import ModelArch
from ..spec.layout import MAX_WORLD_SIZE, ParallelLayout, RankCoords
from . import memory as mem
from . import rules
from .gpus import GpuSpec, get_gpu
from .resolve import RunEnvironment, resolve

DEFAULT_PROGRAM = ("-m", "modelopt_typed_recipes", "run", "RECIPE.yaml")
MASTER_ADDR_PLACEHOLDER = "${MASTER_ADDR}"
"""Stands for the rendezvous host when it is unknown at plan time; the sbatch script sets it."""

BASE_ENV = (
    ("CUDA_DEVICE_MAX_CONNECTIONS", "1"),  # Megatron: keep TP/SP communication ordered with compute
    ("TOKENIZERS_PARALLELISM", "false"),
    ("NCCL_IB_SL", "1"),  # the seed's InfiniBand settings
    ("NCCL_IB_TIMEOUT", "22"),
    ("NCCL_NVLS_ENABLE", "0"),  # NVLink multicast off (fails on the shared H100 machines)
    ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
)


@attrs.frozen(kw_only=True)
class RankInfo(RankCoords):
    """One process: where it runs (node, local rank) and its rank in every parallel group (RankCoords)."""

    node: int
    local_rank: int

    def to_dict(self) -> dict[str, int]:
        d = attrs.asdict(self)
        return {"rank": d.pop("rank"), "node": d.pop("node"), "local_rank": d.pop("local_rank"), **d}


@attrs.frozen
class RankMap(Sequence[RankInfo]):
    """Every process of a plan, computed when asked for (a closed form per rank): a plan for a million GPUs
    answers at once and prints only :data:`RANKS_SHOWN` ranks."""

    layout: ParallelLayout
    nproc_per_node: int

    def __len__(self) -> int:
        return self.layout.world_size

    @overload
    def __getitem__(self, index: int) -> RankInfo: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[RankInfo, ...]: ...

    def __getitem__(self, index: int | slice) -> RankInfo | tuple[RankInfo, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        rank = index + len(self) if index < 0 else index
        if not 0 <= rank < len(self):
            raise IndexError(f"rank {index} is outside the world of {len(self)}")
        c = self.layout.coords(rank)
        return RankInfo(node=rank // self.nproc_per_node, local_rank=rank % self.nproc_per_node, **attrs.asdict(c))


_MAX_TOKENS = 1 << 31
"""A calibration batch or sequence length beyond 2**31 is no real run; the memory estimate stays exact below."""
RANKS_SHOWN = 1024
"""Ranks ``plan --json`` lists (the first ones; ``rank_map_total`` says how many there are)."""


@attrs.frozen(kw_only=True)
class LaunchPlan:
    """Everything needed to start one stage, as data (commands are lists: nothing is word-split)."""

    arch: str
    stage: str
    gpu: str
    gpus: int
    layout: ParallelLayout
    layout_source: str
    """``resolved`` (arguments/recipe/env), or ``planned`` (chosen here because nothing set it)."""
    nnodes: int
    nproc_per_node: int
    rank_map: RankMap
    argv: tuple[str, ...]
    """The torchrun command for this plan (single node: ``--standalone``; else c10d rendezvous)."""
    multi_node_argv: tuple[str, ...]
    """The torchrun command with c10d rendezvous, which each node runs (``srun`` starts one per node)."""
    srun_argv: tuple[str, ...]
    sbatch_script: str
    env: tuple[tuple[str, str], ...]
    seed_env: tuple[tuple[str, str], ...]
    """The seed's variables (TP, ETP, ..., LAUNCH_SCRIPT with the right process count) for Megatron-LM's scripts."""
    megatron_args: tuple[str, ...]
    memory: mem.MemoryPlan
    environment: RunEnvironment

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    @property
    def fits(self) -> bool:
        return self.memory.fits

    def summary(self) -> dict[str, Any]:
        """What ``plan --json`` prints."""
        return {
            "arch": self.arch,
            "stage": self.stage,
            "gpu": self.gpu,
            "gpus": self.gpus,
            "world_size": self.world_size,
            "nnodes": self.nnodes,
            "nproc_per_node": self.nproc_per_node,
            "layout": self.layout.summary(),
            "layout_source": self.layout_source,
            "argv": list(self.argv),
            "multi_node_argv": list(self.multi_node_argv),
            "srun_argv": list(self.srun_argv),
            "env": dict(self.env),
            "seed_env": dict(self.seed_env),
            "megatron_args": list(self.megatron_args),
            "memory": self.memory.summary(),
            "fits": self.fits,
            "rank_map": [r.to_dict() for r in self.rank_map[:RANKS_SHOWN]],
            "rank_map_total": len(self.rank_map),
            "sbatch_script": self.sbatch_script,
        }


def plan(
    arch: ModelArch | str,
    gpus: int,
    *,
    stage: str = "quantize",
    gpu: GpuSpec | str = "h100-80gb",
    nodes: int | None = None,
    tensor_parallel: int | None = None,
    pipeline_parallel: int | None = None,
    context_parallel: int | None = None,
    expert_parallel: int | None = None,
    expert_tensor_parallel: int | None = None,
    data_parallel: int | None = None,
    sequence_parallel: bool | None = None,
    first_stage_layers: int | None = None,
    last_stage_layers: int | None = None,
    recipe: ParallelLayout | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    seq_length: int | None = None,
    batch: int = 1,
    quant_format: str = "fp8",
    program: Sequence[str] = DEFAULT_PROGRAM,
    check_memory: bool = True,
    weights_on_host: bool = False,
    master_addr: str | None = None,
    master_port: int | None = None,
    job_name: str | None = None,
    time_limit: str = "04:00:00",
    account: str | None = None,
    partition: str | None = None,
    omp_num_threads: int = 1,
) -> LaunchPlan:
    """Resolve, validate and plan ``stage`` of ``arch`` on ``gpus`` GPUs (in total, over ``nodes`` nodes)."""
    if isinstance(arch, str):
        from ..catalog import get_arch

        arch = get_arch(arch)
    stage = rules.check_stage_name(stage)
    gpu_spec = get_gpu(gpu) if isinstance(gpu, str) else gpu
    gpus = _positive("gpus", gpus)
    batch = _positive("batch", batch, _MAX_TOKENS)
    if seq_length is not None:
        seq_length = _positive("seq_length", seq_length, _MAX_TOKENS)
    per_node_cap = gpu_spec.gpus_per_node
    if nodes is not None:
        nodes = _positive("nodes", nodes)
        if gpus % nodes:
            raise LayoutError(f"--gpus {gpus} is not a multiple of --nodes {nodes}", path="gpus",
                              hint=f"use a multiple of {nodes} (--gpus counts all GPUs of all nodes)")
        per_node_cap = gpus // nodes

    overrides = {
        "tensor_parallel": tensor_parallel, "pipeline_parallel": pipeline_parallel,
        "context_parallel": context_parallel, "expert_parallel": expert_parallel,
        "expert_tensor_parallel": expert_tensor_parallel, "data_parallel": data_parallel,
        "sequence_parallel": sequence_parallel, "first_stage_layers": first_stage_layers,
        "last_stage_layers": last_stage_layers,
    }  # fmt: skip
    renv = resolve(args={k: v for k, v in overrides.items() if v is not None}, recipe=recipe, environ=environ)
    mem_kwargs: dict[str, Any] = {"stage": stage, "batch": batch, "seq_length": seq_length,
                                  "quant_format": quant_format, "weights_on_host": weights_on_host}

    if renv.layout_is_set:
        layout = _resolved_layout(arch, renv, stage, gpus, seq_length)
        source = "resolved"
    else:
        layout = _planned_layout(arch, stage, gpus, gpu_spec, mem_kwargs)
        source = "planned"

    memory_plan = mem.estimate(arch, layout, gpu_spec, **mem_kwargs)
    if check_memory:
        mem.require_fit(memory_plan, arch, gpu_spec, gpus)

    world = layout.world_size
    nnodes = -(-world // per_node_cap)
    if world % nnodes:
        raise LayoutError(f"world size {world} does not spread evenly over {nnodes} nodes of {per_node_cap} GPUs",
                          path="data_parallel", hint=f"use a world size that is a multiple of {nnodes}")
    nproc = world // nnodes
    rank_map = RankMap(layout, nproc)

    port = int(master_port or renv.value("master_port"))
    addr = master_addr or renv.value("master_addr") or MASTER_ADDR_PLACEHOLDER
    name = job_name or f"mtr-{arch.name}-{stage}"
    program = tuple(str(p) for p in program)
    single = ("torchrun", "--standalone", "--nnodes=1", f"--nproc-per-node={nproc}", *program)
    multi = ("torchrun", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
             f"--rdzv-endpoint={addr}:{port}", f"--rdzv-id={name}", *program)
    argv = single if nnodes == 1 else multi
    srun = ("srun", f"--nodes={nnodes}", "--ntasks-per-node=1", f"--gpus-per-node={nproc}", "--kill-on-bad-exit=1",
            *multi)
    env = (*BASE_ENV, ("OMP_NUM_THREADS", str(omp_num_threads)))
    seed_env = _seed_env(arch, layout, renv, nproc)
    script = _sbatch(name=name, nnodes=nnodes, nproc=nproc, env=env, srun=srun, port=port, time_limit=time_limit,
                     account=account, partition=partition, addr_known=addr != MASTER_ADDR_PLACEHOLDER)
    return LaunchPlan(
        arch=arch.name, stage=stage, gpu=gpu_spec.name, gpus=gpus, layout=layout, layout_source=source,
        nnodes=nnodes, nproc_per_node=nproc, rank_map=rank_map, argv=argv, multi_node_argv=multi,
        srun_argv=srun, sbatch_script=script, env=env, seed_env=seed_env,
        megatron_args=tuple(layout.megatron_args()), memory=memory_plan, environment=renv,
    )


# --------------------------------------------------------------------------- layout choice
def _resolved_layout(arch: ModelArch, renv: RunEnvironment, stage: str, gpus: int,
                     seq_length: int | None) -> ParallelLayout:
    fill: dict[str, Any] = {}
    if not renv.is_set("data_parallel"):
        split = renv.model_split
        mp = split.model_parallel_size
        if mp > gpus:
            raise LayoutError(
                f"TP*PP*CP = {mp} needs more than the {gpus} GPU(s) given", path="tensor_parallel",
                hint=_proposal(arch, renv, stage, gpus, seq_length),
            )
        fill["data_parallel"] = _largest_tiling_dp(renv, split, gpus // mp)
    if not renv.is_set("sequence_parallel") and stage in rules.PIPELINE_ONLY_STAGES:
        fill["sequence_parallel"] = False
    layout = renv.layout(**fill)
    return rules.check(arch, layout, stage, seq_length=seq_length, gpus=gpus)


def _largest_tiling_dp(renv: RunEnvironment, split: ParallelLayout, most: int) -> int:
    """The largest DP <= ``most`` with which the expert side ETP*EP*PP tiles the world TP*PP*CP*DP (1 when
    none does). Closed form: ETP*EP*PP divides MP*DP exactly when DP is a multiple of E / gcd(E, MP)."""
    expert = renv.value("expert_tensor_parallel") * renv.value("expert_parallel") * split.pipeline_parallel
    step = expert // math.gcd(expert, split.model_parallel_size)
    return max(1, most // step * step)


def _proposal(arch: ModelArch, renv: RunEnvironment, stage: str, gpus: int, seq_length: int | None) -> str:
    try:
        proposal = rules.replan(arch, None, stage, gpus, seq_length=seq_length)
    except LayoutError:
        return "use more GPUs"
    return f"a valid {stage} layout on {gpus} GPU(s): {proposal.short()}"


def _planned_layout(arch: ModelArch, stage: str, gpus: int, gpu: GpuSpec, mem_kwargs: dict[str, Any]) -> ParallelLayout:
    if stage in rules.PIPELINE_ONLY_STAGES:
        return rules.replan(arch, None, stage, gpus, seq_length=mem_kwargs.get("seq_length"))
    kwargs = {k: v for k, v in mem_kwargs.items() if k != "stage"}
    smallest = mem.smallest_fitting(arch, gpu, gpus, stage=stage, **kwargs)
    if smallest is None:  # nothing fits: plan the default and let the memory check explain
        return rules.replan(arch, None, stage, gpus, seq_length=mem_kwargs.get("seq_length"))
    filled = rules.fill_data_parallel(smallest, gpus)
    return filled if filled is not None else smallest


# --------------------------------------------------------------------------- commands
def _seed_env(arch: ModelArch, layout: ParallelLayout, renv: RunEnvironment, nproc: int) -> tuple[tuple[str, str], ...]:
    """The seed's variables, so Megatron-LM's own scripts run this layout with the right process count."""
    extra = [*layout.megatron_args(sizes=False), *renv.extra_args]
    out: list[tuple[str, str]] = [
        ("TP", str(layout.tensor_parallel)),
        ("ETP", str(layout.expert_tensor_parallel)),
        ("EP", str(layout.expert_parallel)),
        ("PP", str(layout.pipeline_parallel)),
        ("CP", str(layout.context_parallel)),
        ("DP", str(layout.data_parallel)),
        ("MLM_MODEL_CFG", renv.value("model_cfg") or arch.hf_id or arch.name),
    ]
    hf = renv.value("hf_model_ckpt") or arch.hf_id
    if hf:
        out.append(("HF_MODEL_CKPT", hf))
    for var, field in (("MLM_MODEL_CKPT", "mlm_model_ckpt"), ("MLM_MODEL_SAVE", "mlm_model_save"),
                       ("EXPORT_DIR", "export_dir")):
        if renv.value(field):
            out.append((var, renv.value(field)))
    out.append(("MLM_WORK_DIR", renv.value("work_dir")))
    out.append(("MLM_EXTRA_ARGS", shlex.join(extra)))
    # the seed's formula (ETP*EP*PP*CP*DP) leaves TP out; pass the true process count instead
    out.append(("LAUNCH_SCRIPT", shlex.join(["torchrun", f"--nproc_per_node={nproc}"])))
    out.append(("MLM_SKIP_INSTALL", "1"))  # never pip install at launch
    return tuple(out)


def _sbatch(*, name: str, nnodes: int, nproc: int, env: tuple[tuple[str, str], ...], srun: tuple[str, ...],
            port: int, time_limit: str, account: str | None, partition: str | None, addr_known: bool) -> str:
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={nnodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={nproc}",
        f"#SBATCH --time={time_limit}",
        "#SBATCH --exclusive",
    ]
    if account:
        lines.append(f"#SBATCH --account={account}")
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += ["set -euo pipefail", "# generated by modelopt_typed_recipes plan; every argument is quoted"]
    lines += [f"export {k}={q(v)}" for k, v in env]
    if not addr_known:
        # sed reads all of scontrol's output: `head -n 1` can SIGPIPE it, which pipefail turns into a failure
        lines.append('MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)')
        lines.append("export MASTER_ADDR")
    lines.append(f"export MASTER_PORT={port}")
    rendered = []
    for arg in srun:
        if MASTER_ADDR_PLACEHOLDER in arg:
            head, _sep, tail = arg.partition(MASTER_ADDR_PLACEHOLDER)
            rendered.append(f'{q(head)}"${{MASTER_ADDR}}"{q(tail)}')
        else:
            rendered.append(q(arg))
    lines.append(" ".join(rendered))
    return "\n".join(lines) + "\n"


def _positive(name: str, value: Any, maximum: int = MAX_WORLD_SIZE) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LayoutError(f"must be a positive integer, got {brief(value)}", path=name)
    if value > maximum:
        raise LayoutError(f"{brief(value)} is more than this planner handles (at most {maximum:,})", path=name)
    return value
