"""CLI behaviour a newcomer meets first: --version, --help descriptions, named recipes in `run` and `cp`,
`validate` of recipes, `--set` with list indices, unknown families, plain piped output, `--launch` argv."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelopt_typed_recipes import __version__
from modelopt_typed_recipes.cli import build_parser, main
from modelopt_typed_recipes.cli.refs import named_recipe
from modelopt_typed_recipes.cli.run_cmds import child_argv
from modelopt_typed_recipes.errors import SpecError
from modelopt_typed_recipes.spec.recipe import Recipe
from modelopt_typed_recipes.spec.serde import apply_overrides

BOX = set("┏┃━│┡┩└┘╇")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"mtrecipes {__version__}"


def _subcommands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_help_opens_with_a_description(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    paragraphs = out.split("\n\n")
    assert paragraphs[0].startswith("usage:") and paragraphs[1].strip() and not paragraphs[1].startswith(
        ("positional", "options")), out[:400]


def test_unknown_family_is_an_error_with_the_known_ones(capsys) -> None:
    code, out, err = run(capsys, "list", "--family", "qwen3")
    assert code == 2 and out == "" and "family: no family 'qwen3'" in err and "'qwen'" in err
    code, out, _ = run(capsys, "list", "--family", "QWEN", "--json")
    assert code == 0 and {a["family"] for a in json.loads(out)} == {"qwen"}


@pytest.mark.parametrize("argv", [["env"], ["check", "reference-llama:fp8"], ["plan", "qwen3-8b", "--gpus", "8"],
                                  ["list"], ["show", "qwen3-8b"], ["recipes"]])
def test_piped_output_is_plain(argv: list[str], capsys) -> None:
    code, out, _ = run(capsys, *argv)
    assert code == 0 and out.strip() and not BOX & set(out), out[:300]
    assert "\x1b[" not in out


def test_check_piped_lists_errors_one_per_line(tmp_path: Path, capsys) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("model: tiny-dense\nsource: {type: random}\nstages: [{technique: quantize, format: fp8, "
                 "exclude: ['*layers.7.*']}]\noutput_dir: out\nbackend: megatron\n")
    code, out, _ = run(capsys, "check", str(f), "--assume-gpu")
    assert code == 2 and "error stages[0].exclude[0]:" in out and not BOX & set(out)


def test_validate_tells_recipes_from_architectures(tmp_path: Path, capsys) -> None:
    examples = Path(__file__).resolve().parents[1] / "examples"
    code, out, _ = run(capsys, "validate", str(examples / "reference-fp8.yaml"))
    assert code == 0 and out.startswith("ok: recipe reference-fp8 (model reference-llama, quantize-fp8 + export")
    code, out, _ = run(capsys, "validate", str(examples / "reference-fp8.yaml"), "--json")
    assert json.loads(out)["kind"] == "recipe"
    bad = tmp_path / "bad.yaml"
    bad.write_text((examples / "reference-fp8.yaml").read_text().replace("format: fp8", "format: fp9"))
    code, _, err = run(capsys, "validate", str(bad))
    assert code == 2 and err.startswith("error: stages[0].format") and "architecture" not in err


def test_cp_writes_a_named_recipe_to_edit(tmp_path: Path, capsys) -> None:
    target = tmp_path / "mine.yaml"
    code, _, err = run(capsys, "cp", "Qwen/Qwen3-8B:fp8", str(target))
    assert code == 0 and str(target) in err
    text = target.read_text()
    assert text.startswith("# Qwen/Qwen3-8B:fp8") and "source: {type: hf, path:" in text
    assert Recipe.load(target) == named_recipe("Qwen/Qwen3-8B:fp8")
    target.write_text("mine\n")
    code, _, err = run(capsys, "cp", "Qwen/Qwen3-8B:fp8", str(target))
    assert code == 2 and "--force" in err and target.read_text() == "mine\n"  # never overwritten unasked
    assert run(capsys, "cp", "Qwen/Qwen3-8B:fp8", str(target), "--force")[0] == 0
    assert Recipe.load(target).name == "Qwen/Qwen3-8B:fp8"
    code, _, err = run(capsys, "cp", "qwen3-8b:fp9", str(tmp_path / "x.yaml"))
    assert code == 2 and "did you mean" in err and not (tmp_path / "x.yaml").exists()


def test_run_takes_named_recipes_and_refuses_unknown_names(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "run", "qwen3-8b:fp9", "--json")
    assert code == 2 and "neither a recipe file" in err and "did you mean" in err
    code, out, err = run(capsys, "run", "reference-llama:fp8", "--output-dir", str(tmp_path / "o"), "--json",
                         "--no-progress", "--set", "calibration.num_samples=4", "--set", "evaluation.num_samples=2",
                         "--set", "stages[0].format=int8_sq")
    assert code == 0, err
    result = json.loads(out)
    assert result["recipe"] == "reference-llama:fp8" and result["stages"][0]["name"] == "quantize-int8_sq"
    assert result["metrics"]["perplexity_after"] > 0 and (tmp_path / "o" / "manifest.json").is_file()


def test_set_takes_the_paths_errors_print() -> None:
    r = named_recipe("reference-llama:fp8")
    assert apply_overrides(r, {"stages[0].format": "int8_sq"}).stages[0].format == "int8_sq"
    assert apply_overrides(r, {"stages.0.format": "int4_awq"}).stages[0].format == "int4_awq"
    with pytest.raises(SpecError) as info:
        apply_overrides(r, {"stages[5].format": "fp8"})
    assert info.value.path == "stages[5]"
    with pytest.raises(SpecError) as info:
        apply_overrides(r, {"stages[0].formt": "fp8"})
    assert info.value.path == "stages[0].formt" and "format" in info.value.hint


def test_set_fills_a_block_the_recipe_leaves_null() -> None:
    """The Qwen recipes have ``evaluation: null``: ``--set evaluation.num_samples=8`` said "unknown key" for a
    field evaluation has; the keys of a null block are now checked by the block's type."""
    r = named_recipe("Qwen/Qwen3-0.6B:fp8")
    assert r.evaluation is None and r.layout is None
    e = apply_overrides(r, ["evaluation.dataset=reference-heldout", "evaluation.num_samples=8"]).evaluation
    assert e is not None and (e.dataset, e.num_samples) == ("reference-heldout", 8)
    assert apply_overrides(r, {"layout.tensor_parallel": 2}).layout.tensor_parallel == 2  # type: ignore[union-attr]
    with pytest.raises(SpecError) as info:  # what the block still lacks, by its path
        apply_overrides(r, ["evaluation.num_samples=8"])
    assert info.value.path == "evaluation.dataset"
    with pytest.raises(SpecError) as info:  # a key the block's type does not have
        apply_overrides(r, ["evaluation.dataset=reference-heldout", "evaluation.nmu_samples=8"])
    assert info.value.path == "evaluation.nmu_samples" and "num_samples" in info.value.hint


