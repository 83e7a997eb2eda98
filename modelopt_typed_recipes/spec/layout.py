"""The parallel layout of one run: how many GPUs split the model which way.

The seed's ``conf/arguments.sh`` reads TP, ETP, EP, PP, CP and DP from the environment unchecked and
starts ``ETP*EP*PP*CP*DP`` processes, a formula that leaves TP out. Here the world size is derived
the way Megatron-Core derives it (``TP*PP*CP*DP``), the expert side must tile that same world
(``ETP*EP*PP`` divides it) and every invalid combination is a :class:`LayoutError` naming the field.

Rank coordinates follow Megatron-Core's default order ``tp-cp-ep-dp-pp``
(``megatron/core/parallel_state.py``: one ``RankGenerator`` for the dense part with EP=1, one for the
experts with CP=1), so the rank map printed by ``plan`` is the one ``parallel_state`` builds.

Model-dependent rules (heads by TP, layers by PP, ...) live in :mod:`modelopt_typed_recipes.plan.rules`.
Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import LayoutError, brief
from ._validate import divisors

SIZE_FIELDS = (
    "tensor_parallel",
    "pipeline_parallel",
    "context_parallel",
    "expert_parallel",
    "expert_tensor_parallel",
    "data_parallel",
)
LAYOUT_FIELDS = (*SIZE_FIELDS, "sequence_parallel", "virtual_pipeline", "first_stage_layers", "last_stage_layers")
"""Every field of :class:`ParallelLayout`, in the order the resolver shows them."""

MEGATRON_FLAGS = {
    "tensor_parallel": "--tensor-model-parallel-size",
    "pipeline_parallel": "--pipeline-model-parallel-size",
    "context_parallel": "--context-parallel-size",
    "expert_parallel": "--expert-model-parallel-size",
    "expert_tensor_parallel": "--expert-tensor-parallel-size",
    "sequence_parallel": "--sequence-parallel",
    "virtual_pipeline": "--virtual-pipeline-model-parallel-size",
    "first_stage_layers": "--decoder-first-pipeline-num-layers",
    "last_stage_layers": "--decoder-last-pipeline-num-layers",
}
"""Megatron-LM's flag for each layout field (``sequence_parallel`` is a switch; DP has no flag: it is derived).
The one table behind :meth:`ParallelLayout.megatron_args` and the resolver's reading of ``MLM_EXTRA_ARGS``."""
_SIZE_FLAGS = SIZE_FIELDS[:-1]  # the sizes Megatron-LM takes as flags (all but data_parallel)


def expert_side_tiles(*, world_size: int, expert_tensor_parallel: int, expert_parallel: int,
                      pipeline_parallel: int) -> bool:
    """Whether the expert side ``ETP*EP*PP`` divides the world: Megatron-Core lays its expert groups over
    the same ranks as the dense ``TP*PP*CP*DP``, so one must tile the other."""
    return world_size % (expert_tensor_parallel * expert_parallel * pipeline_parallel) == 0


MAX_WORLD_SIZE = 1 << 20
"""1,048,576 processes: far beyond any cluster, and a bound that keeps every divisor or rank computation
over a layout instant (an absurd size is an error, not a hang)."""


