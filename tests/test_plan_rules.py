"""Layout rules per model and stage, and replan. Property tests compare the planner with an independent
brute-force checker written from Megatron-Core's asserts and ModelOpt's stage limits."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.errors import LayoutError, SpecError
from modelopt_typed_recipes.plan import rules
from modelopt_typed_recipes.plan.launch import plan
from modelopt_typed_recipes.spec.arch import Attention, Mamba, MLAttention, ModelArch, MoE, Vocab
from modelopt_typed_recipes.spec.layout import ParallelLayout

STAGES = rules.STAGES


# --------------------------------------------------------------------------- examples
def test_tp_error_names_heads_and_proposes_values():
    llama = get_arch("llama-3.1-8b-instruct")
    with pytest.raises(LayoutError) as exc:
        rules.check(llama, ParallelLayout(tensor_parallel=3))
    assert exc.value.path == "tensor_parallel"
    assert str(exc.value).startswith("tensor_parallel: TP=3 does not divide 32 attention heads (use 1, 2, 4 or 8")


def test_query_groups_ffn_and_expert_rules():
    qwen_moe = get_arch("qwen3-30b-a3b")  # 32 heads, 4 query groups, 128 experts of 768
    with pytest.raises(LayoutError, match="4 query groups"):
        rules.check(qwen_moe, ParallelLayout(tensor_parallel=8))
    with pytest.raises(LayoutError, match="does not divide 128 experts") as exc:
        rules.check(qwen_moe, ParallelLayout(expert_parallel=3, data_parallel=3))
    assert exc.value.path == "expert_parallel"
    with pytest.raises(LayoutError, match="expert ffn size 768") as exc:
        rules.check(qwen_moe, ParallelLayout(tensor_parallel=1, expert_tensor_parallel=5, data_parallel=5))
    assert exc.value.path == "expert_tensor_parallel"
    llama = get_arch("llama-3.1-8b-instruct")
    with pytest.raises(LayoutError, match="has no experts"):
        rules.check(llama, ParallelLayout(expert_parallel=2, data_parallel=2))


def test_mla_heads_by_tp_without_query_group_rule():
    mla = get_arch("tiny-mla")  # MLA, 4 heads
    rules.check(mla, ParallelLayout(tensor_parallel=4, sequence_parallel=True), "quantize")
    with pytest.raises(LayoutError, match="attention heads"):
        rules.check(mla, ParallelLayout(tensor_parallel=8))


def test_context_parallel_needs_seq_divisible_by_2cp():
    llama = get_arch("llama-3.1-8b-instruct")
    rules.check(llama, ParallelLayout(context_parallel=2), seq_length=4096)
    with pytest.raises(LayoutError, match=r"2\*CP=6 does not divide seq_length=4096") as exc:
        rules.check(llama, ParallelLayout(context_parallel=3))
    assert exc.value.path == "context_parallel"


def test_fixed_padded_vocab_by_tp():
    arch = ModelArch(name="v", family="t", num_layers=2, hidden_size=64, ffn_hidden_size=64,
                     attention=Attention(num_heads=4), vocab=Vocab(size=1000, padded_size=1002), seq_length=64,
                     max_position_embeddings=64)
    rules.check(arch, ParallelLayout(tensor_parallel=2))
    with pytest.raises(LayoutError, match="padded vocabulary of 1002"):
        rules.check(arch, ParallelLayout(tensor_parallel=4))


def test_layers_by_pp_or_uneven_split_and_hybrid_pattern_stages():
    kimi = get_arch("kimi-k2-instruct")  # 61 layers
    with pytest.raises(LayoutError, match="does not divide num_layers=61") as exc:
        rules.check(kimi, ParallelLayout(pipeline_parallel=16), "export")
    assert "uneven split" in exc.value.hint
    rules.check(kimi, ParallelLayout(pipeline_parallel=16, first_stage_layers=3, last_stage_layers=2), "export")
    piped = attrs_evolve_pattern(get_arch("tiny-hybrid"), "M*|M-")
    rules.check(piped, ParallelLayout(pipeline_parallel=2))
    with pytest.raises(LayoutError, match="2 pipeline segments"):
        rules.check(piped, ParallelLayout(pipeline_parallel=4, data_parallel=1))
    with pytest.raises(LayoutError, match="not allowed"):
        rules.check(piped, ParallelLayout(pipeline_parallel=2, first_stage_layers=1, last_stage_layers=3))


def attrs_evolve_pattern(arch: ModelArch, pattern: str) -> ModelArch:
    import attrs

    assert arch.mamba is not None
    return attrs.evolve(arch, name=arch.name + "-piped", mamba=attrs.evolve(arch.mamba, pattern=pattern))


@pytest.mark.parametrize(
    ("stage", "layout", "path"),
    [
        ("auto_quantize", ParallelLayout(pipeline_parallel=2), "pipeline_parallel"),
        ("prune", ParallelLayout(tensor_parallel=2), "tensor_parallel"),
        ("prune", ParallelLayout(context_parallel=2), "context_parallel"),
        ("prune", ParallelLayout(expert_parallel=2, data_parallel=2), "expert_parallel"),
        ("export", ParallelLayout(tensor_parallel=2), "tensor_parallel"),
        ("export", ParallelLayout(data_parallel=2), "data_parallel"),
        ("export", ParallelLayout(expert_parallel=2, data_parallel=2), "expert_parallel"),
        ("quantize", ParallelLayout(pipeline_parallel=2, virtual_pipeline=2), "virtual_pipeline"),
        ("distill", ParallelLayout(pipeline_parallel=2, virtual_pipeline=2), "virtual_pipeline"),
    ],
)
def test_stage_limits(stage, layout, path):
    arch = get_arch("qwen3-30b-a3b")
    with pytest.raises(LayoutError) as exc:
        rules.check(arch, layout, stage)
    assert exc.value.path == path


def test_check_hint_proposes_a_layout_for_the_gpus():
    with pytest.raises(LayoutError) as exc:
        rules.check(get_arch("llama-3.1-8b-instruct"), ParallelLayout(tensor_parallel=8), "export", gpus=8)
    assert "a valid export layout on 8 GPU(s): TP1 PP8" in exc.value.hint


def test_replan_examples():
    assert rules.replan(get_arch("kimi-k2-instruct"), None, "export", 16).short() == \
        "TP1 PP16 CP1 EP1 ETP1 DP1 split 3/2"
    # Nemotron-3 Nano: quantize EP=4 -> export PP=4 (ModelOpt launcher: largest divisor of 52 layers <= GPUs)
    nano = get_arch("nvidia-nemotron-3-nano-30b-a3b-bf16")
    assert rules.replan(nano, ParallelLayout(expert_parallel=4, data_parallel=4), "export", 4) == \
        ParallelLayout(pipeline_parallel=4)
    # auto-quantize keeps TP, drops PP, fills DP
    llama = get_arch("llama-3.1-8b-instruct")
    out = rules.replan(llama, ParallelLayout(tensor_parallel=2, pipeline_parallel=2, sequence_parallel=True),
                       "auto_quantize", 8)
    assert (out.tensor_parallel, out.pipeline_parallel, out.data_parallel) == (2, 1, 4)
    # quantize on fewer GPUs than the old layout needs: a smaller valid split
    out = rules.replan(llama, ParallelLayout(tensor_parallel=8), "quantize", 4)
    assert out.world_size <= 4 and rules.is_valid(llama, out)


# --------------------------------------------------------------------------- brute force
def brute_force_accepts(arch: ModelArch, lay: dict, stage: str, seq: int) -> bool:
    """Independent reading of the rules (no code shared with plan.rules or ParallelLayout)."""
    tp, pp, cp, ep, etp, dp = (lay[k] for k in ("tp", "pp", "cp", "ep", "etp", "dp"))
    sp, vpp, first, last = lay["sp"], lay["vpp"], lay["first"], lay["last"]
    world = tp * pp * cp * dp
    if world % (etp * ep * pp):
        return False
    if sp and tp == 1:
        return False
    if vpp is not None and (pp == 1 or first is not None or last is not None):
        return False
    if (first is not None or last is not None) and pp == 1:
        return False
    # stage limits
    if vpp is not None:
        return False
    if stage == "auto_quantize" and pp != 1:
        return False
    if stage == "distill" and (pp, ep, cp) != (1, 1, 1):
        return False
    if stage == "prune" and (tp, cp, ep, etp, sp) != (1, 1, 1, 1, False):
        return False
    if stage == "export" and (tp, etp, ep, cp, dp, sp) != (1, 1, 1, 1, 1, False):
        return False
    # tensor parallel
    att = arch.attention
    if att.num_heads % tp:
        return False
    if isinstance(att, Attention) and (att.num_query_groups or att.num_heads) % tp:
        return False
    symbols = arch.mamba.layers if arch.mamba else None
    has_dense = ("-" in symbols) if symbols is not None else (
        arch.moe is None or arch.layer_counts.dense_mlp > 0)
    if has_dense and arch.ffn_hidden_size % tp:
        return False
    if arch.moe and arch.moe.shared_expert_ffn_size and arch.moe.shared_expert_ffn_size % tp:
        return False
    if symbols is not None and "M" in symbols:
        heads = arch.mamba.num_heads or 2 * arch.hidden_size // (arch.mamba.head_dim or 64)
        if heads % tp or (arch.mamba.num_groups or 8) % tp:
            return False
    if arch.vocab.padded_size is not None and arch.vocab.padded_size % tp:
        return False
    if sp and seq % tp:
        return False
    # experts
    if arch.moe is None:
        if ep != 1:
            return False
    elif arch.moe.num_experts % ep or arch.moe.ffn_hidden_size % etp:
        return False
    # pipeline
    segments = arch.mamba.pattern.split("|") if arch.mamba and "|" in arch.mamba.pattern else None
    n = arch.num_layers
    if segments is not None:
        if first is not None or last is not None or len(segments) != pp * (vpp or 1):
            return False
    elif arch.mamba is not None and (first is not None or last is not None):
        return False
    else:
        ok = False
        for middle in range(1, n + 1):  # every stage list Megatron can express
            stages = ([first] if first is not None else []) + [middle] * (pp - (first is not None) - (last is not None)) \
                + ([last] if last is not None else [])
            if len(stages) == pp and sum(stages) == n and min(stages) >= 1:
                ok = True
                break
        if not ok:
            return False
    return not (cp > 1 and seq % (2 * cp))


@st.composite
def archs(draw):
    kind = draw(st.sampled_from(["dense", "moe", "mla", "hybrid"]))
    heads = draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12, 16]))
    head_dim = draw(st.sampled_from([8, 16]))
    hidden = heads * head_dim
    groups = draw(st.sampled_from([g for g in range(1, heads + 1) if heads % g == 0]))
    ffn = draw(st.sampled_from([24, 32, 48, 64, 96]))
    seq = draw(st.sampled_from([12, 16, 24, 32, 48, 64]))
    vocab = Vocab(size=draw(st.integers(100, 600)), padded_size=draw(st.sampled_from([None, 600, 602, 640])))
    moe = None
    if kind in ("moe", "mla") or (kind == "hybrid" and draw(st.booleans())):
        experts = draw(st.sampled_from([2, 3, 4, 6, 8, 16]))
        moe = MoE(num_experts=experts, router_topk=draw(st.integers(1, experts)),
                  ffn_hidden_size=draw(st.sampled_from([8, 12, 16, 32])),
                  shared_expert_ffn_size=draw(st.sampled_from([None, 16, 24])))
    common = dict(name="rand", family="test", hidden_size=hidden, ffn_hidden_size=ffn, vocab=vocab,
                  seq_length=seq, max_position_embeddings=seq)
    try:
        if kind == "hybrid":
            body = draw(st.text(alphabet="M*-", min_size=1, max_size=10))
            if moe is not None:
                body += "E"
            cuts = draw(st.sets(st.integers(1, len(body) - 1), max_size=3)) if len(body) > 1 else set()
            pattern = "".join(("|" if i in cuts else "") + c for i, c in enumerate(body))
            mamba = Mamba(pattern=pattern, num_heads=draw(st.sampled_from([2, 4, 6, 8])), head_dim=8,
                          num_groups=draw(st.sampled_from([1, 2, 4])), state_dim=8)
            return ModelArch(num_layers=len(body), attention=Attention(num_heads=heads, num_query_groups=groups),
                             moe=moe, mamba=mamba, **common)
        layers = draw(st.integers(1, 12))
        if kind == "mla":
            att = MLAttention(num_heads=heads, kv_lora_rank=16, qk_head_dim=8, qk_pos_emb_head_dim=8, v_head_dim=8)
            moe = attrs_evolve(moe, layer_freq="[0]*1+[1]*" + str(layers - 1)) if layers > 1 else moe
        else:
            att = Attention(num_heads=heads, num_query_groups=groups)
        return ModelArch(num_layers=layers, attention=att, moe=moe, **common)
    except SpecError:
        assume(False)


def attrs_evolve(obj, **kw):
    import attrs

    return attrs.evolve(obj, **kw)


@st.composite
def raw_layouts(draw):
    pp = draw(st.sampled_from([1, 1, 1, 2, 2, 3, 4, 6]))
    uneven = pp > 1 and draw(st.integers(0, 3)) == 0
    return {
        "tp": draw(st.sampled_from([1, 1, 1, 2, 2, 3, 4, 8])),
        "pp": pp,
        "cp": draw(st.sampled_from([1, 1, 1, 1, 2, 3, 4])),
        "ep": draw(st.sampled_from([1, 1, 1, 1, 2, 3, 4, 8])),
        "etp": draw(st.sampled_from([None, None, None, 1, 2, 4])),
        "dp": draw(st.sampled_from([1, 1, 2, 3, 4])),
        "sp": draw(st.sampled_from([False, False, True])),
        "vpp": draw(st.sampled_from([None] * 9 + [2])),
        "first": draw(st.integers(1, 6)) if uneven else None,
        "last": draw(st.sampled_from([None, 1, 2, 3])) if uneven else None,
    }


@given(archs(), raw_layouts(), st.sampled_from(STAGES))
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_planner_accepts_exactly_what_brute_force_accepts(arch, lay, stage):
    lay = dict(lay)
    if lay["etp"] is None:
        lay["etp"] = lay["tp"]  # Megatron's default
    expected = brute_force_accepts(arch, lay, stage, arch.seq_length)
    world = lay["tp"] * lay["pp"] * lay["cp"] * lay["dp"]
    try:
        lp = plan(arch, world, stage=stage, tensor_parallel=lay["tp"], pipeline_parallel=lay["pp"],
                  context_parallel=lay["cp"], expert_parallel=lay["ep"], expert_tensor_parallel=lay["etp"],
                  data_parallel=lay["dp"], sequence_parallel=lay["sp"], first_stage_layers=lay["first"],
                  last_stage_layers=lay["last"], environ={}, check_memory=False, gpu="h100-80gb", nodes=1,
                  recipe={"virtual_pipeline": lay["vpp"]} if lay["vpp"] else None)
    except LayoutError:
        accepted = False
    else:
        accepted = True
        assert lp.world_size == world
        ranks = lp.rank_map
        assert sorted(r.rank for r in ranks) == list(range(world))
        assert len({(r.tensor, r.context, r.data, r.pipeline) for r in ranks}) == world
        assert len({(r.expert_tensor, r.expert, r.expert_data, r.pipeline) for r in ranks}) == world
        assert len({(r.node, r.local_rank) for r in ranks}) == world
    event(f"accepted={accepted}")
    assert accepted == expected, (lay, stage, arch.kind)


@given(archs(), st.integers(1, 16), raw_layouts(), st.sampled_from(STAGES))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_replan_returns_a_valid_layout_for_its_stage(arch, gpus, lay, stage):
    try:
        start = ParallelLayout(tensor_parallel=lay["tp"], pipeline_parallel=lay["pp"], context_parallel=lay["cp"],
                               expert_parallel=lay["ep"], data_parallel=lay["dp"])
    except LayoutError:
        start = None
    segments = arch.mamba.pipeline_stages if arch.mamba is not None else None
    try:
        out = rules.replan(arch, start, stage, gpus)
    except LayoutError:
        # the only impossible case: a "|"-split hybrid pattern needs more stages than GPUs (or PP=1: auto-quantize, distill)
        assert segments is not None and (len(segments) > gpus or stage in ("auto_quantize", "distill"))
        return
    assert out.world_size <= gpus
    as_dict = {"tp": out.tensor_parallel, "pp": out.pipeline_parallel, "cp": out.context_parallel,
               "ep": out.expert_parallel, "etp": out.expert_tensor_parallel, "dp": out.data_parallel,
               "sp": out.sequence_parallel, "vpp": out.virtual_pipeline, "first": out.first_stage_layers,
               "last": out.last_stage_layers}
    assert brute_force_accepts(arch, as_dict, stage, arch.seq_length), (out.short(), stage)
    assert rules.is_valid(arch, out, stage)


def _divs(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@given(archs(), st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_planner_agrees_with_brute_force_near_the_boundary(arch, data):
    """Layouts drawn from the model's own divisors, so acceptance and rejection are both common."""
    att = arch.attention
    tp = data.draw(st.sampled_from(_divs(att.num_heads)[:4]))
    pp = data.draw(st.sampled_from(_divs(arch.num_layers)[:3] + [2]))
    ep = data.draw(st.sampled_from(_divs(arch.moe.num_experts)[:3] if arch.moe else [1]))
    lay = {"tp": tp, "pp": pp, "cp": data.draw(st.sampled_from([1, 1, 2])), "ep": ep,
           "etp": data.draw(st.sampled_from([tp, 1])), "dp": data.draw(st.sampled_from([1, 2, 4])),
           "sp": data.draw(st.booleans()) and tp > 1, "vpp": None, "first": None, "last": None}
    stage = data.draw(st.sampled_from(["quantize", "quantize", "distill", "auto_quantize", "prune", "export"]))
    expected = brute_force_accepts(arch, lay, stage, arch.seq_length)
    world = tp * lay["pp"] * lay["cp"] * lay["dp"]
    try:
        plan(arch, world, stage=stage, tensor_parallel=tp, pipeline_parallel=lay["pp"], context_parallel=lay["cp"],
             expert_parallel=ep, expert_tensor_parallel=lay["etp"], data_parallel=lay["dp"],
             sequence_parallel=lay["sp"], environ={}, check_memory=False, nodes=1)
        accepted = True
    except LayoutError:
        accepted = False
    event(f"accepted={accepted}")
    assert accepted == expected, (lay, stage, arch.kind)
