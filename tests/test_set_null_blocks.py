"""``run --set`` under the blocks a recipe leaves null (``evaluation``, ``gate``, ``layout``), through the run
command's own reading of its command line (``read_recipes``), in this process: random paths and values end in a
valid recipe or a typed error at a field path, in words, never a bare exception or Python's own message."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.cli import build_parser
from modelopt_typed_recipes.cli.run_cmds import read_recipes
from modelopt_typed_recipes.errors import RecipeError, SpecError
from modelopt_typed_recipes.spec.recipe import Recipe
from modelopt_typed_recipes.spec.serde import apply_overrides

RECIPE = "Qwen/Qwen3-0.6B:fp8"  # evaluation, gate and layout null
BLOCKS = ["evaluation", "gate", "layout", "calibration", "tasks", "stages[0]", "source", "name"]
KEYS = ["dataset", "num_samples", "seq_length", "files", "hf_dataset", "min_accuracy", "max_accuracy_drop",
        "max_perplexity_change_pct", "tensor_parallel", "pipeline_parallel", "sequence_parallel", "data_parallel",
        "virtual_pipeline", "first_stage_layers", "tasks", "format", "mmlu", "next_sentence", "[0]", "[-1]", "[3]", ""]
VALUES = ["null", "~", "8", "0", "-1", "2", "true", "0.5", "1e400", "reference-heldout", "reference-train", "[]", "{}",
          "[1, 2]", "{dataset: reference-heldout}", "{mmlu: 0.3}", "{tensor_parallel: 2}", "[{task: next_sentence}]",
          "!!python/object:os.system", "&a [*a]", "", "x"]
PYTHON_WORDS = re.compile(r"object has no attribute|not iterable|NoneType|not subscriptable|unhashable|"
                          r"takes \d+ positional|missing \d+ required|object is not")


def _key(draw: Any) -> str:
    parts = [draw(st.sampled_from(BLOCKS))]
    for part in draw(st.lists(st.sampled_from(KEYS) | st.text(max_size=4), max_size=3)):
        parts.append(part if part.startswith("[") else f".{part}")
    return "".join(parts)


@st.composite
def sets(draw: Any) -> list[str]:
    n = draw(st.integers(1, 4))
    return [f"{_key(draw)}={draw(st.sampled_from(VALUES) | st.text(max_size=8))}" if draw(st.integers(0, 9))
            else draw(st.text(max_size=12)) for _ in range(n)]


def _read(items: list[str]) -> Recipe:
    argv = ["run", RECIPE]
    argv += [f"--set={item}" for item in items]  # the = form: argparse takes "--set -x" for an option
    ((_, recipe),) = read_recipes(build_parser().parse_args(argv))
    return recipe


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=sets())
def test_random_sets_end_valid_or_in_a_typed_error_at_a_path(items: list[str]) -> None:
    try:
        _read(items)
    except RecipeError as err:
        pathless = any(i.partition("=")[0].strip() in ("", ".") for i in items)  # no field to name
        assert err.path or pathless or "is not KEY=VALUE" in err.message, (items, err)
        assert not PYTHON_WORDS.search(str(err)), (items, str(err))


def test_a_key_given_again_takes_its_last_place() -> None:
    """A dict keeps a key where it first came: the null below used to be applied last and win, silently."""
    e = _read(["evaluation.dataset=reference-train", "evaluation=null", "evaluation.dataset=reference-heldout"])
    assert e.evaluation is not None and e.evaluation.dataset == "reference-heldout"
    layout = _read(["layout.tensor_parallel=2", "layout=null", "layout.tensor_parallel=4"]).layout
    assert layout is not None and layout.tensor_parallel == 4
    assert _read(["layout.tensor_parallel=2", "layout=null"]).layout is None  # the last word still wins


@pytest.mark.parametrize(("items", "path", "words"), [
    (["calibration=null"], "calibration", "got None"),  # a required block given as null
    (["layout=2"], "layout", "got 2"),
    (["gate.min_accuracy=3"], "gate.min_accuracy", "got 3"),
    (["evaluation.num_samples=8"], "evaluation.dataset", "give exactly one of dataset"),
    (["evaluation.files[0]=a.txt"], "evaluation.files[0]", "no list index"),  # was "expected a list, got {'0': ..."
])
def test_a_wrong_kind_of_block_is_named_in_words(items: list[str], path: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        _read(items)
    assert info.value.path == path and words in info.value.message, info.value


def test_a_python_override_key_that_is_not_a_str_is_a_typed_error() -> None:
    recipe = _read([])
    for key in (1, None, ("calibration", "num_samples")):
        with pytest.raises(SpecError, match="dotted field path"):
            apply_overrides(recipe, {key: 2})
