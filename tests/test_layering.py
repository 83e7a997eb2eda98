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


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    import ast

    package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *([node.module] if node.module else [])])
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def test_layers_depend_one_way() -> None:
    """spec/ is plain data (no catalog, plan or runtime; no file reads but the serde's loader); the runtime
    reaches architectures and shipped weights through the plan, never the catalog."""
    forbidden = {
        "spec": ("modelopt_typed_recipes.catalog", "modelopt_typed_recipes.plan", "modelopt_typed_recipes.runtime",
                 "json"),
        "runtime": ("modelopt_typed_recipes.catalog",),
    }
    found = []
    for layer, banned in forbidden.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            if path.name in ("serde.py", "bounded.py"):  # the one converter and its bounded YAML/JSON reader
                continue
            hits = sorted(m for m in _imports(path) if any(m == b or m.startswith(b + ".") for b in banned))
            if hits:
                found.append(f"{path.relative_to(PACKAGE)}: {hits[0]}")
    assert not found, found