# --------------------------------------------------------------------------- --launch
def _run_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def test_launch_passes_every_flag_through() -> None:
    parser = build_parser()
    line = ["run", "a.yaml", "b.yaml", "--launch", "--json", "--set", "calibration.num_samples=512", "--set",
            "stages[0].format=fp8", "--output-dir", "/fast/disk", "--no-progress", "--verbose"]
    args = parser.parse_args(line)
    child = child_argv(args)
    assert "--launch" not in child
    again = parser.parse_args(child)
    assert {**vars(again), "launch": True} == vars(args)
    # every option of `run` (today's and any added later) survives the trip
    for action in _run_parser()._actions:
        if not action.option_strings or action.dest in ("help", "launch"):
            continue
        flag = action.option_strings[-1]
        extra = [] if action.nargs == 0 else ["x=1" if action.dest == "overrides" else "v"]
        args = parser.parse_args(["run", "r.yaml", "--launch", flag, *extra])
        assert {**vars(parser.parse_args(child_argv(args))), "launch": True} == vars(args), flag
    args = parser.parse_args(["run", "r.yaml", "--lau", "--js"])  # abbreviations as argparse accepts them
    assert child_argv(args) == ["run", "r.yaml", "--json"]


@pytest.mark.slow
def test_launch_under_torchrun_prints_one_json_document(tmp_path: Path) -> None:
    """A 2-process recipe with --launch --json on the CPU: the parent re-executes itself under torchrun with
    --json; each rank stops at the same typed error (the Megatron-Core backend needs CUDA), and stdout is one
    JSON document, from rank 0."""
    f = tmp_path / "tp2.yaml"
    f.write_text("model: tiny-dense\nsource: {type: random}\nstages: [{technique: quantize, format: fp8}]\n"
                 f"output_dir: {tmp_path / 'out'}\nbackend: megatron\nlayout: {{tensor_parallel: 2}}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    p = subprocess.run([sys.executable, "-m", "modelopt_typed_recipes", "run", str(f), "--launch", "--json",
                        "--no-progress", "--output-dir", str(tmp_path / "o")], check=False, capture_output=True, text=True,
                       timeout=300, env=env, cwd=tmp_path)
    doc = json.loads(p.stdout)  # exactly one document: rank 1 printed nothing
    assert doc["ok"] is False and doc["errors"][0]["path"] == "backend", p.stdout
    assert "CUDA" in doc["errors"][0]["message"]
    assert "error: backend:" in p.stderr  # rank 1 says it too, unless torchrun stopped it first
    assert p.returncode != 0 and not (tmp_path / "o").exists()


