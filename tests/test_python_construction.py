"""Recipes built in Python are checked as YAML ones are: tuples, typed errors with field paths, nothing bare."""

from __future__ import annotations

import attrs
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.catalog import ARCHITECTURES, get_arch, list_archs, register
from modelopt_typed_recipes.errors import RecipeError, SpecError
from modelopt_typed_recipes.plan.archs import stage_archs
from modelopt_typed_recipes.spec.layout import ParallelLayout
from modelopt_typed_recipes.spec.recipe import Builtin, RandomInit, Recipe, TextData
from modelopt_typed_recipes.spec.techniques import AutoQuantize, Export, Quantize

OK = {"model": "reference-llama", "source": Builtin(), "stages": (Quantize(format="fp8"), Export()),
      "output_dir": "outputs/x"}


def error(**changes: object) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        Recipe(**{**OK, **changes})
    return info.value


def test_sequences_become_tuples() -> None:
    r = Recipe(**{**OK, "stages": [Quantize(format="fp8", exclude=["*lm_head*"]), Export()]})
    assert isinstance(r.stages, tuple) and r.stages[0].exclude == ("*lm_head*",)
    assert TextData(files=["a.txt"]).files == ("a.txt",)
    assert AutoQuantize(effective_bits=6, formats=["int4_awq", "fp8"]).formats == ("int4_awq", "fp8")
    with pytest.raises(AttributeError):
        r.stages.append(Quantize(format="int8_sq"))  # type: ignore[attr-defined]


def test_dicts_and_tags_are_structured_like_yaml() -> None:
    r = Recipe(**{**OK, "source": "builtin", "stages": [{"technique": "quantize", "format": "fp8"}, "export"],
                  "calibration": {"dataset": "reference-train", "num_samples": 4}, "layout": {}})
    assert r.source == Builtin() and r.stages == (Quantize(format="fp8"), Export())
    assert r.calibration.num_samples == 4 and r.layout == ParallelLayout()
    assert Recipe(**{**OK, "source": "random", "model": "tiny-dense"}).source == RandomInit()
    assert r == Recipe.from_dict(yaml.safe_load(r.to_yaml()))


@pytest.mark.parametrize(("changes", "path", "words"), [
    ({"stages": [{"format": "fp8"}]}, "stages[0].technique", "required field missing"),
    ({"stages": ["fp8"]}, "stages[0]", "expected a mapping with a technique"),
    ({"stages": [Quantize(format="fp8"), 7]}, "stages[1]", "expected a mapping"),
    ({"stages": [{"technique": "quantize", "format": 8}]}, "stages[0].format", "expected"),
    ({"stages": "quantize"}, "stages", "expected a list"),
    ({"source": "hf"}, "source.path", "required field missing"),
    ({"source": "weights"}, "source", "expected a mapping with a type"),
    ({"name": ["a"]}, "name", "expected"),
    ({"seed": "1"}, "seed", "integer"),
    ({"calibration": {"dataset": "reference-train", "num_samples": "many"}}, "calibration.num_samples", "integer"),
    ({"layout": {"expert_parallel": 2}}, "layout.expert_parallel", "data_parallel: 2"),
    ({"backend": "trt"}, "backend", "is not one of"),
    ({"model": 3}, "model", "expected a registry name or an architecture"),
])
def test_wrong_types_are_typed_errors_with_paths(changes: dict, path: str, words: str) -> None:
    err = error(**changes)
    assert err.path == path and words in str(err), (err.path, str(err))


@pytest.mark.parametrize("field", ["backend", "device", "dtype", "save"])
def test_none_for_a_required_choice_fails_as_yaml_null_does(field: str) -> None:
    """Found by hypothesis: ``Recipe(backend=None)`` was accepted, and its YAML (``backend: null``) was refused."""
    err = error(**{field: None})
    assert isinstance(err, SpecError) and err.path == field and "got null" in err.message
    assert f"leave {field} out for the default 'auto'" in err.hint
    with pytest.raises(SpecError) as info:
        Recipe.from_dict(yaml.safe_load(Recipe(**OK).to_yaml().replace(f"{field}: auto", f"{field}: null")))
    assert info.value.path == field


def test_none_stays_allowed_where_the_type_allows_it() -> None:
    r = Recipe(**{**OK, "stages": (Quantize(format="fp8", kv_cache=None, algorithm=None), Export())})
    assert r.stages[0].kv_cache is None and r == Recipe.from_dict(yaml.safe_load(r.to_yaml()))
    assert AutoQuantize(effective_bits=6, formats=["int4_awq", "fp8"], kv_cache=None).kv_cache is None
    assert TextData(dataset=None, files=["a.txt"]).dataset is None


