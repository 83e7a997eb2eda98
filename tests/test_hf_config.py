"""Hugging Face config bridge: every seed model's config.json imports, counts match the published
figures, exports read back to the same spec, and bad configs give a SpecError naming the key."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.bridges.hf_config import (
    DIFF_IGNORED,
    FieldDiff,
    diff_hf_config,
    from_hf_config,
    hf_model_type,
    load_hf_config,
    to_hf_config,
)
from modelopt_typed_recipes.errors import SpecError
from modelopt_typed_recipes.spec.arch import Attention, Mamba, ModelArch, MoE, RoPE, Vocab

# the models' config.json files from the Hugging Face Hub, recorded here so the test runs on a clean clone in CI
FACTS_PATH = Path(__file__).resolve().parent / "data" / "hf-config-facts.json"
FACTS: dict[str, dict] = json.loads(FACTS_PATH.read_text())["models"] if FACTS_PATH.exists() else {}
needs_facts = pytest.mark.skipif(not FACTS, reason="the recorded config.json facts are not present")

# Entries whose "config" was rebuilt from Megatron-side values: no model_type, no vocab_size.
NOT_A_CONFIG = {k for k, v in FACTS.items() if not v.get("model_type")}


def fact(hf_id: str) -> dict:
    return copy.deepcopy(FACTS[hf_id])


# --------------------------------------------------------------------------- every seed model
@needs_facts
@pytest.mark.parametrize("hf_id", sorted(FACTS))
def test_every_seed_config_imports_and_round_trips(hf_id: str) -> None:
    if hf_id in NOT_A_CONFIG:
        with pytest.raises(SpecError) as err:
            from_hf_config(fact(hf_id), hf_id=hf_id)
        assert err.value.path == "model_type"
        return
    arch = from_hf_config(fact(hf_id), hf_id=hf_id)
    assert arch.hf_id == hf_id
    assert arch.name == hf_id.split("/")[1].lower()
    assert diff_hf_config(arch, fact(hf_id)) == []
    exported = to_hf_config(arch)
    json.dumps(exported)  # a plain, JSON-writable dict
    assert diff_hf_config(arch, exported) == []
    back = from_hf_config(exported, name=arch.name, hf_id=hf_id)
    # identity aside (Kimi-K2 is written as deepseek_v3), the very same spec comes back
    assert attrs.evolve(back, notes=arch.notes, trust_remote_code=arch.trust_remote_code, family=arch.family) == arch


EXPECTED_KIND = {
    "meta-llama/Llama-3.1-8B-Instruct": "dense",
    "meta-llama/Llama-4-Scout-17B-16E-Instruct": "moe",
    "Qwen/Qwen2.5-7B-Instruct": "dense",
    "Qwen/Qwen3-30B-A3B": "moe",
    "deepseek-ai/DeepSeek-R1": "mla",
    "moonshotai/Kimi-K2-Instruct": "mla",
    "nvidia/Nemotron-Mini-4B-Instruct": "dense",
    "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": "hybrid",
    "openai/gpt-oss-20b": "moe",
    "EleutherAI/gpt-neox-20b": "dense",
}


@needs_facts
@pytest.mark.parametrize(("hf_id", "kind"), sorted(EXPECTED_KIND.items()))
def test_kind(hf_id: str, kind: str) -> None:
    assert from_hf_config(fact(hf_id)).kind == kind


# Published parameter counts (model cards and papers), checked within 1 %.
# "excl_input_embedding": the source counts active parameters without the input embedding lookup
# (DeepSeek, Kimi and gpt-oss do): ModelArch.params_active_no_embedding; params_active counts it.
PUBLISHED = [
    # hf_id, total, active, active convention, source
    ("meta-llama/Llama-3.1-8B-Instruct", 8.03e9, None, None, "model card"),
    ("meta-llama/Llama-3.2-1B-Instruct", 1.23e9, None, None, "model card (1,235,814,400)"),
    ("meta-llama/Llama-3.1-405B-Instruct", 405e9, None, None, "model card"),
    ("meta-llama/Llama-4-Maverick-17B-128E-Instruct", 400e9, None, None, "model card"),
    ("Qwen/Qwen2.5-0.5B-Instruct", 0.49e9, None, None, "model card"),
    ("Qwen/Qwen2.5-7B-Instruct", 7.61e9, None, None, "model card"),
    ("Qwen/Qwen3-8B", 8.2e9, None, None, "model card"),
    ("Qwen/Qwen3-30B-A3B", 30.5e9, None, None, "model card"),
    ("Qwen/Qwen3-235B-A22B", 235e9, 22e9, "both", "model card"),
    ("deepseek-ai/DeepSeek-R1", 671e9, None, None, "DeepSeek-V3 report (MTP module excluded)"),
    ("deepseek-ai/DeepSeek-V2-Lite", 15.7e9, None, None, "DeepSeek-V2 report"),
    ("moonshotai/Kimi-K2-Instruct", None, 32e9, "excl_input_embedding", "model card"),
    ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", 31.6e9, 3.6e9, "both", "model card (3.6B incl. embeddings)"),
    ("openai/gpt-oss-20b", 20.91e9, 3.61e9, "excl_input_embedding", "gpt-oss model card paper"),
    ("openai/gpt-oss-120b", 116.83e9, 5.13e9, "excl_input_embedding", "gpt-oss model card paper"),
    ("mistralai/Mixtral-8x7B-v0.1", 46.7e9, 12.9e9, "both", "Mixtral paper"),
    ("EleutherAI/gpt-neox-20b", 20.55e9, None, None, "GPT-NeoX-20B paper"),
]


def _active(arch: ModelArch, convention: str) -> int:
    return arch.params_active_no_embedding if convention == "excl_input_embedding" else arch.params_active


@needs_facts
@pytest.mark.parametrize(("hf_id", "total", "active", "convention", "source"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_parameter_counts(
    hf_id: str, total: float | None, active: float | None, convention: str | None, source: str
) -> None:
    arch = from_hf_config(fact(hf_id))
    if total is not None:
        assert arch.params_total == pytest.approx(total, rel=0.01), source
    if active is not None:
        assert convention is not None
        assert _active(arch, convention) == pytest.approx(active, rel=0.01), source


# Figures published with two significant digits, where 1 % is finer than the figure itself: the count
# must lie within one unit of the last published digit (the card's rounding or truncation).
# Qwen3-30B-A3B: 2.73 B of layers + 2 x 0.31 B embeddings = 3.353 B, printed "3.3B" (truncated); the same
# arithmetic reproduces the card's 30.5 B total and 29.9 B non-embedding figures exactly.
PUBLISHED_COARSE = [
    # hf_id, active, unit of the last digit, convention, source
    ("Qwen/Qwen3-30B-A3B", 3.3e9, 0.1e9, "both", "model card: 3.3B activated"),
    ("meta-llama/Llama-4-Scout-17B-16E-Instruct", 17e9, 1e9, "both", "model card: 17B active"),
    ("meta-llama/Llama-4-Maverick-17B-128E-Instruct", 17e9, 1e9, "both", "model card: 17B active"),
    ("deepseek-ai/DeepSeek-R1", 37e9, 1e9, "excl_input_embedding", "DeepSeek-V3 report: 37B activated"),
    ("deepseek-ai/DeepSeek-V2-Lite", 2.4e9, 0.1e9, "excl_input_embedding", "DeepSeek-V2 report: 2.4B activated"),
]


@needs_facts
@pytest.mark.parametrize(
    ("hf_id", "active", "unit", "convention", "source"), PUBLISHED_COARSE, ids=[p[0] for p in PUBLISHED_COARSE]
)
def test_coarse_published_active_counts(hf_id: str, active: float, unit: float, convention: str, source: str) -> None:
    arch = from_hf_config(fact(hf_id))
    assert abs(_active(arch, convention) - active) < unit, source


@needs_facts
def test_qwen3_30b_a3b_non_embedding_total() -> None:
    arch = from_hf_config(fact("Qwen/Qwen3-30B-A3B"))
    assert arch.params_total - 2 * arch.vocab.size * arch.hidden_size == pytest.approx(29.9e9, rel=0.01)


# --------------------------------------------------------------------------- what the mapping reads
@needs_facts
def test_mapping_details() -> None:
    r1 = from_hf_config(fact("deepseek-ai/DeepSeek-R1"))
    assert r1.moe is not None and r1.moe.layer_freq == "[0]*3+[1]*58"
    assert (r1.moe.router_num_groups, r1.moe.router_group_topk) == (8, 4)
    assert r1.moe.router_enable_expert_bias and r1.moe.router_score_function == "sigmoid"
    assert r1.moe.shared_expert_ffn_size == 2048 and r1.moe.router_topk_scaling_factor == 2.5
    assert r1.attention.qk_head_dim == 128 and r1.attention.qk_pos_emb_head_dim == 64  # type: ignore[union-attr]
    assert r1.position is not None and r1.position.scaling is not None and r1.position.scaling.type == "yarn"
    assert r1.position.scaling.mscale_all_dim == 1.0  # type: ignore[union-attr]

    lite = from_hf_config(fact("deepseek-ai/DeepSeek-V2-Lite"))  # transformers-5 rope_parameters layout
    assert lite.attention.q_lora_rank is None  # type: ignore[union-attr]
    assert lite.moe is not None and lite.moe.router_pre_softmax and not lite.moe.router_enable_expert_bias
    assert lite.moe.shared_expert_ffn_size == 2 * 1408
    assert lite.position is not None and lite.position.scaling.mscale == 0.707  # type: ignore[union-attr]

    oss = from_hf_config(fact("openai/gpt-oss-20b"))
    assert oss.attention.window_size == (127, 0) and oss.attention.window_attn_skip_freq == 2  # type: ignore[union-attr]
    assert oss.attention.softmax_type == "learnable"  # type: ignore[union-attr]
    assert (oss.activation.type, oss.activation.clamp_value, oss.activation.glu_linear_offset) == (
        "quick_geglu",
        7.0,
        1.0,
    )
    assert oss.add_bias_linear and oss.quirks.gpt_oss

    maverick = from_hf_config(fact("meta-llama/Llama-4-Maverick-17B-128E-Instruct"))
    assert maverick.moe is not None and maverick.moe.layer_freq == "[0,1]*24"
    assert maverick.ffn_hidden_size == 16384 and maverick.moe.shared_expert_ffn_size == 8192
    assert maverick.position is not None and maverick.position.no_rope_freq == 4 and maverick.position.interleaved
    scout = from_hf_config(fact("meta-llama/Llama-4-Scout-17B-16E-Instruct"))
    assert scout.quirks.export_qk_l2_norm and scout.attention.qk_layernorm
    assert scout.position is not None and scout.position.scaling.factor == 16.0  # type: ignore[union-attr]

    nano = from_hf_config(fact("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"))
    assert nano.position is None and nano.mamba is not None and nano.mamba.pattern.startswith("MEMEM*")
    assert nano.moe is not None and nano.moe.shared_expert_ffn_size == 3712 and nano.moe.router_enable_expert_bias
    super_ = from_hf_config(fact("nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16"))
    assert super_.moe is not None and super_.moe.latent_size == 1024

    neox = from_hf_config(fact("EleutherAI/gpt-neox-20b"))
    assert (neox.norm.type, neox.activation.type, neox.add_bias_linear) == ("layernorm", "gelu_tanh", True)  # gelu_fast
    assert neox.position is not None and neox.position.percent == 0.25

    mini = from_hf_config(fact("nvidia/Nemotron-Mini-4B-Instruct"))
    assert (mini.norm.type, mini.activation.type) == ("layernorm1p", "squared_relu")
    assert mini.position is not None and mini.position.percent == 0.5

    q3 = from_hf_config(fact("Qwen/Qwen3-0.6B"))
    assert q3.attention.kv_channels == 128 and q3.attention.qk_layernorm and q3.tie_embeddings  # type: ignore[union-attr]
    q25 = from_hf_config(fact("Qwen/Qwen2.5-0.5B-Instruct"))
    assert q25.attention.qkv_bias and not q25.add_bias_linear  # type: ignore[union-attr]
    llama = from_hf_config(fact("meta-llama/Llama-3.1-8B-Instruct"))
    assert llama.attention.kv_channels is None and llama.seq_length == 4096  # type: ignore[union-attr]
    assert llama.max_position_embeddings == 131072


@needs_facts
def test_llama4_reads_nested_text_config() -> None:
    cfg = {"model_type": "llama4", "text_config": fact("meta-llama/Llama-4-Scout-17B-16E-Instruct")["text_config"]}
    nested = from_hf_config(cfg)
    assert nested.num_layers == 48 and nested.moe is not None and nested.moe.num_experts == 16
    del cfg["text_config"]["num_local_experts"]
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == "text_config.num_local_experts"


def test_name_and_id_defaults() -> None:
    cfg = _llama_cfg()
    assert from_hf_config(cfg).name == "hf-llama"
    cfg["_name_or_path"] = "org/Some-Model 7B:v2"
    arch = from_hf_config(cfg)
    assert arch.hf_id is None  # not an id: a space is no part of a repo name
    assert arch.name == "some-model-7b-v2"
    assert from_hf_config(cfg, name="mine", hf_id="org/x").name == "mine"


# --------------------------------------------------------------------------- bad input
def _llama_cfg() -> dict:
    return {
        "model_type": "llama",
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
    }


@pytest.mark.parametrize(
    "key",
    [
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
    ],
)
def test_missing_required_key(key: str) -> None:
    cfg = _llama_cfg()
    del cfg[key]
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == key
    assert "missing" in err.value.message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_hidden_layers", "32"),
        ("hidden_size", 64.5),
        ("num_attention_heads", True),
        ("tie_word_embeddings", "yes"),
        ("rope_theta", "big"),
        ("rms_norm_eps", [1e-5]),
        ("rope_scaling", "llama3"),
        ("hidden_act", 3),
        ("model_type", 7),
    ],
)
def test_wrong_types_name_the_key(key: str, value: object) -> None:
    cfg = _llama_cfg()
    cfg[key] = value
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == key


@pytest.mark.parametrize(
    ("change", "path", "fragment"),
    [
        ({"model_type": "qwen3moe"}, "model_type", "did you mean 'qwen3_moe'"),
        ({"model_type": "lama"}, "model_type", "did you mean 'llama'"),
        ({"num_key_value_heads": 3}, "num_key_value_heads", "does not divide"),
        ({"num_hidden_layers": 0}, "num_hidden_layers", "positive"),
        ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "rope_scaling.rope_type", "not supported"),
        ({"rope_scaling": {"rope_type": "llama3"}}, "rope_scaling.factor", "missing"),
        ({"hidden_act": "tanh"}, "hidden_act", "not supported"),
        ({"attention_bias": True}, "attention_bias", "cannot be expressed"),
    ],
)
def test_bad_values(change: dict, path: str, fragment: str) -> None:
    cfg = {**_llama_cfg(), **change}
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == path
    assert fragment in str(err.value)


def test_not_a_mapping() -> None:
    with pytest.raises(SpecError):
        from_hf_config(["model_type", "llama"])  # type: ignore[arg-type]


def test_unknown_model_type_lists_what_is_supported() -> None:
    with pytest.raises(SpecError) as err:
        from_hf_config({**_llama_cfg(), "model_type": "bert"})
    assert err.value.path == "model_type" and "supported" in err.value.hint


@needs_facts
def test_bad_moe_and_hybrid_configs() -> None:
    cfg = fact("Qwen/Qwen3-30B-A3B")
    cfg["num_experts_per_tok"] = 200
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == "num_experts_per_tok" and "exceeds" in err.value.message

    cfg = fact("nvidia/Nemotron-H-8B-Base-8K")
    cfg["hybrid_override_pattern"] = cfg["hybrid_override_pattern"][:-1] + "Q"
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == "hybrid_override_pattern"

    cfg = fact("nvidia/Nemotron-H-8B-Base-8K")
    cfg["num_hidden_layers"] = 7
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == "hybrid_override_pattern" and "num_hidden_layers=7" in err.value.message

    cfg = fact("openai/gpt-oss-20b")
    cfg["layer_types"] = ["full_attention"] * 23 + ["sliding_attention"]
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == "layer_types"


def test_load_hf_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_llama_cfg()))
    assert load_hf_config(path).hidden_size == 64
    assert load_hf_config(tmp_path, name="x").name == "x"  # a checkpoint folder
    path.write_text("{not json")
    with pytest.raises(SpecError) as err:
        load_hf_config(path)
    assert "not valid JSON" in err.value.message and err.value.path == str(path)
    with pytest.raises(SpecError) as err:
        load_hf_config(tmp_path / "missing.json")
    assert "cannot read" in err.value.message


# --------------------------------------------------------------------------- diff
@needs_facts
def test_diff_reports_disagreeing_fields() -> None:
    cfg = fact("Qwen/Qwen3-30B-A3B")
    arch = from_hf_config(cfg)
    cfg.update(num_key_value_heads=8, num_experts_per_tok=4, rope_theta=10000.0, max_position_embeddings=4096)
    diffs = diff_hf_config(arch, cfg)
    assert FieldDiff(path="attention.num_query_groups", ours=4, theirs=8) in diffs
    assert FieldDiff(path="moe.router_topk", ours=8, theirs=4) in diffs
    assert FieldDiff(path="position.base", ours=1e6, theirs=1e4) in diffs
    assert len(diffs) == 3  # max_position_embeddings is ignored by default
    full = diff_hf_config(arch, cfg, ignore=DIFF_IGNORED - {"max_position_embeddings"})
    assert FieldDiff(path="max_position_embeddings", ours=40960, theirs=4096) in full
    assert "moe.router_topk" in str(diffs[[d.path for d in diffs].index("moe.router_topk")])


@needs_facts
def test_diff_is_blind_to_spelling_and_megatron_only_settings() -> None:
    cfg = fact("deepseek-ai/DeepSeek-R1")
    arch = from_hf_config(cfg)
    spelled = attrs.evolve(
        arch,
        name="other",
        seq_length=1024,
        max_position_embeddings=8192,
        vocab=Vocab(size=arch.vocab.size, divisible_by=1280),
        moe=attrs.evolve(arch.moe, layer_freq="([0]*3+[1]*58)", router_dtype="fp32", router_pre_softmax=True),
    )
    assert diff_hf_config(spelled, cfg) == []
    changed = attrs.evolve(arch, moe=attrs.evolve(arch.moe, layer_freq="[0]*1+[1]*60"))
    assert [d.path for d in diff_hf_config(changed, cfg)] == ["moe.layer_freq"]


def test_diff_whole_subspec_when_kinds_differ() -> None:
    arch = from_hf_config(_llama_cfg())
    cfg = {**_llama_cfg(), "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    assert [d.path for d in diff_hf_config(arch, cfg)] == ["position.scaling"]


# --------------------------------------------------------------------------- export limits
def test_to_hf_config_refuses_what_transformers_cannot_express() -> None:
    base = from_hf_config(_llama_cfg())
    with pytest.raises(SpecError) as err:
        to_hf_config(attrs.evolve(base, position=RoPE(percent=0.5)))
    assert err.value.path == "position.percent"
    with pytest.raises(SpecError) as err:  # a shared expert on a Mixtral-style model
        to_hf_config(
            attrs.evolve(base, moe=MoE(num_experts=4, router_topk=2, ffn_hidden_size=32, shared_expert_ffn_size=64))
        )
    assert err.value.path == "moe.shared_expert_ffn_size"
    hybrid = ModelArch(
        name="h",
        family="nemotron-h",
        num_layers=3,
        hidden_size=64,
        ffn_hidden_size=96,
        attention=Attention(num_heads=4, num_query_groups=2),
        mamba=Mamba(pattern="M*-", num_heads=8, head_dim=16),
        position=RoPE(),
        activation=attrs.evolve(base.activation, type="squared_relu"),
        vocab=Vocab(size=128),
    )
    with pytest.raises(SpecError) as err:
        to_hf_config(hybrid)
    assert err.value.path == "position"
    assert hf_model_type(attrs.evolve(hybrid, position=None)) == "nemotron_h"
    assert to_hf_config(attrs.evolve(hybrid, position=None))["hybrid_override_pattern"] == "M*-"


def test_import_is_light() -> None:
    code = "import sys, modelopt_typed_recipes.bridges.hf_config; print(sorted(m for m in ('torch','transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# --------------------------------------------------------------------------- the registry against config.json
# Registry entries that knowingly disagree with their config.json, field paths listed (none today).
KNOWN_DISAGREEMENTS: dict[str, set[str]] = {}


@needs_facts
def test_registry_entries_agree_with_their_config_json() -> None:
    from modelopt_typed_recipes.catalog import list_archs

    checked = 0
    facts = {k.lower(): k for k in FACTS if k not in NOT_A_CONFIG}
    for arch in list_archs():
        hf_id = facts.get((arch.hf_id or "").lower())
        if hf_id is None:
            continue
        paths = {d.path for d in diff_hf_config(arch, fact(hf_id))}
        assert paths <= KNOWN_DISAGREEMENTS.get(hf_id, set()), (arch.name, diff_hf_config(arch, fact(hf_id)))
        checked += 1
    assert checked >= 20


# --------------------------------------------------------------------------- fuzzing
_JUNK = st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8)
_JUNK = _JUNK | st.lists(_JUNK, max_size=3) | st.dictionaries(st.text(max_size=5), _JUNK, max_size=3)


@needs_facts
@settings(max_examples=150, deadline=None)
@given(
    hf_id=st.sampled_from(sorted(set(FACTS) - NOT_A_CONFIG) or ["none"]),
    edits=st.lists(st.tuples(st.integers(0, 200), _JUNK), min_size=1, max_size=3),
)
def test_fuzzed_configs_give_a_spec_or_a_spec_error(hf_id: str, edits: list) -> None:
    """Random values in random keys: a valid spec or a SpecError with a path, never another exception."""
    cfg = fact(hf_id)
    target = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
    keys = sorted(target)
    for index, value in edits:
        target[keys[index % len(keys)]] = value
    try:
        arch = from_hf_config(cfg)
    except SpecError as err:
        assert err.path, err
        return
    assert arch.params_total > 0


@needs_facts
@pytest.mark.parametrize(
    ("hf_id", "key"),
    [("Qwen/Qwen3-235B-A22B", "decoder_sparse_step"), ("meta-llama/Llama-4-Scout-17B-16E-Instruct",
                                                         "interleave_moe_layer_step"),
     ("deepseek-ai/DeepSeek-V2-Lite", "moe_layer_freq")],
)
@pytest.mark.parametrize("value", [0, -1])
def test_layer_periods_below_one_are_spec_errors(hf_id: str, key: str, value: int) -> None:
    """Found by the fuzzer on a fresh clone: decoder_sparse_step 0 divided by zero."""
    cfg = fact(hf_id)
    target = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
    target[key] = value
    with pytest.raises(SpecError, match=f"{key} must be at least 1") as err:
        from_hf_config(cfg)
    assert err.value.path.endswith(key)


@needs_facts
@pytest.mark.parametrize(
    ("hf_id", "key", "value"),
    [
        ("Qwen/Qwen3-30B-A3B", "mlp_only_layers", [{"a": 1}]),
        ("Qwen/Qwen3-30B-A3B", "mlp_only_layers", [True]),
        ("openai/gpt-oss-20b", "layer_types", [1, 2]),
        ("nvidia/Nemotron-H-8B-Base-8K", "hybrid_override_pattern", ["M"]),
    ],
)
def test_lists_of_the_wrong_items(hf_id: str, key: str, value: object) -> None:
    cfg = fact(hf_id)
    cfg[key] = value
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == key


@needs_facts
def test_nemotron_h_layers_block_type() -> None:
    cfg = fact("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16")
    pattern = cfg.pop("hybrid_override_pattern")
    names = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
    cfg["layers_block_type"] = [names[c] for c in pattern]
    assert from_hf_config(cfg).mamba.pattern == pattern  # type: ignore[union-attr]
    cfg["layers_block_type"][0] = [{"x": 1}]
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == "layers_block_type"
    cfg["layers_block_type"][0] = "mamba2"
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == "layers_block_type" and "did you mean" in err.value.hint
