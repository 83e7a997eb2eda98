"""Every command the README shows runs on the README's set-up (this venv), as written.

The README's bash blocks are parsed here, so a command added there is run here too (or must be named in
``NOT_RUN`` with the reason). ``.venv/bin/python`` and ``$M`` are this interpreter.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PYTHON = ".venv/bin/python"

NOT_RUN = {  # command (its start) -> why this test does not run it
    "bash scripts/setup.sh": "made the venv these tests run in (CI runs it first)",
    "bash .ci/run": "the command that runs these tests",
    "python -m modelopt_typed_recipes run RECIPE.yaml": "the general form (placeholders); its concrete forms run "
    "below, in test_e2e and in test_cli_commands",
}


def runnable(command: str) -> bool:
    return not any(command.startswith(start) for start in NOT_RUN)


def readme_commands() -> list[str]:
    """Each command of each ```bash block: comments dropped, ``&&`` chains split, ``M=...`` expanded."""
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL):
        variables: dict[str, str] = {}
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if len(words) == 1 and re.fullmatch(r"[A-Z]+=.*", words[0]):
                name, _, value = words[0].partition("=")
                variables[name] = value
                continue
            text = shlex.join(words).replace("'&&'", "&&")
            for name, value in variables.items():
                text = text.replace(f"'${name}'", value).replace(f"${name}", value)
            out += [part.strip() for part in text.split("&&")]
    return out


COMMANDS = readme_commands()


def test_the_readme_has_its_commands() -> None:
    assert "bash scripts/setup.sh" in COMMANDS and "bash .ci/run" in COMMANDS
    assert any(" check Qwen/Qwen3-8B:nvfp4 " in f" {c} " for c in COMMANDS)
    assert len([c for c in COMMANDS if runnable(c)]) == len(COMMANDS) - len(NOT_RUN) >= 9


def _megatron_export_supported() -> bool:
    from packaging.version import Version

    return Version(version("megatron-core").split("+")[0]) >= Version("0.18")


@pytest.mark.parametrize("command", [c for c in COMMANDS if runnable(c)])
def test_readme_command_runs(command: str, tmp_path: Path) -> None:
    argv = shlex.split(command)
    assert argv[0] == PYTHON, f"a README command this test does not know how to run: {command}"
    argv[0] = sys.executable
    cwd = ROOT
    if argv[3] == "run":  # writes outputs/ where it starts: start it in a scratch folder beside examples/
        cwd = tmp_path
        (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    p = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=cwd, timeout=3600, env=env)
    if " check " in f" {command} " and "--backend megatron" in command and not _megatron_export_supported():
        # the Python 3.11 fallback set-up gets megatron-core 0.16.1: the version gate says so, typed
        assert p.returncode == 2 and "needs megatron-core >= 0.18" in p.stdout + p.stderr, p.stdout + p.stderr
        return
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    assert p.stdout.strip()
    assert "Traceback" not in p.stderr
    if argv[3] == "run":
        assert "reference-fp8" in p.stdout and "reference-int4-awq" in p.stdout
        for name in ("reference-fp8", "reference-int4-awq"):
            assert (tmp_path / "outputs" / name / "manifest.json").is_file()