def _size(_inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LayoutError(f"must be a positive integer, got {brief(value)}", path=attr.name)
    if value > MAX_WORLD_SIZE:
        raise LayoutError(f"{attr.name}={brief(value)} is more than any cluster has (at most {MAX_WORLD_SIZE:,})",
                          path=attr.name)


def _optional_size(_inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if value is not None:
        _size(_inst, attr, value)


def _bool(_inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise LayoutError(f"must be true or false, got {brief(value)}", path=attr.name)


@attrs.frozen(kw_only=True)
class RankCoords:
    """Where one global rank sits in every parallel group (Megatron-Core's group-local ranks)."""

    rank: int
    tensor: int
    pipeline: int
    context: int
    data: int
    expert: int
    expert_tensor: int
    expert_data: int


@attrs.frozen(kw_only=True)
class ParallelLayout:
    """Tensor, pipeline, context, expert, expert-tensor and data parallel sizes of one run."""

    tensor_parallel: int = attrs.field(default=1, validator=_size)
    pipeline_parallel: int = attrs.field(default=1, validator=_size)
    context_parallel: int = attrs.field(default=1, validator=_size)
    expert_parallel: int = attrs.field(default=1, validator=_size)
    expert_tensor_parallel: int = attrs.field(
        default=attrs.Factory(lambda self: self.tensor_parallel, takes_self=True), validator=_size
    )
    """Tensor parallelism inside the experts; Megatron's default is ``tensor_parallel``."""
    data_parallel: int = attrs.field(default=1, validator=_size)
    sequence_parallel: bool = attrs.field(default=False, validator=_bool)
    """Shard layer norms and dropout along the sequence over the TP group (needs TP>1)."""
    virtual_pipeline: int | None = attrs.field(default=None, validator=_optional_size)
    """Interleaved schedule: model chunks per pipeline rank (``None``: not interleaved)."""
    first_stage_layers: int | None = attrs.field(default=None, validator=_optional_size)
    """Uneven split: layers of the first pipeline stage (``--decoder-first-pipeline-num-layers``)."""
    last_stage_layers: int | None = attrs.field(default=None, validator=_optional_size)
    """Uneven split: layers of the last pipeline stage (``--decoder-last-pipeline-num-layers``)."""

    def __attrs_post_init__(self) -> None:
        if self.world_size > MAX_WORLD_SIZE:
            raise LayoutError(
                f"TP*PP*CP*DP = {self.world_size:,} processes is more than any cluster has (at most "
                f"{MAX_WORLD_SIZE:,})", path="data_parallel", hint="check the sizes: their product is the world size")
        expert_side = self.expert_tensor_parallel * self.expert_parallel * self.pipeline_parallel
        if not expert_side_tiles(world_size=self.world_size, expert_tensor_parallel=self.expert_tensor_parallel,
                                 expert_parallel=self.expert_parallel, pipeline_parallel=self.pipeline_parallel):
            raise LayoutError(
                f"the expert side ETP*EP*PP = {self.expert_tensor_parallel}*{self.expert_parallel}*"
                f"{self.pipeline_parallel} = {expert_side} does not divide the world size "
                f"TP*PP*CP*DP = {self.world_size}",
                path="expert_parallel",
                hint=self._expert_side_fix(),
            )
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise LayoutError(
                "sequence parallelism shards over the tensor-parallel group and needs tensor_parallel > 1",
                path="sequence_parallel",
                hint="set sequence_parallel=false, or tensor_parallel > 1",
            )
        if self.virtual_pipeline is not None and self.pipeline_parallel == 1:
            raise LayoutError(
                "an interleaved (virtual) pipeline needs pipeline_parallel > 1",
                path="virtual_pipeline",
                hint="unset virtual_pipeline, or use pipeline_parallel > 1",
            )
        uneven = self.first_stage_layers is not None or self.last_stage_layers is not None
        if uneven and self.pipeline_parallel == 1:
            raise LayoutError(
                "first/last stage layer counts need pipeline_parallel > 1",
                path="first_stage_layers" if self.first_stage_layers is not None else "last_stage_layers",
                hint="unset them, or use pipeline_parallel > 1",
            )
        if uneven and self.virtual_pipeline is not None:
            raise LayoutError(
                "an uneven pipeline split cannot be combined with a virtual pipeline here",
                path="virtual_pipeline",
                hint="unset virtual_pipeline or the first/last stage layer counts",
            )

    def _expert_side_fix(self) -> str:
        """The settings that make ETP*EP*PP divide the world. Expert parallelism borrows its ranks from data
        parallelism (the experts' groups lie over the same TP*PP*CP*DP processes), so the usual fix is more
        data_parallel; a smaller expert_parallel also works."""
        side = self.expert_tensor_parallel * self.expert_parallel * self.pipeline_parallel
        dense = self.world_size // self.data_parallel
        dp = next(d for d in range(self.data_parallel, self.data_parallel + side + 1) if (dense * d) % side == 0)
        smaller = [e for e in divisors(self.world_size // self.pipeline_parallel)
                   if expert_side_tiles(world_size=self.world_size, expert_tensor_parallel=self.expert_tensor_parallel,
                                        expert_parallel=e, pipeline_parallel=self.pipeline_parallel)] or [1]
        return (f"data_parallel: {dp} (expert parallelism borrows its ranks from data parallelism: "
                f"{self.expert_parallel} expert groups need TP*PP*CP*DP = "
                f"{dense * dp} processes), or expert_parallel in {_join(smaller)}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def world_size(self) -> int:
        """Processes the run starts: TP*PP*CP*DP (the seed's ETP*EP*PP*CP*DP leaves TP out)."""
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel * self.data_parallel

    @property
    def model_parallel_size(self) -> int:
        """GPUs one model replica spans in its dense part (TP*PP*CP)."""
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel

    @property
    def expert_data_parallel(self) -> int:
        """Replicas of each expert: world / (ETP*EP*PP)."""
        return self.world_size // (self.expert_tensor_parallel * self.expert_parallel * self.pipeline_parallel)

    def parallel_state_kwargs(self) -> dict[str, int]:
        """Keyword arguments of Megatron-Core's ``parallel_state.initialize_model_parallel`` for this layout
        (DP is what is left of the world; the interleaved schedule is not passed: models are unwrapped)."""
        return {
            "tensor_model_parallel_size": self.tensor_parallel,
            "pipeline_model_parallel_size": self.pipeline_parallel,
            "context_parallel_size": self.context_parallel,
            "expert_model_parallel_size": self.expert_parallel,
            "expert_tensor_parallel_size": self.expert_tensor_parallel,
        }

    def transformer_config_kwargs(self) -> dict[str, Any]:
        """The layout's part of Megatron-Core's ``TransformerConfig``: the group sizes, sequence
        parallelism and an uneven first/last pipeline split."""
        out: dict[str, Any] = {**self.parallel_state_kwargs(), "sequence_parallel": self.sequence_parallel}
        if self.first_stage_layers is not None:
            out["num_layers_in_first_pipeline_stage"] = self.first_stage_layers
        if self.last_stage_layers is not None:
            out["num_layers_in_last_pipeline_stage"] = self.last_stage_layers
        return out

    @property
    def uneven(self) -> bool:
        return self.first_stage_layers is not None or self.last_stage_layers is not None

    def stage_layers(self, num_layers: int) -> tuple[int, ...]:
        """Decoder layers on each pipeline stage, following Megatron's even / first-last rules."""
        return stage_layers(num_layers, self.pipeline_parallel, self.first_stage_layers, self.last_stage_layers)

    # ------------------------------------------------------------------ ranks
    def coords(self, rank: int) -> RankCoords:
        """Group-local ranks of ``rank`` in Megatron-Core's ``tp-cp-ep-dp-pp`` order.

        Dense part (EP=1): ``rank = tp + TP*(cp + CP*(dp + DP*pp))``.
        Expert part (CP=1): ``rank = etp + ETP*(ep + EP*(edp + EDP*pp))``.
        """
        if not 0 <= rank < self.world_size:
            raise LayoutError(f"rank {rank} is outside the world of {self.world_size}", path="rank")
        tp, cp, dp = self.tensor_parallel, self.context_parallel, self.data_parallel
        tensor, rest = rank % tp, rank // tp
        context, rest = rest % cp, rest // cp
        data, pipeline = rest % dp, rest // dp
        etp, ep, edp = self.expert_tensor_parallel, self.expert_parallel, self.expert_data_parallel
        e_tensor, rest = rank % etp, rank // etp
        expert, rest = rest % ep, rest // ep
        e_data = rest % edp
        return RankCoords(
            rank=rank,
            tensor=tensor,
            pipeline=pipeline,
            context=context,
            data=data,
            expert=expert,
            expert_tensor=e_tensor,
            expert_data=e_data,
        )

    def rank_map(self) -> tuple[RankCoords, ...]:
        return tuple(self.coords(r) for r in range(self.world_size))

    # ------------------------------------------------------------------ Megatron
    def megatron_args(self, *, sizes: bool = True) -> list[str]:
        """The Megatron-LM flags for this layout (DP stays implicit, as in Megatron); ``sizes=False``: only
        the sequence-parallel, virtual-pipeline and uneven-split flags (what the seed's ``MLM_EXTRA_ARGS``
        carries beside its TP/PP/CP/EP/ETP variables)."""
        out: list[str] = []
        if sizes:
            for field in _SIZE_FLAGS:
                out += [MEGATRON_FLAGS[field], str(getattr(self, field))]
        if self.sequence_parallel:
            out.append(MEGATRON_FLAGS["sequence_parallel"])
        for field in ("virtual_pipeline", "first_stage_layers", "last_stage_layers"):
            value = getattr(self, field)
            if value is not None:
                out += [MEGATRON_FLAGS[field], str(value)]
        return out

    def short(self) -> str:
        """``TP2 PP4 CP1 EP1 ETP2 DP1`` plus SP/VPP/split when set: one line for tables and errors."""
        parts = [
            f"TP{self.tensor_parallel}",
            f"PP{self.pipeline_parallel}",
            f"CP{self.context_parallel}",
            f"EP{self.expert_parallel}",
            f"ETP{self.expert_tensor_parallel}",
            f"DP{self.data_parallel}",
        ]
        if self.sequence_parallel:
            parts.append("SP")
        if self.virtual_pipeline is not None:
            parts.append(f"VPP{self.virtual_pipeline}")
        if self.uneven:
            parts.append(f"split {self.first_stage_layers or '-'}/{self.last_stage_layers or '-'}")
        return " ".join(parts)

    def summary(self) -> dict[str, Any]:
        """The layout as ``plan --json`` prints it: short names plus the derived sizes."""
        return {
            "tensor": self.tensor_parallel,
            "pipeline": self.pipeline_parallel,
            "context": self.context_parallel,
            "expert": self.expert_parallel,
            "expert_tensor": self.expert_tensor_parallel,
            "data": self.data_parallel,
            "expert_data": self.expert_data_parallel,
            "sequence_parallel": self.sequence_parallel,
            "virtual_pipeline": self.virtual_pipeline,
            "first_stage_layers": self.first_stage_layers,
            "last_stage_layers": self.last_stage_layers,
            "world_size": self.world_size,
        }


def stage_layers(num_layers: int, pipeline_parallel: int, first_stage_layers: int | None = None,
                 last_stage_layers: int | None = None) -> tuple[int, ...]:
    """Decoder layers on each of ``pipeline_parallel`` stages: an even split, or the given first/last stage
    sizes with the middle stages splitting the rest evenly (each non-empty), as Megatron requires.
    The one split rule behind :meth:`ParallelLayout.stage_layers` and the launch profiles."""
    pp, first, last = pipeline_parallel, first_stage_layers, last_stage_layers
    if first is None and last is None:
        if num_layers % pp:
            raise LayoutError(
                f"pipeline_parallel={pp} does not divide num_layers={num_layers}",
                path="pipeline_parallel",
                hint="use " + _join([d for d in divisors(num_layers) if d <= max(pp, 8)])
                + ", or an uneven split (first_stage_layers/last_stage_layers)",
            )
        return (num_layers // pp,) * pp
    middle_stages = pp - (first is not None) - (last is not None)
    rest = num_layers - (first or 0) - (last or 0)
    if (rest < 0 or middle_stages < 0 or (middle_stages == 0 and rest != 0)
            or (middle_stages > 0 and (rest <= 0 or rest % middle_stages))):
        raise LayoutError(
            f"first_stage_layers={first}, last_stage_layers={last} leave {rest} layers for "
            f"{max(middle_stages, 0)} middle stage(s) of num_layers={num_layers}, which is not an even, non-empty split",
            path="first_stage_layers" if first is not None else "last_stage_layers",
            hint=_split_hint(num_layers, pp),
        )
    per = rest // middle_stages if middle_stages else 0
    return (*([first] if first is not None else []), *([per] * middle_stages), *([last] if last is not None else []))


def split_options(num_layers: int, pipeline_parallel: int) -> list[tuple[int | None, int | None, tuple[int, ...]]]:
    """Every split Megatron accepts for ``num_layers`` over ``pipeline_parallel`` stages with at most
    ``ceil(L/PP)`` layers in each middle stage: (first, last, layers per stage)."""
    pp, n = pipeline_parallel, num_layers
    out: list[tuple[int | None, int | None, tuple[int, ...]]] = []
    if pp < 1 or n < pp:
        return out
    if n % pp == 0:
        out.append((None, None, (n // pp,) * pp))
    if pp == 1:
        return out
    for per in range(1, -(-n // pp) + 1):
        rest = n - per * (pp - 2)
        if rest >= 2:
            first, last = -(-rest // 2), rest // 2
            out.append((first, last, (first, *([per] * (pp - 2)), last)))
        rest = n - per * (pp - 1)
        if rest >= 1:
            out.append((rest, None, (rest, *([per] * (pp - 1)))))
    return out


def propose_split(num_layers: int, pipeline_parallel: int) -> tuple[int | None, int | None]:
    """The most balanced split of ``num_layers`` over ``pipeline_parallel`` stages: (first, last).

    ``(None, None)`` when the layers divide evenly. Otherwise the split whose largest stage is smallest
    (then: least spread, then: lighter end stages, which also hold the embedding and output layer): Kimi-K2's 61 layers on 16 stages give 3 + 14*4 + 2, the seed's export profile.
    """
    pp = pipeline_parallel
    if pp <= 1 or num_layers % pp == 0:
        return None, None
    options = split_options(num_layers, pp)
    if not options:
        raise LayoutError(
            f"pipeline_parallel={pp} exceeds num_layers={num_layers}: a stage would be empty",
            path="pipeline_parallel",
            hint=f"use at most {num_layers}",
        )
    mean = num_layers / pp
    first, last, _stages = min(options, key=lambda o: (max(o[2]), sum((x - mean) ** 2 for x in o[2]), o[2][0] + o[2][-1]))
    return first, last


def _split_hint(num_layers: int, pp: int) -> str:
    try:
        first, last = propose_split(num_layers, pp)
    except LayoutError:
        return f"use pipeline_parallel <= {num_layers}"
    if first is None:
        return f"num_layers={num_layers} divides evenly over {pp} stages: unset first/last_stage_layers"
    return f"e.g. first_stage_layers={first}, last_stage_layers={last}"


def _join(values: list[int]) -> str:
    text = [str(v) for v in values]
    if len(text) <= 1:
        return "".join(text)
    return ", ".join(text[:-1]) + " or " + text[-1]
