"""ParallelLayout: derived sizes, invalid combinations, uneven splits, and rank coordinates that match
Megatron-Core's own RankGenerator (order tp-cp-ep-dp-pp)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.errors import LayoutError
from modelopt_typed_recipes.spec import serde
from modelopt_typed_recipes.spec.layout import ParallelLayout, propose_split, split_options


def test_world_size_is_tp_pp_cp_dp_and_etp_defaults_to_tp():
    lay = ParallelLayout(tensor_parallel=4, pipeline_parallel=2, context_parallel=2, data_parallel=3)
    assert lay.world_size == 4 * 2 * 2 * 3
    assert lay.expert_tensor_parallel == 4
    assert lay.expert_data_parallel == lay.world_size // (4 * 1 * 2)


def test_expert_side_must_tile_the_world():
    with pytest.raises(LayoutError) as exc:
        ParallelLayout(tensor_parallel=2, expert_parallel=3, expert_tensor_parallel=1)
    assert exc.value.path == "expert_parallel"
    assert "does not divide the world size" in exc.value.message
    # EP=2 with TP=1 needs DP to absorb it (Megatron's attention-DP), then it is fine
    lay = ParallelLayout(expert_parallel=2, data_parallel=2)
    assert lay.expert_data_parallel == 1


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"tensor_parallel": 0}, "tensor_parallel"),
        ({"pipeline_parallel": -1}, "pipeline_parallel"),
        ({"data_parallel": 1.5}, "data_parallel"),
        ({"context_parallel": True}, "context_parallel"),
        ({"sequence_parallel": True}, "sequence_parallel"),
        ({"virtual_pipeline": 2}, "virtual_pipeline"),
        ({"first_stage_layers": 3}, "first_stage_layers"),
        ({"pipeline_parallel": 4, "virtual_pipeline": 2, "first_stage_layers": 1}, "virtual_pipeline"),
        ({"sequence_parallel": "yes", "tensor_parallel": 2}, "sequence_parallel"),
    ],
)
def test_invalid_layouts_name_the_field(kwargs, path):
    with pytest.raises(LayoutError) as exc:
        ParallelLayout(**kwargs)
    assert exc.value.path == path


def test_stage_layers_even_and_uneven():
    assert ParallelLayout(pipeline_parallel=4).stage_layers(32) == (8, 8, 8, 8)
    kimi = ParallelLayout(pipeline_parallel=16, first_stage_layers=3, last_stage_layers=2)
    assert kimi.stage_layers(61) == (3, *([4] * 14), 2)
    assert ParallelLayout(pipeline_parallel=3, first_stage_layers=1).stage_layers(7) == (1, 3, 3)
    with pytest.raises(LayoutError) as exc:
        ParallelLayout(pipeline_parallel=4).stage_layers(30)
    assert exc.value.path == "pipeline_parallel" and "uneven split" in exc.value.hint
    with pytest.raises(LayoutError) as exc:
        ParallelLayout(pipeline_parallel=4, first_stage_layers=2, last_stage_layers=3).stage_layers(8)
    assert exc.value.path == "first_stage_layers" and "divides evenly" in exc.value.hint
    with pytest.raises(LayoutError) as exc:
        ParallelLayout(pipeline_parallel=4, first_stage_layers=2, last_stage_layers=3).stage_layers(10)
    assert "first_stage_layers=2" in exc.value.hint


def test_propose_split_matches_the_seeds_kimi_export_profile():
    assert propose_split(61, 16) == (3, 2)
    assert propose_split(32, 8) == (None, None)
    with pytest.raises(LayoutError):
        propose_split(3, 4)


@given(st.integers(1, 200), st.integers(1, 64))
@settings(max_examples=300, deadline=None)
def test_propose_split_is_valid_and_as_balanced_as_megatron_allows(layers, pp):
    if pp > layers:
        with pytest.raises(LayoutError):
            propose_split(layers, pp)
        return
    first, last = propose_split(layers, pp)
    stages = ParallelLayout(pipeline_parallel=pp, first_stage_layers=first, last_stage_layers=last).stage_layers(
        layers
    ) if pp > 1 else (layers,)
    assert sum(stages) == layers and len(stages) == pp and min(stages) >= 1
    # no split Megatron accepts has a smaller largest stage
    assert max(stages) == min(max(o[2]) for o in split_options(layers, pp))


def test_round_trip_through_the_converter():
    lay = ParallelLayout(tensor_parallel=2, pipeline_parallel=16, expert_parallel=4, expert_tensor_parallel=1,
                         data_parallel=2, sequence_parallel=True, first_stage_layers=3, last_stage_layers=2)
    assert serde.from_dict(serde.to_dict(lay), ParallelLayout) == lay


def test_megatron_args():
    lay = ParallelLayout(tensor_parallel=2, pipeline_parallel=4, sequence_parallel=True, first_stage_layers=3,
                         last_stage_layers=2)
    args = lay.megatron_args()
    assert args[args.index("--tensor-model-parallel-size") + 1] == "2"
    assert args[args.index("--expert-tensor-parallel-size") + 1] == "2"
    assert "--sequence-parallel" in args
    assert args[args.index("--decoder-first-pipeline-num-layers") + 1] == "3"


# --------------------------------------------------------------------------- Megatron-Core agreement
def _megatron_group_ranks(layout: ParallelLayout) -> dict[int, dict[str, int]]:
    """Group-local ranks as megatron.core.parallel_state builds them (its RankGenerator, CPU only)."""
    from megatron.core.parallel_state import RankGenerator

    order = "tp-cp-ep-dp-pp"
    dense = RankGenerator(tp=layout.tensor_parallel, ep=1, dp=layout.data_parallel, pp=layout.pipeline_parallel,
                          cp=layout.context_parallel, order=order)
    expert = RankGenerator(tp=layout.expert_tensor_parallel, ep=layout.expert_parallel,
                           dp=layout.expert_data_parallel, pp=layout.pipeline_parallel, cp=1, order=order)
    out: dict[int, dict[str, int]] = {r: {} for r in range(layout.world_size)}
    for gen, token, name in ((dense, "tp", "tensor"), (dense, "pp", "pipeline"), (dense, "cp", "context"),
                             (dense, "dp", "data"), (expert, "ep", "expert"), (expert, "tp", "expert_tensor"),
                             (expert, "dp", "expert_data")):
        for group in gen.get_ranks(token):
            for index, rank in enumerate(group):
                out[rank][name] = index
    return out


@st.composite
def layouts(draw):
    tp = draw(st.sampled_from([1, 2, 4]))
    pp = draw(st.sampled_from([1, 2, 3]))
    cp = draw(st.sampled_from([1, 2]))
    dp = draw(st.sampled_from([1, 2, 4]))
    world = tp * pp * cp * dp
    etp = draw(st.sampled_from([d for d in (1, 2, 4) if (world // pp) % d == 0]))
    ep = draw(st.sampled_from([e for e in (1, 2, 4, 8) if (world // pp) % (e * etp) == 0]))
    return ParallelLayout(tensor_parallel=tp, pipeline_parallel=pp, context_parallel=cp, data_parallel=dp,
                          expert_parallel=ep, expert_tensor_parallel=etp)


@given(layouts())
@settings(max_examples=120, deadline=None)
def test_rank_coordinates_match_megatron_core(layout):
    truth = _megatron_group_ranks(layout)
    for coords in layout.rank_map():
        expect = truth[coords.rank]
        got = {k: getattr(coords, k) for k in expect}
        assert got == expect, (layout.short(), coords.rank)


@given(layouts())
@settings(max_examples=200, deadline=None)
def test_rank_map_covers_every_rank_once(layout):
    ranks = layout.rank_map()
    assert [r.rank for r in ranks] == list(range(layout.world_size))
    dense = {(r.tensor, r.context, r.data, r.pipeline) for r in ranks}
    expert = {(r.expert_tensor, r.expert, r.expert_data, r.pipeline) for r in ranks}
    assert len(dense) == len(expert) == layout.world_size
    with pytest.raises(LayoutError):
        layout.coords(layout.world_size)