def test_stage_order_rules_hold_for_lists_too() -> None:
    assert error(stages=[{"technique": "quantize", "format": "fp8"}, "export",
                         {"technique": "quantize", "format": "int8_sq"}]).path == "stages[1]"


def test_registering_the_same_architecture_twice_lists_it_once() -> None:
    before = len(list_archs())
    arch = attrs.evolve(get_arch("tiny-dense"), name="my-twice", hf_id=None, aliases=())
    try:
        assert register(arch) is arch and register(arch) is arch
        assert len(list_archs()) == before + 1
    finally:
        ARCHITECTURES.unregister("my-twice")
    assert len(list_archs()) == before
    register(get_arch("qwen3-8b"))  # a built-in entry again: still once
    assert len(list_archs()) == before
    with pytest.raises(SpecError, match="already registered"):  # an equal copy is another entry: refused
        register(attrs.evolve(get_arch("qwen3-8b")))


# --------------------------------------------------------------------------- random Python values
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["fp8", "builtin", "random", "hf", "export", "quantize",
                                                           "reference-llama", "tiny-dense", "auto", "cpu"]))
STAGE_DICTS = st.fixed_dictionaries(
    {"technique": st.sampled_from(["quantize", "auto_quantize", "prune", "export", "quantise"])},
    optional={"format": st.one_of(SCALARS, st.sampled_from(["fp8", "int4_awq", "nvfp4", "hf", "FP8_DEFAULT_CFG"])),
              "exclude": st.one_of(SCALARS, st.lists(SCALARS, max_size=3)),
              "effective_bits": SCALARS, "num_layers": SCALARS, "params": SCALARS, "kv_cache": SCALARS})
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
FIELDS = {
    "name": st.one_of(st.none(), VALUES),
    "model": st.one_of(st.sampled_from(["reference-llama", "tiny-dense", "tiny-moe", "nope"]), VALUES),
    "source": st.one_of(st.just(Builtin()), st.just(RandomInit()), st.sampled_from(["builtin", "random", "hf"]),
                        st.fixed_dictionaries({"type": SCALARS}, optional={"path": SCALARS, "seed": SCALARS}),
                        VALUES),
    "stages": st.one_of(st.lists(st.one_of(STAGE_DICTS, st.sampled_from(["export", "quantize"]), VALUES),
                                 max_size=3).map(lambda s: s if s else ["export"]), VALUES),
    "calibration": st.one_of(st.fixed_dictionaries({"dataset": SCALARS}, optional={"num_samples": SCALARS,
                                                   "files": VALUES}), VALUES),
    "evaluation": st.one_of(st.none(), VALUES),
    "layout": st.one_of(st.none(), st.dictionaries(st.sampled_from(["tensor_parallel", "expert_parallel",
                                                                    "data_parallel", "sequence_parallel"]),
                                                   SCALARS, max_size=3), VALUES),
    "output_dir": st.one_of(st.just("outputs/x"), VALUES),
    "backend": SCALARS, "device": SCALARS, "dtype": SCALARS, "seed": SCALARS, "schema_version": SCALARS,
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({k: OK_ for k, OK_ in FIELDS.items() if k in ("model", "source", "stages",
                                                                           "output_dir")},
                             optional={k: v for k, v in FIELDS.items()
                                       if k not in ("model", "source", "stages", "output_dir")}))
def test_random_python_values_give_typed_errors_only(kwargs: dict) -> None:
    try:
        r = Recipe(**kwargs)
        stage_archs(r)
        r.content_hash()
    except RecipeError as err:
        assert err.message, err
        return
    assert isinstance(r.stages, tuple) and all(attrs.has(type(s)) for s in r.stages)
    assert r == Recipe.from_dict(yaml.safe_load(r.to_yaml()))


@pytest.mark.parametrize(("version", "words"), [(0, r"from Python only this package's version \(1\)"),
                                                (2, r"newer than this package understands \(1\)")])
def test_a_schema_version_yaml_would_refuse_is_refused_from_python_too(version: int, words: str) -> None:
    """Found by the property above: Recipe(schema_version=2) was built, and its own YAML then refused."""
    with pytest.raises(SpecError, match=words) as err:
        Recipe(model="reference-llama", source=Builtin(), stages=["export"], output_dir="o", schema_version=version)
    assert err.value.path == "schema_version"
    with pytest.raises(SpecError, match=words):
        attrs.evolve(get_arch("reference-llama"), schema_version=version)
