"""Fuzzing every input a user controls (issue 11), a short run for CI: recipe documents, ``--set`` overrides,
``plan`` arguments and launch environments. Each example must end in exit 0 or a typed error of one line,
under 5 s and 500 MB, with the user's files untouched. ``benchmarks/fuzz.py`` runs the same strategies
for 10,000+ inputs (``benchmarks/fuzz.md``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _fuzz import (
    Sentinel,
    apply_to_base,
    check_file,
    environments,
    measure,
    overrides,
    plan_argvs,
    recipe_documents,
    run_cli,
    run_cli_subprocess,
    warm_up,
)

FAST = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Sentinel]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "data.jsonl").write_text('{"text": "some calibration text"}\n')
    sentinel = Sentinel(root / "user-files")
    warm_up(root, str(sentinel.root), str(root / "data.jsonl"))
    return root, sentinel


def assert_fine(outcome, what) -> None:
    assert outcome.kind in ("ok", "typed"), (outcome, what)


@FAST
@given(doc=st.data(), env=st.sampled_from(["cpu", "gpu"]))
def test_recipe_documents(place, doc, env) -> None:
    root, sentinel = place
    suffix, data = doc.draw(recipe_documents(sentinel=str(sentinel.root), data_file=str(root / "data.jsonl")))
    f = root / f"recipe{suffix}"
    f.write_bytes(data)
    outcome = measure(lambda: check_file(f, env))
    assert_fine(outcome, data[:500])
    assert sentinel.intact()


@settings(FAST, max_examples=80)
@given(items=overrides)
def test_set_overrides(place, items) -> None:
    _root, sentinel = place
    assert_fine(measure(lambda: apply_to_base(items, str(sentinel.root))), items)


@settings(FAST, max_examples=80)
@given(argv=plan_argvs(), environ=environments)
def test_plan_arguments_and_environment(argv, environ) -> None:
    assert_fine(measure(lambda: run_cli(argv, environ)), (argv, environ))


@settings(FAST, max_examples=40)
@given(environ=environments)
def test_env_command(environ) -> None:
    assert_fine(measure(lambda: run_cli(["env", "--json"], environ)), environ)


@settings(FAST, max_examples=4)
@given(doc=st.data())
def test_check_command_line(place, doc) -> None:
    """A few examples through the real command line: its own process, streams and exit code."""
    root, sentinel = place
    suffix, data = doc.draw(recipe_documents(sentinel=str(sentinel.root), data_file=str(root / "data.jsonl")))
    f = root / f"cli{suffix}"
    f.write_bytes(data)
    assert_fine(run_cli_subprocess(["check", str(f), "--json"], cwd=root), data[:500])
    assert sentinel.intact()
