"""The code lints clean (ruff, configured in pyproject.toml), so CI fails on a finding as on any other failure.

ruff is pinned in the ``test`` extra: its default rule set grows between releases, so the pinned version is the
one whose findings count. The test skips only where ruff is not installed at all.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("modelopt_typed_recipes", "tests", "benchmarks", "scripts", "examples")

if importlib.util.find_spec("ruff") is None:
    pytest.skip("ruff is not installed (`bash scripts/setup.sh` installs it)", allow_module_level=True)


def _ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # --no-cache: a clean clone gets no .ruff_cache folder
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_installed_ruff_is_the_pinned_one() -> None:
    pin = re.search(r'"ruff==([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pin, "pyproject.toml pins ruff in the test extra"
    installed = importlib.metadata.version("ruff")
    assert installed == pin.group(1), (f"ruff {installed} is installed, the project pins {pin.group(1)} "
                                       f"(its findings differ): pip install ruff=={pin.group(1)}")


def test_ruff_finds_nothing() -> None:
    folders = [f for f in FOLDERS if (ROOT / f).is_dir()]
    proc = _ruff(*folders)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_reports_a_finding_under_this_config(tmp_path: Path) -> None:
    """The check above can fail: the same call on a file with an unused import reports it."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n", encoding="utf-8")
    proc = _ruff("--config", str(ROOT / "pyproject.toml"), str(bad), cwd=tmp_path)
    assert proc.returncode == 1 and "F401" in proc.stdout, proc.stdout + proc.stderr
