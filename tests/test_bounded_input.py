"""Bounded reading of every input a user controls (issue 11): typed errors, never a traceback, a hang or a
blow-up, for non-UTF-8 bytes, deep nesting, huge integers, alias bombs, duplicate keys and absurd sizes."""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest

from modelopt_typed_recipes.errors import DataError, LayoutError, RecipeError, SpecError, brief
from modelopt_typed_recipes.plan.launch import RANKS_SHOWN, plan
from modelopt_typed_recipes.plan.resolve import launch_world, resolve
from modelopt_typed_recipes.spec.bounded import MAX_DEPTH, BoundError, load_json, load_yaml
from modelopt_typed_recipes.spec.layout import MAX_WORLD_SIZE, ParallelLayout
from modelopt_typed_recipes.spec.recipe import RandomInit, Recipe, TextData
from modelopt_typed_recipes.spec.serde import apply_overrides, from_yaml
from modelopt_typed_recipes.spec.techniques import Export

BASE = """model: reference-llama
source: {type: builtin}
stages: [{technique: quantize, format: fp8}]
output_dir: out
backend: hf
device: cpu
"""


def laughs(levels: int = 9) -> str:
    """The "billion laughs" document: each level an anchored list of nine aliases of the one before."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nmodel: *a{levels - 1}\n"


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and len(text) < 1500, text[:200]
    return text


def test_billion_laughs_is_refused_fast_and_small(tmp_path):
    f = tmp_path / "laughs.yaml"
    f.write_text(laughs())
    assert len(f.read_bytes()) < 1300
    tracemalloc.start()
    t = time.perf_counter()
    with pytest.raises(BoundError, match="aliases expand to more than"):
        Recipe.load(f)
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 20 * 2**20
    assert str(f) in one_line(_err(lambda: Recipe.load(f)))


def _err(fn):
    try:
        fn()
    except RecipeError as err:
        return err
    raise AssertionError("no error")


def test_a_few_aliases_are_fine_and_merge_keys_are_not_duplicates():
    text = BASE.replace("output_dir: out", "output_dir: out\ncalibration: &cal {dataset: reference-train, "
                        "num_samples: 4}")
    recipe = from_yaml(text, Recipe)
    assert recipe.calibration.num_samples == 4
    merged = load_yaml("base: &b {x: 1, y: 2}\nother: {<<: *b, y: 3}\n")
    assert merged["other"] == {"x": 1, "y": 3}


def test_an_alias_inside_its_own_node_is_refused():
    with pytest.raises(BoundError, match="contains it"):
        load_yaml("a: &a [1, *a]\n")


@pytest.mark.parametrize("text", [
    "model: " + "[" * 2000 + "]" * 2000,
    "model: " + "{a: " * 500 + "1" + "}" * 500,
    "model:\n" + "".join("  " * i + "- \n" for i in range(300)),
])
def test_deep_yaml_is_a_typed_error(text):
    with pytest.raises(BoundError, match=f"deeper than {MAX_DEPTH}"):
        from_yaml(text, Recipe, source="deep.yaml")


def test_deep_json_is_a_typed_error(tmp_path):
    f = tmp_path / "deep.json"
    f.write_text('{"model": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(BoundError, match="deeper than"):
        Recipe.load(f)
    with pytest.raises(BoundError, match="deeper than"):
        load_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))  # under Python's recursion limit, over ours


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_huge_integers_are_typed_errors(tmp_path, suffix):
    f = tmp_path / f"big{suffix}"
    if suffix == ".json":
        f.write_text(json.dumps({"model": "reference-llama"})[:-1] + ', "seed": ' + "9" * 5000 + "}")
    else:
        f.write_text(BASE + "seed: " + "9" * 5000 + "\n")
    err = _err(lambda: Recipe.load(f))
    assert isinstance(err, SpecError) and len(one_line(err)) < 600


def test_integers_beyond_64_bits_and_seeds_outside_torch_are_refused():
    with pytest.raises(SpecError, match="seed"):
        from_yaml(BASE + "seed: 18446744073709551616\n", Recipe)
    with pytest.raises(SpecError, match=r"seed: must be an integer in \[0, 2\*\*63\)"):
        from_yaml(BASE + "seed: -1\n", Recipe)
    with pytest.raises(SpecError, match=r"source.seed"):
        from_yaml(BASE.replace("{type: builtin}", "{type: random, seed: 9223372036854775808}"), Recipe)
    assert from_yaml(BASE + "seed: 9223372036854775807\n", Recipe).seed == 2**63 - 1
    with pytest.raises(SpecError, match="seed"):
        RandomInit(seed=2**64)


def test_non_utf8_recipe_names_the_file(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes(BASE.replace("out", "caf\xe9").encode("latin-1"))
    err = _err(lambda: Recipe.load(f))
    assert isinstance(err, SpecError) and "latin1.yaml" in str(err) and "not UTF-8" in str(err)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert Recipe.load(bom).model == "reference-llama"


def test_a_recipe_file_is_read_with_a_size_limit(tmp_path):
    f = tmp_path / "huge.yaml"
    f.write_text(BASE + "#" * (2 << 20) + "\n")
    with pytest.raises(BoundError, match="larger than"):
        Recipe.load(f)


@pytest.mark.parametrize("suffix,text", [
    (".yaml", BASE + "stages: [{technique: quantize, format: int4_awq}]\n"),
    (".json", '{"model": "reference-llama", "model": "qwen3-8b"}'),
])
def test_duplicate_keys_are_typed_errors(tmp_path, suffix, text):
    f = tmp_path / f"dup{suffix}"
    f.write_text(text)
    err = _err(lambda: Recipe.load(f))
    assert isinstance(err, BoundError) and "duplicate key" in str(err)
    if suffix == ".yaml":
        assert err.path == "stages" and "line 7" in str(err) and "first on line 3" in str(err)


def test_set_values_go_through_the_same_limits():
    recipe = from_yaml(BASE, Recipe)
    with pytest.raises(BoundError):
        apply_overrides(recipe, ["calibration=" + laughs().replace("\n", "\n")])
    with pytest.raises(BoundError):
        apply_overrides(recipe, ["seed=" + "[" * 300 + "]" * 300])
    with pytest.raises(SpecError, match="seed"):
        apply_overrides(recipe, ["seed=" + "9" * 5000])
    assert apply_overrides(recipe, ["output_dir={not yaml"]).output_dir == "{not yaml"


def test_error_messages_show_bounded_values():
    text = BASE.replace("output_dir: out", "output_dir: [" + ", ".join(["x" * 1000] * 100) + "]")
    err = _err(lambda: from_yaml(text, Recipe))
    assert len(one_line(err)) < 600
    assert len(brief(list(range(10**6)))) < 300 and len(brief("y" * 10**6)) < 300
    assert "\n" not in SpecError("a\nb", hint="c\nd").__str__()


def test_environment_integers_are_bounded_and_typed():
    with pytest.raises(LayoutError, match="WORLD_SIZE"):
        launch_world({"WORLD_SIZE": "abc"})
    with pytest.raises(LayoutError, match="rank=4"):
        launch_world({"WORLD_SIZE": "2", "RANK": "4"})
    assert launch_world({}) == (1, 0, 0)
    for var in ("TP", "PP", "WORLD_SIZE", "SLURM_NTASKS", "MASTER_PORT"):
        err = _err(lambda var=var: resolve(environ={var: "9" * 5000}))
        assert isinstance(err, LayoutError) and var in str(err) and len(one_line(err)) < 600
    with pytest.raises(LayoutError, match="MASTER_PORT"):
        resolve(environ={"MASTER_PORT": "70000"})


def test_absurd_layouts_are_refused_at_once():
    t = time.perf_counter()
    with pytest.raises(SpecError, match="data_parallel"):
        from_yaml(BASE.replace("backend: hf", "backend: megatron")
                  + "layout: {data_parallel: 1.0e+21, expert_tensor_parallel: 3}\n", Recipe)
    with pytest.raises(LayoutError, match="data_parallel"):
        ParallelLayout(data_parallel=2**40, expert_tensor_parallel=3)
    with pytest.raises(LayoutError, match="TP\\*PP\\*CP\\*DP"):
        ParallelLayout(tensor_parallel=1024, data_parallel=1024, expert_tensor_parallel=3)
    with pytest.raises(LayoutError, match="expert side"):  # the hint's divisor search is bounded by the cap
        ParallelLayout(data_parallel=MAX_WORLD_SIZE - 1, expert_tensor_parallel=4)
    assert time.perf_counter() - t < 1.0


def test_planning_a_million_gpus_answers_at_once():
    t = time.perf_counter()
    lp = plan("gpt-neox-20b", 1_000_000, check_memory=False)
    summary = lp.summary()
    assert time.perf_counter() - t < 1.0
    assert lp.world_size == 1_000_000 and len(lp.rank_map) == 1_000_000
    assert len(summary["rank_map"]) == RANKS_SHOWN and summary["rank_map_total"] == 1_000_000
    assert lp.rank_map[-1].rank == 999_999 and lp.rank_map[123_456] == lp.rank_map[123_456 - 1_000_000]
    with pytest.raises(LayoutError, match="gpus"):
        plan("gpt-neox-20b", 10**11)


def test_export_subdir_cannot_collide_with_our_own_files():
    for bad in ("manifest.json", "./manifest.json", ".lock", "01-quantize-fp8", "/abs", "a/../../b", ".", "a\0b"):
        with pytest.raises(SpecError, match="subdir"):
            Export(subdir=bad)
    assert Export(subdir="hf/fp8").folder == "hf/fp8"


def test_a_deep_jsonl_line_is_a_data_error(tmp_path):
    from modelopt_typed_recipes.runtime.data import read_documents

    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "fine"}\n{"text": ' + "[" * 5000 + "]" * 5000 + "}\n")
    err = _err(lambda: read_documents(TextData(files=(str(f),))))
    assert isinstance(err, DataError) and "line 2" in str(err) and "deeper" in str(err)
    f.write_text('{"text": ' + "1" * 5000 + "}\n")
    assert isinstance(_err(lambda: read_documents(TextData(files=(str(f),)))), DataError)
    f.write_text('{"text": 12}\n')
    with pytest.raises(DataError, match="not text"):
        read_documents(TextData(files=(str(f),)))
