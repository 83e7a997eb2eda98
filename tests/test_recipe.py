"""Recipe and technique specs: construction rules, error paths, YAML round trips, content hashes."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.errors import RecipeError, SpecError, UnknownNameError
from modelopt_typed_recipes.spec import serde
from modelopt_typed_recipes.spec.recipe import Builtin, HFCheckpoint, RandomInit, Recipe, TextData
from modelopt_typed_recipes.spec.techniques import KV_CACHE_FORMATS, AutoQuantize, Export, Prune, Quantize

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

BASE = {
    "model": "reference-llama",
    "source": {"type": "builtin"},
    "stages": [{"technique": "quantize", "format": "fp8"}, {"technique": "export"}],
    "output_dir": "outputs/x",
}


def recipe(**changes: object) -> Recipe:
    return Recipe.from_dict({**BASE, **changes})


def error_of(**changes: object) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        r = recipe(**changes)
        r.archs_per_stage(get_arch)
    return info.value


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load_and_round_trip(path: Path) -> None:
    r = Recipe.load(path)
    assert r.name
    again = serde.from_yaml(r.to_yaml(), Recipe)
    assert again == r
    assert again.content_hash() == r.content_hash()
    r.archs_per_stage(get_arch)


def test_content_hash_is_stable_and_sensitive() -> None:
    a, b = recipe(), recipe()
    assert a.content_hash() == b.content_hash()
    assert len(a.content_hash()) == 16
    assert recipe(seed=7).content_hash() != a.content_hash()
    assert recipe(stages=[{"technique": "quantize", "format": "int4_awq"}]).content_hash() != a.content_hash()


def test_presets_and_short_names_mean_the_same_format() -> None:
    assert Quantize(format="FP8_DEFAULT_CFG").quant_format == Quantize(format="fp8").quant_format
    assert Quantize(format="fp8").preset == "FP8_DEFAULT_CFG"
    # a preset our table does not list is left for the runtime check against the installed ModelOpt
    q = Quantize(format="INT8_WEIGHT_ONLY_CFG")
    assert q.quant_format is None and q.preset == "INT8_WEIGHT_ONLY_CFG"


def test_needs_cuda_follows_the_format_table() -> None:
    assert not Quantize(format="fp8").needs_cuda
    assert Quantize(format="nvfp4").needs_cuda
    assert Quantize(format="fp8", kv_cache="nvfp4").needs_cuda
    assert Quantize(recipe="general/ptq/nvfp4_default-kv_fp8_cast").needs_cuda
    assert recipe(stages=[{"technique": "quantize", "format": "mxfp8"}]).needs_cuda


_quantize = st.builds(
    Quantize,
    format=st.sampled_from(["fp8", "int8_sq", "int4_awq", "w4a8_awq", "nvfp4", "FP8_DEFAULT_CFG"]),
    kv_cache=st.none() | st.sampled_from(KV_CACHE_FORMATS),
    exclude=st.lists(st.sampled_from(["*lm_head*", "*layers.0.*", "*mlp*"]), max_size=3).map(tuple),
    algorithm=st.none() | st.sampled_from(["max", "smoothquant", "awq_lite", "mse"]),
    calibration_samples=st.none() | st.integers(1, 4096),
    compress=st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(stage=_quantize, seed=st.integers(0, 2**31), export=st.booleans(),
       samples=st.integers(1, 1024), device=st.sampled_from(["auto", "cpu", "cuda"]))
def test_random_recipes_round_trip(stage: Quantize, seed: int, export: bool, samples: int, device: str) -> None:
    stages = (stage, Export()) if export else (stage,)
    r = Recipe(model="reference-llama", source=RandomInit(seed=seed % 7), stages=stages,
               calibration=TextData(dataset="reference-train", num_samples=samples), output_dir="o", device=device)
    assert serde.from_yaml(r.to_yaml(), Recipe) == r
    assert serde.from_json(serde.to_json(r), Recipe).content_hash() == r.content_hash()


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(["model", "source", "stages", "output_dir", "calibration", "backend", "seed",
                                        "evaluation", "layout", "colour"]),
                       st.none() | st.integers() | st.text(max_size=8) | st.lists(st.integers(), max_size=2)
                       | st.dictionaries(st.sampled_from(["technique", "format", "type", "path"]),
                                         st.text(max_size=8), max_size=2)))
def test_random_bad_documents_give_typed_errors(doc: dict) -> None:
    try:
        Recipe.from_dict(doc)
    except RecipeError as err:
        assert str(err)
    # anything else (TypeError, KeyError...) fails the test


# --------------------------------------------------------------------------- errors name the field
@pytest.mark.parametrize(
    ("changes", "path", "fragment"),
    [
        ({"stages": [{"technique": "quantise", "format": "fp8"}]}, "stages[0].technique", "did you mean 'quantize'"),
        ({"stages": [{"technique": "quantize", "format": "fp9"}]}, "stages[0].format", "did you mean 'fp8'"),
        ({"stages": [{"format": "fp8"}]}, "stages[0].technique", "say which technique"),
        ({"stages": [{"technique": "quantize", "format": "fp8", "colour": 1}]}, "stages[0].colour", "unknown key"),
        ({"stages": [{"technique": "quantize"}]}, "stages[0].format", "exactly one of format and recipe"),
        ({"stages": [{"technique": "quantize", "format": "fp8", "recipe": "general/ptq/x"}]}, "stages[0].format",
         "exactly one"),
        ({"stages": [{"technique": "quantize", "format": "fp8", "kv_cache": "fp16"}]}, "stages[0].kv_cache",
         "is not one of"),
        ({"stages": [{"technique": "quantize", "format": "fp8", "algorithm": "awq"}]}, "stages[0].algorithm",
         "did you mean"),
        ({"stages": [{"technique": "quantize", "format": "fp8", "calibration_samples": 0}]},
         "stages[0].calibration_samples", "positive"),
        ({"stages": [{"technique": "export"}, {"technique": "quantize", "format": "fp8"}]}, "stages[0]",
         "export must be the last"),
        ({"stages": [{"technique": "quantize", "format": "fp8"}, {"technique": "quantize", "format": "int8_sq"}]},
         "stages[1]", "one quantization per recipe"),
        ({"stages": [{"technique": "quantize", "format": "fp8"}, {"technique": "prune", "num_layers": 4}]},
         "stages[1]", "prune before quantizing"),
        ({"stages": []}, "stages", "at least one stage"),
        ({"stages": [{"technique": "prune", "num_layers": 9}]}, "stages[0].num_layers", "larger than the model's 6"),
        ({"stages": [{"technique": "prune", "num_attention_heads": 3}]}, "stages[0].num_attention_heads",
         "query groups"),
        ({"stages": [{"technique": "prune", "num_moe_experts": 4}]}, "stages[0].num_moe_experts", "no mixture"),
        ({"stages": [{"technique": "prune", "num_layers": 4, "params": "5M"}]}, "stages[0].params", "not both"),
        ({"stages": [{"technique": "prune"}]}, "stages[0].num_layers", "say what to prune"),
        ({"stages": [{"technique": "auto_quantize", "effective_bits": 3.0, "formats": ["int4_awq", "fp8"]}]},
         "stages[0].effective_bits", "below the smallest candidate"),
        ({"stages": [{"technique": "auto_quantize", "formats": ["fp8"]}]}, "stages[0].effective_bits",
         "give effective_bits"),
        ({"stages": [{"technique": "auto_quantize", "effective_bits": 6, "formats": ["fp7"]}]},
         "stages[0].formats[0]", "unknown quantization format"),
        ({"stages": [{"technique": "export", "format": "onnx"}]}, "stages[0].format", "is not one of"),
        ({"stages": [{"technique": "export", "subdir": "../x"}]}, "stages[0].subdir", "relative folder"),
        ({"model": "referense-llama"}, "model", "did you mean 'reference-llama'"),
        ({"source": {"type": "hf"}}, "source.path", "required field missing"),
        ({"source": {"type": "s3", "path": "x"}}, "source.type", "unknown type"),
        ({"calibration": {"dataset": "reference-train", "files": ["a.txt"]}}, "calibration.dataset", "exactly one"),
        ({"calibration": {"dataset": "wikitext"}}, "calibration.dataset", "is not one of"),
        ({"evaluation": {"dataset": "reference-train"}}, "evaluation.dataset", "training split"),
        ({"backend": "trtllm"}, "backend", "is not one of"),
        ({"layout": {"tensor_parallel": 2}, "backend": "hf"}, "layout", "one process"),
        ({"seed": "x"}, "seed", "integer"),
        ({"schema_version": 99}, "schema_version", "newer"),
    ],
)
def test_bad_recipes_name_the_field(changes: dict, path: str, fragment: str) -> None:
    err = error_of(**changes)
    assert isinstance(err, SpecError | RecipeError)
    assert err.path == path, str(err)
    assert fragment in str(err), str(err)


def test_unknown_model_is_an_unknown_name_error() -> None:
    err = error_of(model="no-such-model")
    assert isinstance(err, UnknownNameError) and err.path == "model"


# --------------------------------------------------------------------------- pruning hands its architecture on
def test_prune_threads_the_pruned_arch_into_later_stages() -> None:
    r = Recipe.from_dict({**BASE, "stages": [{"technique": "prune", "num_layers": 4, "ffn_hidden_size": 512},
                                             {"technique": "quantize", "format": "fp8"}, {"technique": "export"}]})
    archs = r.archs_per_stage(get_arch)
    assert [a.num_layers for a in archs] == [6, 4, 4]
    assert archs[1].ffn_hidden_size == 512 and archs[1].params_total < archs[0].params_total
    assert r.final_arch(get_arch) == archs[-1]


def test_prune_keeps_the_head_dimension() -> None:
    base = get_arch("reference-llama")
    pruned = Prune(hidden_size=128, num_attention_heads=2).pruned(base)
    assert pruned.head_dim == base.head_dim == 64
    assert pruned.attention.num_heads == 2 and pruned.hidden_size == 128
    assert Prune(params="5M").pruned(base) == base  # a search target: known only after the run
    assert Prune(params="5M").export_config == {}
    assert Prune(num_layers=4).export_config == {"num_layers": 4}


def test_prune_moe_and_hybrid_rules() -> None:
    moe = get_arch("tiny-moe")
    assert moe.moe is not None
    pruned = Prune(num_moe_experts=4, moe_ffn_hidden_size=32).pruned(moe)
    assert pruned.moe.num_experts == 4 and pruned.moe.ffn_hidden_size == 32
    with pytest.raises(SpecError, match="router_topk"):
        Prune(num_moe_experts=1).validate_for(moe)
    with pytest.raises(SpecError, match="dense"):
        Prune(active_params="1M").validate_for(get_arch("reference-llama"))
    hybrid = get_arch("tiny-hybrid")
    with pytest.raises(SpecError) as info:
        Prune(num_layers=2).validate_for(hybrid)
    assert info.value.path == "num_layers"


def test_parameter_counts_accept_suffixes() -> None:
    assert Prune(params="5M").params == 5_000_000
    assert Prune(params="1.5B").params == 1_500_000_000
    assert Prune(params=123).params == 123
    with pytest.raises(SpecError):
        Prune(params="lots")
    for infinite in ("INF", "inf", "infB", "nan"):  # float() takes them; a count they are not
        with pytest.raises(SpecError):
            Prune(params=infinite)


def test_labels_and_sources() -> None:
    assert Quantize(format="FP8_DEFAULT_CFG", kv_cache="fp8").label == "quantize-fp8-kv_fp8"
    assert Quantize(recipe="general/ptq/nvfp4_default-kv_fp8_cast").label == "quantize-nvfp4_default-kv_fp8_cast"
    assert AutoQuantize(effective_bits=4.8).label == "auto_quantize-4.8bits"
    assert Export(subdir="deploy").folder == "deploy"
    r = recipe(source={"path": "/ckpt"})  # the type tag of a source defaults to hf
    assert isinstance(r.source, HFCheckpoint)
    assert isinstance(recipe().source, Builtin)
    assert attrs.evolve(recipe(), name=None).label == "quantize-fp8 + export-hf"


def test_yaml_text_with_inline_architecture() -> None:
    arch = serde.to_dict(get_arch("tiny-dense"))
    doc = yaml.safe_dump({**BASE, "model": arch, "source": {"type": "random", "seed": 3}})
    r = serde.from_yaml(doc, Recipe)
    assert r.resolved_arch(get_arch) == get_arch("tiny-dense")
    with pytest.raises(SpecError, match="registry model"):
        Recipe.from_dict({**BASE, "model": arch})  # built-in weights belong to a registry name
