"""Layering: no module outside ``runtime/`` imports torch, megatron, modelopt or transformers when imported.

Listing, validating and planning must stay well under a second, so the heavy libraries are imported
only inside ``runtime/`` (and inside the CLI handlers that run things). Every other module of the
package is imported, one after another, in a fresh interpreter; the first one after which a heavy
module is in ``sys.modules`` is named.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import modelopt_typed_recipes

HEAVY = ("torch", "megatron", "modelopt", "transformers")
PACKAGE = Path(modelopt_typed_recipes.__file__).resolve().parent


def _modules_outside_runtime() -> list[str]:
    """Every module of the package found on disk (no import needed), ``runtime/`` and ``__main__`` left out."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "runtime" or rel.name == "__main__.py":
            continue
        parts = ["modelopt_typed_recipes", *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


_PROBE = """
import importlib, json, sys
heavy = {heavy!r}
for name in {modules!r}:
    importlib.import_module(name)
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))
    if loaded:
        print(json.dumps({{"module": name, "heavy": loaded}}))
        break
else:
    print(json.dumps({{"module": None, "heavy": []}}))
"""


def test_every_module_outside_runtime_imports_light() -> None:
    modules = _modules_outside_runtime()
    # the walk finds the layers it is meant to guard
    for layer in ("spec", "catalog", "bridges", "plan", "cli"):
        assert any(m.startswith(f"modelopt_typed_recipes.{layer}.") for m in modules), layer
    assert "modelopt_typed_recipes" in modules
    code = _PROBE.format(heavy=HEAVY, modules=modules)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"module": None, "heavy": []}, f"{result['module']} imports {result['heavy']} at import time"


def test_probe_names_a_heavy_import() -> None:
    """The probe itself can fail: a module that imports torch at import time is named."""
    code = _PROBE.format(heavy=HEAVY, modules=["json", "torch.nn"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"module": "torch.nn", "heavy": ["torch"]}
