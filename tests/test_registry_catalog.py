"""Registry: lookup by name, HF id (any case) and alias, "did you mean", filters, registration rules,
launch profiles and tiny variants."""

from __future__ import annotations

import attrs
import pytest

from modelopt_typed_recipes.catalog import ARCHITECTURES, get_arch, list_archs, register
from modelopt_typed_recipes.catalog.profiles import get_profile, list_profiles
from modelopt_typed_recipes.catalog.tiny import TINY_MODELS
from modelopt_typed_recipes.errors import SpecError, UnknownNameError
from modelopt_typed_recipes.spec.arch import ModelArch

EXTRA = ["meta-llama/Llama-3.1-405B-Instruct", "llama3", "gptneox", "mixtral"]


def test_names_are_lowercase_repo_basenames() -> None:
    for arch in list_archs():
        if arch.hf_id and arch.family != "tiny":
            assert arch.name == arch.hf_id.rsplit("/", 1)[-1].lower()


@pytest.mark.parametrize("name", EXTRA)
def test_extra_entries(name: str) -> None:
    assert get_arch(name).name in ARCHITECTURES


def test_lookup_any_case_and_alias() -> None:
    a = get_arch("qwen3-8b")
    assert get_arch("Qwen/Qwen3-8B") is a
    assert get_arch("qwen/qwen3-8b") is a
    assert get_arch("  QWEN3-8B ") is a
    assert get_arch("llama3").hf_id == "meta-llama/Meta-Llama-3-8B"
    assert get_arch("gptneox").hf_id == "EleutherAI/gpt-neox-20b"
    assert get_arch("mixtral").hf_id == "mistralai/Mixtral-8x7B-v0.1"


def test_did_you_mean() -> None:
    with pytest.raises(UnknownNameError) as info:
        get_arch("qwen3-8")
    assert info.value.path == "name"
    assert "qwen3-8b" in info.value.hint


def test_filters() -> None:
    kinds = {k: {a.name for a in list_archs(kind=k)} for k in ("dense", "moe", "mla", "hybrid")}
    assert "qwen3-8b" in kinds["dense"] and "qwen3-30b-a3b" in kinds["moe"]
    assert "deepseek-r1" in kinds["mla"] and "nemotron-h-8b-base-8k" in kinds["hybrid"]
    assert sum(len(v) for v in kinds.values()) == len(ARCHITECTURES)
    assert {a.family for a in list_archs(family="QWEN")} == {"qwen"}
    assert list_archs(family="no-such-family") == []


def test_register_rejects_duplicates_and_accepts_new() -> None:
    base = get_arch("tiny-dense")
    with pytest.raises(SpecError, match="already registered"):
        register(attrs.evolve(base))
    with pytest.raises(SpecError, match="already registered"):
        register(attrs.evolve(base, name="my-model", aliases=("Qwen/Qwen3-8B",)))
    mine = attrs.evolve(base, name="my-test-model", hf_id="me/My-Test-Model")
    try:
        assert register(mine) is mine
        assert get_arch("ME/my-test-model") is mine
        replaced = attrs.evolve(mine, num_layers=3)
        register(replaced, replace=True)
        assert get_arch("my-test-model").num_layers == 3
    finally:
        ARCHITECTURES.unregister("my-test-model")
    assert "my-test-model" not in ARCHITECTURES


def test_keys_unique_across_entries() -> None:
    seen: dict[str, str] = {}
    for arch in list_archs():
        for key in {arch.name, arch.hf_id or arch.name, *arch.aliases}:
            assert seen.setdefault(key.lower(), arch.name) == arch.name


def test_entries_have_sources() -> None:
    for arch in list_archs():
        assert arch.notes, f"{arch.name} has no note citing its source"


def test_profiles() -> None:
    assert {p.name for p in list_profiles()} == {"kimi-k2-instruct", "kimi-k2-instruct-export"}
    quant = get_profile("moonshotai/kimi_k2_instruct")
    assert (quant.tensor_parallel, quant.expert_tensor_parallel, quant.expert_parallel) == (8, 1, 64)
    export = get_profile("KIMI-K2-INSTRUCT-EXPORT")
    assert export.pipeline_parallel == 16 and export.init_model_with_meta_device and export.use_cpu_initialization
    layers = export.pipeline_layers(get_arch(export.arch).num_layers)
    assert layers[0] == 3 and layers[-1] == 2 and sum(layers) == 61 and len(layers) == 16
    assert not isinstance(export, ModelArch)
    with pytest.raises(UnknownNameError):
        get_profile("kimi")
    with pytest.raises(SpecError):
        export.pipeline_layers(60)


@pytest.mark.parametrize("arch", TINY_MODELS, ids=lambda a: a.name)
def test_tiny_variants_are_legal(arch: ModelArch) -> None:
    assert arch.family == "tiny" and arch.hidden_size <= 128 and arch.num_layers <= 4
    assert arch.vocab.size <= 1024
    assert arch.params_total < 5_000_000
    att = arch.attention
    assert arch.hidden_size % att.num_heads == 0
    if getattr(att, "num_query_groups", None):
        assert att.num_heads % att.num_query_groups == 0 and att.num_query_groups % 2 == 0  # TP 2 works
    if arch.mamba:
        heads, head_dim, groups, _ = arch.mamba.resolved(arch.hidden_size)
        assert heads * head_dim == 2 * arch.hidden_size and heads % groups == 0
    if arch.moe:
        assert arch.moe.num_experts % 2 == 0


def test_one_tiny_per_kind() -> None:
    assert {"dense", "moe", "mla", "hybrid"} <= {a.kind for a in TINY_MODELS}
    for name in ("tiny-dense", "tiny-moe", "tiny-mla", "tiny-hybrid"):
        assert get_arch(name).family == "tiny"
