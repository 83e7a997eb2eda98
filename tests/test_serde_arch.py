"""Serialization of architectures: YAML/JSON round trips (registry entries and generated specs), typed
errors with field paths, dotted overrides, content hashes across processes, fuzzed input."""

from __future__ import annotations

import json
import subprocess
import sys

import attrs
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.catalog import get_arch, list_archs
from modelopt_typed_recipes.errors import RecipeError, SpecError
from modelopt_typed_recipes.spec.arch import (
    Activation,
    Attention,
    Llama3Scaling,
    Mamba,
    MLAttention,
    ModelArch,
    MoE,
    Norm,
    RoPE,
    Vocab,
    YarnScaling,
)
from modelopt_typed_recipes.spec.serde import (
    apply_overrides,
    content_hash,
    from_dict,
    from_json,
    from_yaml,
    to_dict,
    to_json,
    to_yaml,
)

ENTRIES = list_archs()


@pytest.mark.parametrize("arch", ENTRIES, ids=lambda a: a.name)
def test_entry_round_trips(arch: ModelArch) -> None:
    assert from_yaml(to_yaml(arch), ModelArch) == arch
    assert from_json(to_json(arch), ModelArch) == arch
    assert from_dict(json.loads(json.dumps(to_dict(arch))), ModelArch) == arch
    assert content_hash(from_yaml(to_yaml(arch), ModelArch)) == content_hash(arch)