def test_the_command_line_process_exits_without_walking_its_objects(tmp_path) -> None:
    """``python -m`` and ``mtrecipes`` freeze the garbage collector once the command's output is out (the exit of
    a process holding torch, Megatron-Core and ModelOpt otherwise costs seconds); exit codes and exit handlers
    are kept. ``main`` itself, which tests and notebooks call, does not freeze."""
    def probe(call: str) -> subprocess.CompletedProcess[str]:
        # counted from the interpreter's own start: a site hook (a .pth file of an installed package) may have
        # frozen some objects before our code runs (375 in CI's fresh environment)
        code = ("import atexit, gc, sys\n"
                "base = gc.get_freeze_count()\n"
                "atexit.register(lambda: sys.stderr.write('frozen=%d' % (gc.get_freeze_count() - base)))\n"
                "from modelopt_typed_recipes.cli import command_line, main\n" + call)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)

    for argv, code in ((["list"], 0), (["validate", str(tmp_path / "missing.yaml")], 2)):
        p = probe(f"command_line({argv!r})")
        assert p.returncode == code and int(p.stderr.rsplit("frozen=", 1)[1]) > 10_000, p.stderr[-500:]
    p = probe("main(['list'])")
    assert p.returncode == 0 and p.stderr.endswith("frozen=0")
    p = subprocess.run([sys.executable, "-m", "modelopt_typed_recipes", "list"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and "qwen3-8b" in p.stdout


def test_launch_starts_torchrun_only_for_the_megatron_backend(monkeypatch) -> None:
    """``backend: auto`` is decided as the run decides it: on a machine without CUDA the recipe runs on the Hugging
    Face backend in this one process (which ``check`` refuses under torchrun), with CUDA and megatron-core torchrun
    starts the layout's processes."""
    from modelopt_typed_recipes.cli.run_cmds import _launch_command
    from modelopt_typed_recipes.plan import environment
    from modelopt_typed_recipes.runtime.api import load_recipe

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    recipe = load_recipe({"model": "reference-llama", "source": {"type": "builtin"}, "output_dir": "/tmp/o",
                          "stages": [{"technique": "quantize", "format": "fp8"}], "layout": {"tensor_parallel": 2}})
    args = build_parser().parse_args(["run", "r.yaml", "--launch"])
    for cuda, launched in ((False, False), (True, True)):
        env = environment.Environment(megatron_core="0.19.2", cuda=cuda, gpu_count=2 * cuda)
        monkeypatch.setattr(environment.Environment, "detect", classmethod(lambda cls, env=env: env))
        argv = _launch_command(recipe, args)
        assert (argv is not None) == launched, cuda
        if launched:
            assert "--nproc_per_node=2" in argv and "--launch" not in argv
