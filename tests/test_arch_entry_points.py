"""Downstream packages add architectures through the ``modelopt_typed_recipes.architectures`` entry-point
group. These tests install a real (tiny) distribution on ``sys.path`` — a ``*.dist-info`` folder with
``entry_points.txt`` next to its module — and look the plugin's model up in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN = textwrap.dedent(
    """
    import attrs
    from modelopt_typed_recipes.catalog import get_arch

    def models():
        base = get_arch("tiny-dense")
        return [attrs.evolve(base, name="acme-tiny", hf_id="acme/Tiny-1", aliases=("acme",), family="acme")]
    """
)


def _install(site: Path, body: str, ep_value: str = "acme_models:models") -> None:
    (site / "acme_models.py").write_text(body)
    info = site / "acme_models-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-models\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[modelopt_typed_recipes.architectures]\nacme = {ep_value}\n")


def _run(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_plugin_architecture_is_found_by_name_hf_id_and_alias(tmp_path: Path) -> None:
    _install(tmp_path, PLUGIN)
    out = _run(
        tmp_path,
        "import json; from modelopt_typed_recipes.catalog import get_arch, list_archs\n"
        "a = get_arch('ACME/tiny-1'); b = get_arch('acme')\n"
        "print(json.dumps([a.name, b.name, len(list_archs(family='acme'))]))",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["acme-tiny", "acme-tiny", 1]


def test_plugin_that_reuses_a_builtin_name_is_rejected(tmp_path: Path) -> None:
    _install(tmp_path, PLUGIN.replace('name="acme-tiny"', 'name="qwen3-8b"'))
    out = _run(
        tmp_path,
        "from modelopt_typed_recipes.catalog import get_arch\n"
        "from modelopt_typed_recipes.errors import SpecError\n"
        "try:\n    get_arch('qwen3-8b')\nexcept SpecError as e:\n    print('SpecError', e)\n",
    )
    assert out.returncode == 0, out.stderr
    assert "SpecError" in out.stdout and "already registered" in out.stdout


def test_broken_plugin_names_itself_in_a_typed_error(tmp_path: Path) -> None:
    _install(tmp_path, "def models():\n    raise RuntimeError('boom')\n")
    out = _run(
        tmp_path,
        "from modelopt_typed_recipes.catalog import get_arch\n"
        "from modelopt_typed_recipes.errors import SpecError\n"
        "try:\n    get_arch('qwen3-8b')\nexcept SpecError as e:\n    print('SpecError', e.path, e)\n",
    )
    assert out.returncode == 0, out.stderr
    assert "SpecError entry_points.acme" in out.stdout and "boom" in out.stdout
