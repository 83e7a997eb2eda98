"""Which parallel layouts a model and a post-training stage accept, checked before any GPU work.

Model rules are Megatron-Core's divisibility asserts (attention heads and query groups by TP, FFN
sizes by TP and the expert FFN by ETP, layers by PP or an uneven split, experts by EP, the sequence by
2*CP, a fixed padded vocabulary by TP). Stage rules are ModelOpt's and the seed's limits
(``megatron-modelopt-examples.md`` §5.5): auto-quantize needs PP=1; Minitron pruning needs TP=1 and no
SP/CP/EP/VPP; export runs TP=1 and pipeline-only (TP>1 export silently corrupted checkpoints); no
ModelOpt stage builds an interleaved (virtual) pipeline.

``replan`` proposes a layout for the next stage on a number of GPUs, e.g. export on
``PP = the largest divisor of the layer count that fits the GPUs`` (ModelOpt's launcher heuristic),
or an uneven split when the layer count has no useful divisor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import attrs

from ..errors import LayoutError
from ..spec.arch import Attention, ModelArch
from ..spec.layout import ParallelLayout, expert_side_tiles, propose_split

Stage = Literal["quantize", "auto_quantize", "prune", "export", "distill"]
STAGES: tuple[str, ...] = ("quantize", "auto_quantize", "prune", "export", "distill")
STAGE_ALIASES: dict[str, str] = {"auto-quantize": "auto_quantize"}
"""Old spellings still accepted (the CLI's ``--stage auto-quantize`` before 0.2)."""
PIPELINE_ONLY_STAGES = ("prune", "export")

_FIELD_FLAG = {
    "tensor_parallel": "TP",
    "pipeline_parallel": "PP",
    "context_parallel": "CP",
    "expert_parallel": "EP",
    "expert_tensor_parallel": "ETP",
    "data_parallel": "DP",
}


def check_stage_name(stage: str) -> str:
    """The stage's one name (an old alias is accepted); LayoutError with a suggestion for an unknown one."""
    from .techniques import names

    stage = STAGE_ALIASES.get(stage, stage)
    if stage not in STAGES and stage not in names():
        from ..errors import did_you_mean

        raise LayoutError(
            f"unknown stage {stage!r}",
            path="stage",
            hint=did_you_mean(stage, STAGES) or "one of " + ", ".join(STAGES),
        )
    return stage


# --------------------------------------------------------------------------- model rules
def tensor_parallel_problem(arch: ModelArch, tp: int, *, sequence_parallel: bool = False,
                            seq_length: int | None = None) -> str | None:
    """Why ``tp`` does not fit the model's tensor-parallel splits, or ``None``."""
    att = arch.attention
    if att.num_heads % tp:
        return f"TP={tp} does not divide {att.num_heads} attention heads"
    if isinstance(att, Attention) and att.query_groups % tp:
        return f"TP={tp} does not divide {att.query_groups} query groups (key/value heads)"
    counts = arch.layer_counts
    if counts.dense_mlp and arch.ffn_hidden_size % tp:
        return f"TP={tp} does not divide ffn_hidden_size={arch.ffn_hidden_size}"
    if arch.moe is not None and arch.moe.shared_expert_ffn_size and arch.moe.shared_expert_ffn_size % tp:
        return f"TP={tp} does not divide the shared expert's ffn size {arch.moe.shared_expert_ffn_size}"
    if arch.mamba is not None and counts.mamba:
        heads, _dim, groups, _state = arch.mamba.resolved(arch.hidden_size)
        if heads % tp:
            return f"TP={tp} does not divide {heads} Mamba heads"
        if groups % tp:
            return f"TP={tp} does not divide {groups} Mamba groups"
    if arch.vocab.padded_size is not None and arch.vocab.padded_size % tp:
        return f"TP={tp} does not divide the fixed padded vocabulary of {arch.vocab.padded_size} rows"
    seq = seq_length or arch.seq_length
    if sequence_parallel and seq % tp:
        return f"sequence parallelism splits the sequence over TP: TP={tp} does not divide seq_length={seq}"
    return None


def valid_tensor_parallel(arch: ModelArch, *, limit: int = 8) -> list[int]:
    """TP sizes up to ``limit`` that every tensor-parallel split of the model accepts."""
    return [t for t in range(1, limit + 1) if tensor_parallel_problem(arch, t) is None]


def valid_expert_tensor_parallel(arch: ModelArch, *, limit: int = 8) -> list[int]:
    if arch.moe is None:
        return list(range(1, limit + 1))
    return [t for t in range(1, limit + 1) if arch.moe.ffn_hidden_size % t == 0]


def valid_expert_parallel(arch: ModelArch, *, limit: int = 64) -> list[int]:
    if arch.moe is None:
        return [1]
    return [e for e in range(1, min(limit, arch.moe.num_experts) + 1) if arch.moe.num_experts % e == 0]


def valid_pipeline_parallel(arch: ModelArch, *, limit: int = 16) -> list[int]:
    """PP sizes that split the layers evenly (an uneven split allows any PP up to the layer count)."""
    stages = arch.mamba.pipeline_stages if arch.mamba is not None else None
    if stages:
        return [len(stages)]
    return [p for p in range(1, min(limit, arch.num_layers) + 1) if arch.num_layers % p == 0]


def model_problems(arch: ModelArch, layout: ParallelLayout, *, seq_length: int | None = None) -> list[LayoutError]:
    """Every way ``layout`` breaks a Megatron-Core divisibility rule of ``arch`` (empty: it fits)."""
    out: list[LayoutError] = []
    tp, pp, cp = layout.tensor_parallel, layout.pipeline_parallel, layout.context_parallel
    ep, etp = layout.expert_parallel, layout.expert_tensor_parallel
    seq = seq_length or arch.seq_length

    why = tensor_parallel_problem(arch, tp, sequence_parallel=layout.sequence_parallel, seq_length=seq)
    if why:
        choices = valid_tensor_parallel(arch, limit=max(8, min(tp, 64)))
        out.append(LayoutError(why, path="tensor_parallel", hint="use " + _join(choices)))

    # experts
    if arch.moe is None:
        if ep > 1:
            out.append(LayoutError(f"EP={ep} but {arch.name} has no experts", path="expert_parallel", hint="use 1"))
    else:
        if arch.moe.num_experts % ep:
            out.append(LayoutError(
                f"EP={ep} does not divide {arch.moe.num_experts} experts",
                path="expert_parallel",
                hint="use " + _join(valid_expert_parallel(arch, limit=max(64, ep))[:12]),
            ))
        if arch.moe.ffn_hidden_size % etp:
            out.append(LayoutError(
                f"ETP={etp} does not divide the expert ffn size {arch.moe.ffn_hidden_size}",
                path="expert_tensor_parallel",
                hint="use " + _join(valid_expert_tensor_parallel(arch, limit=max(8, etp))),
            ))

    # pipeline
    stages = arch.mamba.pipeline_stages if arch.mamba is not None else None
    if stages:
        chunks = pp * (layout.virtual_pipeline or 1)
        if layout.uneven:
            out.append(LayoutError(
                "the hybrid pattern splits the pipeline with '|'; first/last stage layer counts are not allowed",
                path="first_stage_layers", hint="unset first_stage_layers and last_stage_layers",
            ))
        elif len(stages) != chunks:
            out.append(LayoutError(
                f"the hybrid pattern has {len(stages)} pipeline segments ('|') but PP*VPP = {chunks}",
                path="pipeline_parallel", hint=f"use pipeline_parallel={len(stages)}",
            ))
    elif arch.mamba is not None and layout.uneven:
        out.append(LayoutError(
            "a hybrid model splits its pipeline evenly or by '|' in its pattern, not by first/last stage layers",
            path="first_stage_layers", hint="unset first/last_stage_layers; put '|' in mamba.pattern instead",
        ))
    elif pp > arch.num_layers:
        out.append(LayoutError(
            f"PP={pp} exceeds num_layers={arch.num_layers}: a stage would be empty",
            path="pipeline_parallel", hint=f"use at most {arch.num_layers}",
        ))
    else:
        try:
            per_stage = layout.stage_layers(arch.num_layers)
        except LayoutError as err:
            out.append(err)
        else:
            vpp = layout.virtual_pipeline
            if vpp is not None and any(n % vpp for n in per_stage):
                out.append(LayoutError(
                    f"VPP={vpp} does not divide the {per_stage[0]} layers of each pipeline stage",
                    path="virtual_pipeline",
                    hint="use " + _join([v for v in range(1, per_stage[0] + 1) if per_stage[0] % v == 0]),
                ))

    # context
    if cp > 1 and seq % (2 * cp):
        out.append(LayoutError(
            f"context parallelism splits the sequence in 2*CP chunks: 2*CP={2 * cp} does not divide seq_length={seq}",
            path="context_parallel",
            hint="use " + _join([c for c in range(1, 17) if c == 1 or seq % (2 * c) == 0]),
        ))
    return out


# --------------------------------------------------------------------------- stage rules
def stage_problems(layout: ParallelLayout, stage: str) -> list[LayoutError]:
    """Every limit of ``stage`` that ``layout`` breaks."""
    stage = check_stage_name(stage)
    out: list[LayoutError] = []
    if layout.virtual_pipeline is not None:
        out.append(LayoutError(
            f"{stage}: ModelOpt's Megatron model builder does not support an interleaved (virtual) pipeline",
            path="virtual_pipeline", hint="unset virtual_pipeline",
        ))
    if stage == "auto_quantize" and layout.pipeline_parallel > 1:
        out.append(LayoutError(
            f"auto-quantize needs PP=1 (ModelOpt scores every layer in one process), got PP={layout.pipeline_parallel}",
            path="pipeline_parallel", hint="use pipeline_parallel=1 with tensor or expert parallelism",
        ))
    if stage == "distill":
        # the distillation executors train with one pipeline stage: ModelOpt's Megatron-Core plugin needs the
        # P2P shapes widened for the teacher's outputs (get_tensor_shapes_adjust_fn_for_distillation) and a
        # pipelined training schedule, which the runtime does not drive; expert parallelism needs the
        # expert-data-parallel gradient reduction of a Megatron-LM training loop
        # (context parallelism: the loss mask is not split over context ranks)
        for field, value, flag in (("pipeline_parallel", layout.pipeline_parallel, "PP"),
                                   ("expert_parallel", layout.expert_parallel, "EP"),
                                   ("context_parallel", layout.context_parallel, "CP")):
            if value > 1:
                out.append(LayoutError(
                    f"distill: {flag}={value} is not supported: the distillation loop trains one pipeline stage "
                    "without expert or context parallelism", path=field,
                    hint="use 1; spread the model with tensor_parallel and data_parallel instead"))
    if stage == "prune":
        why = {
            "tensor_parallel": (layout.tensor_parallel != 1, f"TP={layout.tensor_parallel}", "use 1 (PP is allowed)"),
            "sequence_parallel": (layout.sequence_parallel, "sequence parallelism", "set sequence_parallel=false"),
            "context_parallel": (layout.context_parallel != 1, f"CP={layout.context_parallel}", "use 1"),
            "expert_parallel": (layout.expert_parallel != 1, f"EP={layout.expert_parallel}", "use 1"),
            "expert_tensor_parallel": (layout.expert_tensor_parallel != 1, f"ETP={layout.expert_tensor_parallel}",
                                       "use 1"),
        }
        for path, (bad, what, hint) in why.items():
            if bad:
                out.append(LayoutError(
                    f"prune: ModelOpt's Minitron pruning does not support {what} (it needs TP=1, no SP/CP/EP/VPP)",
                    path=path, hint=hint,
                ))
    if stage == "export":
        for path in ("tensor_parallel", "expert_tensor_parallel", "expert_parallel", "context_parallel",
                     "data_parallel"):
            value = getattr(layout, path)
            if value != 1:
                reason = ("TP>1 export silently corrupted checkpoints (TP shards are not gathered)"
                          if path in ("tensor_parallel", "expert_tensor_parallel")
                          else "export is pipeline-parallel only")
                out.append(LayoutError(
                    f"export: {_FIELD_FLAG[path]}={value} is not allowed: {reason}",
                    path=path, hint="use 1; spread the model with pipeline_parallel instead",
                ))
        if layout.sequence_parallel:
            out.append(LayoutError("export: sequence parallelism is not allowed (TP=1)", path="sequence_parallel",
                                   hint="set sequence_parallel=false"))
    return out


def problems(arch: ModelArch, layout: ParallelLayout, stage: str = "quantize", *,
             seq_length: int | None = None) -> list[LayoutError]:
    """Stage limits first (they explain the most), then the model's divisibility rules."""
    return [*stage_problems(layout, stage), *model_problems(arch, layout, seq_length=seq_length)]


def check(arch: ModelArch, layout: ParallelLayout, stage: str = "quantize", *, seq_length: int | None = None,
          gpus: int | None = None) -> ParallelLayout:
    """Raise the first problem of ``layout`` for ``arch`` and ``stage``; with ``gpus`` the hint proposes a layout."""
    found = problems(arch, layout, stage, seq_length=seq_length)
    if gpus is not None and layout.world_size > gpus:
        found.append(LayoutError(
            f"the layout needs TP*PP*CP*DP = {layout.world_size} GPUs but {gpus} are given",
            path="data_parallel" if layout.data_parallel > 1 else "tensor_parallel",
            hint=_fewer_gpus_hint(layout, gpus),
        ))
    if not found:
        return layout
    err = found[0]
    if gpus is not None:
        try:
            proposal = replan(arch, layout, stage, gpus, seq_length=seq_length)
        except LayoutError:
            proposal = None
        if proposal is not None:
            extra = f"a valid {stage} layout on {gpus} GPU(s): {proposal.short()}"
            err = LayoutError(err.message, path=err.path, hint=f"{err.hint}; {extra}" if err.hint else extra)
    raise err


def _fewer_gpus_hint(layout: ParallelLayout, gpus: int) -> str:
    """Name the setting to lower: data_parallel when the model fits without it, else the model's own split."""
    dense = layout.model_parallel_size
    if layout.data_parallel > 1 and gpus % dense == 0:
        return f"data_parallel: {gpus // dense}"
    return (f"lower tensor_parallel/pipeline_parallel/context_parallel so that TP*PP*CP = {dense} becomes "
            f"at most {gpus}")


def is_valid(arch: ModelArch, layout: ParallelLayout, stage: str = "quantize", *,
             seq_length: int | None = None) -> bool:
    return not problems(arch, layout, stage, seq_length=seq_length)


# --------------------------------------------------------------------------- re-planning
def export_pipeline(arch: ModelArch, gpus: int) -> ParallelLayout:
    """Pipeline-only layout on at most ``gpus`` GPUs.

    ModelOpt's launcher heuristic, PP = the largest divisor of the layer count that fits the GPUs,
    unless that leaves more than half of them idle (a prime layer count); then the uneven split with
    the smallest largest stage (Kimi-K2's 61 layers on 16 GPUs: 3 + 14*4 + 2). Hybrid models split
    only evenly or by the '|' stages of their pattern.
    """
    stages = arch.mamba.pipeline_stages if arch.mamba is not None else None
    if stages:
        if len(stages) > gpus:
            raise LayoutError(
                f"the hybrid pattern fixes {len(stages)} pipeline stages ('|') but only {gpus} GPU(s) are given",
                path="pipeline_parallel", hint=f"use at least {len(stages)} GPUs",
            )
        return ParallelLayout(pipeline_parallel=len(stages))
    layers = arch.num_layers
    top = min(gpus, layers)
    divisor = max(d for d in range(1, top + 1) if layers % d == 0)
    if 2 * divisor > top or arch.mamba is not None:
        return ParallelLayout(pipeline_parallel=divisor)
    best: tuple[tuple[int, int], ParallelLayout] | None = None
    for pp in sorted(_pipeline_options(arch, gpus)):
        layout = _pipeline_layout(arch, pp)
        if layout is None:
            continue
        key = (max(layout.stage_layers(layers)), pp)
        if best is None or key < best[0]:
            best = (key, layout)
    if best is None:  # pragma: no cover - PP=1 always splits
        raise LayoutError(f"no pipeline split of {arch.name} fits {gpus} GPU(s)", path="gpus")
    return best[1]


def fill_data_parallel(layout: ParallelLayout, gpus: int) -> ParallelLayout | None:
    """The same model split with as much data parallelism as ``gpus`` allows (``None``: it does not fit)."""
    mp = layout.model_parallel_size
    for dp in range(gpus // mp, 0, -1):
        try:
            return attrs.evolve(layout, data_parallel=dp)
        except LayoutError:
            continue
    return None


def candidate_layouts(arch: ModelArch, stage: str, gpus: int, *, seq_length: int | None = None,
                      sequence_parallel: bool = False) -> Iterator[ParallelLayout]:
    """Valid layouts for ``stage`` with DP=1, one model replica on at most ``gpus`` GPUs, smallest first.

    CP stays 1 (context parallelism only pays off for long sequences; ask for it explicitly). TP and
    ETP range over the model's valid splits, EP over the divisors of the expert count, PP over the
    even splits plus one uneven split on every GPU.
    """
    stage = check_stage_name(stage)
    if stage in PIPELINE_ONLY_STAGES:
        pps = _pipeline_options(arch, gpus)
        for pp in sorted(pps):
            layout = _pipeline_layout(arch, pp)
            if layout is not None and not problems(arch, layout, stage, seq_length=seq_length):
                yield layout
        return
    tps = [t for t in valid_tensor_parallel(arch, limit=min(gpus, 64))]
    eps = [e for e in valid_expert_parallel(arch, limit=gpus)]
    pp_sizes = [1] if stage == "auto_quantize" else sorted(_even_pipeline_options(arch, gpus))
    found: list[tuple[tuple[int, ...], ParallelLayout]] = []
    for tp in tps:
        etps = sorted({tp, 1} if arch.moe is not None else {tp})
        for pp in pp_sizes:
            if tp * pp > gpus:
                continue
            base = _pipeline_layout(arch, pp)
            if base is None:
                continue
            for ep in eps:
                for etp in etps:
                    if etp * ep * pp > gpus:
                        continue
                    # the dense part must tile the expert part: DP absorbs the difference
                    dp = 1
                    while not expert_side_tiles(world_size=tp * pp * dp, expert_tensor_parallel=etp,
                                                expert_parallel=ep, pipeline_parallel=pp) and tp * pp * dp <= gpus:
                        dp += 1
                    if tp * pp * dp > gpus:
                        continue
                    sp = sequence_parallel and tp > 1 and stage not in PIPELINE_ONLY_STAGES
                    try:
                        layout = attrs.evolve(base, tensor_parallel=tp, expert_parallel=ep,
                                              expert_tensor_parallel=etp, data_parallel=dp, sequence_parallel=sp)
                    except LayoutError:
                        continue
                    if problems(arch, layout, stage, seq_length=seq_length):
                        if sp:
                            layout = attrs.evolve(layout, sequence_parallel=False)
                            if problems(arch, layout, stage, seq_length=seq_length):
                                continue
                        else:
                            continue
                    key = (layout.world_size, max(tp * pp, etp * ep * pp), tp, pp, ep, etp)
                    found.append((key, layout))
    for _key, layout in sorted(found, key=lambda kv: kv[0]):
        yield layout


def replan(arch: ModelArch, layout: ParallelLayout | None, stage: str, gpus: int, *,
           seq_length: int | None = None) -> ParallelLayout:
    """A valid layout for ``stage`` on at most ``gpus`` GPUs, kept as close to ``layout`` as the stage allows.

    prune/export: pipeline only (``export_pipeline``). quantize/auto-quantize/distill: the given split
    with the stage's forbidden dimensions reset (auto-quantize: PP=1; VPP never), an uneven split when
    the layers do not divide, and DP filling the GPUs; if that split does not fit the GPUs or the model,
    the smallest valid split, filled with DP.
    """
    stage = check_stage_name(stage)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise LayoutError(f"must be a positive integer, got {gpus!r}", path="gpus")
    if stage in PIPELINE_ONLY_STAGES:
        out = export_pipeline(arch, gpus)
        if problems(arch, out, stage, seq_length=seq_length):  # pragma: no cover - export_pipeline is valid
            raise problems(arch, out, stage, seq_length=seq_length)[0]
        return out
    start = layout or ParallelLayout()
    proposal = _adapt(arch, start, stage, gpus, seq_length)
    if proposal is not None:
        return proposal
    for candidate in candidate_layouts(arch, stage, gpus, seq_length=seq_length,
                                       sequence_parallel=start.sequence_parallel):
        filled = fill_data_parallel(candidate, gpus)
        if filled is not None and not problems(arch, filled, stage, seq_length=seq_length):
            return filled
    raise LayoutError(  # only a '|'-split hybrid pattern with more segments than GPUs gets here
        f"no valid {stage} layout for {arch.name} on {gpus} GPU(s)", path="gpus",
        hint="use more GPUs",
    )


def _adapt(arch: ModelArch, start: ParallelLayout, stage: str, gpus: int,
           seq_length: int | None) -> ParallelLayout | None:
    changes: dict[str, object] = {"virtual_pipeline": None}
    if stage in ("auto_quantize", "distill"):
        changes.update(pipeline_parallel=1, first_stage_layers=None, last_stage_layers=None)
    if stage == "distill":
        changes.update(expert_parallel=1, context_parallel=1)
    pp = int(changes.get("pipeline_parallel", start.pipeline_parallel))  # type: ignore[call-overload]
    stages = arch.mamba.pipeline_stages if arch.mamba is not None else None
    if stages:
        if stage in ("auto_quantize", "distill") and len(stages) != 1:
            return None
        changes.update(pipeline_parallel=len(stages), first_stage_layers=None, last_stage_layers=None)
    elif pp > 1 and not start.uneven and arch.num_layers % pp and pp <= arch.num_layers:
        first, last = propose_split(arch.num_layers, pp)
        changes.update(first_stage_layers=first, last_stage_layers=last)
    if start.tensor_parallel == 1:
        changes["sequence_parallel"] = False
    try:
        base = attrs.evolve(start, data_parallel=1, **changes)  # type: ignore[arg-type]
    except LayoutError:
        base = None
    if base is None:
        # the expert side may need some DP to tile; try the smallest DP that does
        for dp in range(2, gpus + 1):
            try:
                base = attrs.evolve(start, data_parallel=dp, **changes)  # type: ignore[arg-type]
                break
            except LayoutError:
                continue
        if base is None:
            return None
    if base.world_size > gpus:
        return None
    filled = fill_data_parallel(base, gpus)
    if filled is None or problems(arch, filled, stage, seq_length=seq_length):
        return None
    return filled


def _pipeline_options(arch: ModelArch, gpus: int) -> set[int]:
    """PP sizes worth trying: the '|' stages of a hybrid pattern; the even splits; any PP up to the GPU
    count with an uneven split (not for hybrid models: they split evenly or by '|')."""
    stages = arch.mamba.pipeline_stages if arch.mamba is not None else None
    if stages:
        return {len(stages)} if len(stages) <= gpus else set()
    top = min(gpus, arch.num_layers)
    if arch.mamba is not None:
        return {d for d in range(1, top + 1) if arch.num_layers % d == 0}
    return set(range(1, top + 1))


def _even_pipeline_options(arch: ModelArch, gpus: int) -> set[int]:
    """The even splits plus the best pipeline-only split (keeps the candidate search small)."""
    options = {p for p in _pipeline_options(arch, gpus) if arch.num_layers % p == 0 or arch.mamba is not None}
    try:
        options.add(export_pipeline(arch, gpus).pipeline_parallel)
    except LayoutError:
        pass
    return options


def _pipeline_layout(arch: ModelArch, pp: int) -> ParallelLayout | None:
    stages = arch.mamba.pipeline_stages if arch.mamba is not None else None
    if stages:
        return ParallelLayout(pipeline_parallel=pp) if pp == len(stages) else None
    if arch.mamba is not None and arch.num_layers % pp:
        return None
    first, last = propose_split(arch.num_layers, pp)
    return ParallelLayout(pipeline_parallel=pp, first_stage_layers=first, last_stage_layers=last)


def _join(values: list[int]) -> str:
    text = [str(v) for v in values]
    if len(text) <= 1:
        return "".join(text) or "none"
    return ", ".join(text[:-1]) + " or " + text[-1]