# --------------------------------------------------------------------------- generated specs
@st.composite
def archs(draw: st.DrawFn) -> ModelArch:
    kind = draw(st.sampled_from(["dense", "moe", "mla", "hybrid"]))
    heads = draw(st.sampled_from([2, 4, 8]))
    hidden = heads * draw(st.sampled_from([8, 16, 32]))
    layers = draw(st.integers(1, 6))
    groups = draw(st.sampled_from([g for g in (1, 2, 4, 8) if heads % g == 0]))
    if kind == "mla":
        attention = MLAttention(
            num_heads=heads, q_lora_rank=draw(st.none() | st.sampled_from([16, 32])), kv_lora_rank=16,
            qk_head_dim=16, qk_pos_emb_head_dim=8, v_head_dim=16,
        )
    else:
        attention = Attention(
            num_heads=heads, num_query_groups=groups, kv_channels=draw(st.none() | st.sampled_from([8, 16])),
            qk_layernorm=draw(st.booleans()), qkv_bias=draw(st.booleans()),
        )
    moe = None
    if kind in ("moe", "mla") or (kind == "hybrid" and draw(st.booleans())):
        experts = draw(st.sampled_from([2, 4, 8]))
        moe = MoE(
            num_experts=experts, router_topk=draw(st.integers(1, experts)), ffn_hidden_size=draw(st.sampled_from([16, 32])),
            shared_expert_ffn_size=draw(st.none() | st.just(32)),
            router_score_function=draw(st.sampled_from(["softmax", "sigmoid"])),
            router_topk_scaling_factor=draw(st.none() | st.floats(0.5, 4, allow_nan=False)),
            layer_freq=1 if kind == "hybrid" else draw(st.sampled_from([1, f"[0]*1+[1]*{layers - 1}" if layers > 1 else 1])),
        )
    mamba = None
    if kind == "hybrid":
        body = draw(st.lists(st.sampled_from("M*-"), min_size=1, max_size=5))
        pattern = "".join(body) + "*" + ("E" if moe else "")
        layers = len(pattern)
        mamba = Mamba(pattern=pattern, num_heads=draw(st.none() | st.just(4)), head_dim=draw(st.none() | st.just(16)))
    scaling = draw(st.none() | st.builds(Llama3Scaling, factor=st.floats(1, 64)) |
                   st.builds(YarnScaling, factor=st.floats(1, 64), mscale=st.none() | st.floats(0.1, 2)))
    position = draw(st.none() | st.builds(RoPE, base=st.floats(100, 1e7), percent=st.sampled_from([0.25, 0.5, 1.0]),
                                          scaling=st.just(scaling)))
    vocab = draw(st.integers(8, 5000))
    return ModelArch(
        name=draw(st.from_regex(r"[a-z][a-z0-9.\-]{0,20}", fullmatch=True)),
        hf_id=draw(st.none() | st.just("org/Model")),
        family=draw(st.sampled_from(["x", "tiny", "llama"])),
        num_layers=layers, hidden_size=hidden, ffn_hidden_size=draw(st.sampled_from([16, 64])),
        attention=attention, moe=moe, mamba=mamba, position=position,
        norm=draw(st.builds(Norm, type=st.sampled_from(["rmsnorm", "layernorm", "layernorm1p"]),
                            epsilon=st.sampled_from([1e-5, 1e-6]))),
        activation=draw(st.builds(Activation, type=st.sampled_from(["swiglu", "squared_relu", "gelu"]))),
        tie_embeddings=draw(st.booleans()),
        vocab=Vocab(size=vocab, divisible_by=draw(st.none() | st.sampled_from([1, 64, 128]))),
        seq_length=draw(st.sampled_from([64, 128])), max_position_embeddings=draw(st.sampled_from([128, 256])),
        notes=tuple(draw(st.lists(st.text(max_size=20), max_size=2))),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(archs())
def test_generated_round_trips(arch: ModelArch) -> None:
    assert from_yaml(to_yaml(arch), ModelArch) == arch
    assert from_json(to_json(arch), ModelArch) == arch
    assert content_hash(from_json(to_json(arch), ModelArch)) == content_hash(arch)


# --------------------------------------------------------------------------- typed errors
def _doc(name: str = "qwen3-8b") -> dict:
    return to_dict(get_arch(name))


def test_unknown_key_names_the_path() -> None:
    doc = _doc()
    doc["attention"]["num_head"] = 4
    with pytest.raises(SpecError) as info:
        from_dict(doc, ModelArch)
    assert info.value.path == "attention.num_head"
    assert "num_heads" in info.value.hint


def test_wrong_type_names_the_path() -> None:
    doc = _doc("qwen3-30b-a3b")
    doc["moe"]["num_experts"] = "many"
    with pytest.raises(SpecError) as info:
        from_dict(doc, ModelArch)
    assert info.value.path == "moe.num_experts"
    doc = _doc()
    doc["tie_embeddings"] = "yes"
    with pytest.raises(SpecError) as info:
        from_dict(doc, ModelArch)
    assert info.value.path == "tie_embeddings"


def test_rule_violation_names_the_path() -> None:
    doc = _doc("mixtral")
    doc["moe"]["router_topk"] = 9
    with pytest.raises(SpecError) as info:
        from_dict(doc, ModelArch)
    assert info.value.path == "moe.router_topk"
    assert "exceeds moe.num_experts=8" in str(info.value) or "num_experts=8" in str(info.value)


def test_missing_field() -> None:
    doc = _doc()
    del doc["vocab"]
    with pytest.raises(SpecError) as info:
        from_dict(doc, ModelArch)
    assert info.value.path == "vocab"


# --------------------------------------------------------------------------- overrides
def test_dotted_overrides() -> None:
    base = get_arch("qwen3-30b-a3b")
    new = apply_overrides(base, ["moe.num_experts=64", "attention.qk_layernorm=false"])
    assert new.moe.num_experts == 64 and new.attention.qk_layernorm is False
    assert base.moe.num_experts == 128  # frozen original untouched
    assert new.params_total < base.params_total
    assert apply_overrides(base, {"num_layers": 24}).num_layers == 24
    with pytest.raises(SpecError) as info:
        apply_overrides(base, ["moe.router_topk=999"])
    assert info.value.path == "moe.router_topk"
    with pytest.raises(SpecError) as info:
        apply_overrides(base, ["moe.num_expert=3"])
    assert info.value.path == "moe.num_expert" and "num_experts" in info.value.hint
    with pytest.raises(SpecError):
        apply_overrides(base, ["no-equals-sign"])


# --------------------------------------------------------------------------- hashes
def test_content_hash_stable_across_processes() -> None:
    names = ["qwen3-8b", "deepseek-r1", "tiny-hybrid", "gpt-oss-20b"]
    here = [content_hash(get_arch(n)) for n in names]
    code = (
        "from modelopt_typed_recipes.catalog import get_arch\n"
        "from modelopt_typed_recipes.spec.serde import content_hash\n"
        f"print(','.join(content_hash(get_arch(n)) for n in {names!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    assert out.split(",") == here
    assert len(set(here)) == len(here)
    assert content_hash(apply_overrides(get_arch("qwen3-8b"), ["num_layers=35"])) != here[0]


# --------------------------------------------------------------------------- fuzzing
_LEAVES = st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
_JSONISH = st.recursive(_LEAVES, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                        max_leaves=12)


def _paths(doc: object, prefix: str = "") -> list[str]:
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            p = f"{prefix}.{k}" if prefix else k
            out.append(p)
            out += _paths(v, p)
    return out


def _set(doc: dict, path: str, value: object) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        doc = doc[k]
    doc[keys[-1]] = value


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([a.name for a in ENTRIES]), st.data())
def test_fuzzed_documents_give_spec_or_typed_error(name: str, data: st.DataObject) -> None:
    doc = to_dict(get_arch(name))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc) + ["bogus", "moe.bogus"]))
        try:
            _set(doc, path, data.draw(_JSONISH))
        except (KeyError, TypeError):
            pass
    try:
        out = from_dict(doc, ModelArch)
    except RecipeError:
        return
    assert isinstance(out, ModelArch)
    assert from_yaml(to_yaml(out), ModelArch) == out


@settings(max_examples=200, deadline=None)
@given(st.one_of(_JSONISH, st.text(max_size=200)))
def test_fuzzed_raw_input(doc: object) -> None:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    for parse in (lambda: from_yaml(text, ModelArch), lambda: from_json(text, ModelArch), lambda: from_dict(doc, ModelArch)):
        try:
            assert isinstance(parse(), ModelArch)
        except RecipeError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["qwen3-30b-a3b", "deepseek-v2-lite", "tiny-hybrid", "gpt-oss-20b"]), st.data())
def test_fuzzed_overrides(name: str, data: st.DataObject) -> None:
    arch = get_arch(name)
    key = data.draw(st.sampled_from(_paths(to_dict(arch)) + ["moe.nope", "x.y", "", "attention..num_heads"]))
    value = data.draw(st.one_of(st.text(max_size=15), st.integers(-3, 300).map(str), st.sampled_from(["null", "[1, 2]", "{a: 1}", "true", "1e6"])))
    try:
        out = apply_overrides(arch, [f"{key}={value}"])
    except RecipeError:
        return
    assert isinstance(out, ModelArch)
    assert attrs.has(type(out))
