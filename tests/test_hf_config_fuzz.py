"""Fuzzing the config.json reader end to end (bytes -> JSON -> ModelArch -> diff -> config.json again).

Random JSON documents, random bytes, and mutations of real config.json files (byte edits, key deletions,
values swapped for junk, deep nesting, huge numbers). Each example must end in a ModelArch or a typed
error (a RecipeError subclass) within a few seconds; no other exception, no hang. What succeeds must also
compare equal to its own config (``diff_hf_config`` empty) and write a config.json or refuse with a
typed error.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.bridges.hf_config import (
    diff_hf_config,
    from_hf_config,
    parse_config_json,
    to_hf_config,
)
from modelopt_typed_recipes.bridges.hf_config.model_types import BY_NAME
from modelopt_typed_recipes.errors import RecipeError

FACTS_PATH = Path(__file__).resolve().parent / "data" / "hf-config-facts.json"
REAL: dict[str, dict[str, Any]] = {
    k: v for k, v in json.loads(FACTS_PATH.read_text())["models"].items() if v.get("model_type")
}
REAL_IDS = sorted(REAL)
SECONDS = 5.0  # per example; a hang or a blow-up shows as a failure, not a stuck CI job
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def read_all_the_way(data: bytes | str) -> None:
    """The whole path a user's config.json takes; only typed errors may escape."""
    start = time.monotonic()
    try:
        config = parse_config_json(data, "config.json")
        arch = from_hf_config(config)
    except RecipeError as err:
        assert str(err) and len(str(err)) < 2000, "an error message must stay short"
    else:
        assert diff_hf_config(arch, config) == [], "a config must agree with what was read from it"
        try:
            written = to_hf_config(arch)
        except RecipeError:
            pass
        else:
            assert diff_hf_config(arch, written) == []
    assert time.monotonic() - start < SECONDS


# --------------------------------------------------------------------------- random documents
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(sorted(BY_NAME))
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25,
)


@FUZZ
@given(doc=st.dictionaries(st.text(max_size=12), _JSON, max_size=8), model_type=st.sampled_from(sorted(BY_NAME)))
def test_random_json_documents(doc: dict[str, Any], model_type: str) -> None:
    doc.setdefault("model_type", model_type)
    read_all_the_way(json.dumps(doc).encode())


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    read_all_the_way(data)


# --------------------------------------------------------------------------- mutations of real configs
_HUGE = "__a huge number__"


def _target(cfg: dict[str, Any]) -> dict[str, Any]:
    text = cfg.get("text_config")
    return text if isinstance(text, dict) else cfg


@FUZZ
@given(
    hf_id=st.sampled_from(REAL_IDS),
    edits=st.lists(
        st.tuples(st.sampled_from(["set", "delete", "null", "nest", "huge"]), st.integers(0, 400), _JSON),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_real_configs(hf_id: str, edits: list[tuple[str, int, Any]]) -> None:
    cfg = copy.deepcopy(REAL[hf_id])
    target = _target(cfg)
    for op, index, value in edits:
        keys = sorted(target)
        if not keys:
            break
        key = keys[index % len(keys)]
        if op == "set":
            target[key] = value
        elif op == "delete":
            del target[key]
        elif op == "null":
            target[key] = None
        elif op == "nest":
            for _ in range(index):
                value = [value]
            target[key] = value
        else:  # a number far beyond any size: up to 4,800 digits (JSON allows it; Python's int() does not)
            target[key] = _HUGE
    data = json.dumps(cfg).encode()
    for _, index, _ in edits:
        data = data.replace(b'"' + _HUGE.encode() + b'"', b"1" + b"0" * (index * 12), 1)
    read_all_the_way(data)


@FUZZ
@given(
    hf_id=st.sampled_from(REAL_IDS),
    cuts=st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=6)), min_size=1, max_size=4),
)
def test_byte_edits_of_real_configs(hf_id: str, cuts: list[tuple[int, bytes]]) -> None:
    data = bytearray(json.dumps(REAL[hf_id]).encode())
    for at, insert in cuts:
        at %= len(data) + 1
        data[at : at + len(insert) // 2] = insert
    read_all_the_way(bytes(data))


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 50_000,
        b'{"model_type": "llama", "x": ' + b"[" * 2_000 + b"]" * 2_000 + b"}",
        b'{"model_type": "llama", "vocab_size": 1' + b"0" * 4400 + b"}",
        b'{"model_type": "llama", "hidden_size": 1e400}',
        b'{"model_type": "llama", "hidden_size": NaN, "vocab_size": -Infinity}',
        b'{"model_type": "' + b"x" * 100_000 + b'"}',
        b'{"model_type": "llama", "hidden_act": "' + b"g" * 100_000 + b'"}',
        b'{"model_type": "nemotron_h", "hybrid_override_pattern": "' + b"M" * 200_000 + b'"}',
        b'{"model_type": "deepseek_v3", "num_hidden_layers": 9007199254740993}',
        b'{"model_type": "mystery", "auto_map": {"AutoConfig": "x.Y"}}',
        b"{\"model_type\": \"llama\", \"_name_or_path\": \"\\udfff\"}",
    ],
)
def test_known_hard_inputs(data: bytes) -> None:
    read_all_the_way(data)
