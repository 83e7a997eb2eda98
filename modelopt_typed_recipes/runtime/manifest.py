"""``manifest.json``: what made an output, written beside every output folder.

Enough to reproduce and to audit: the resolved recipe and its hash, the architecture each stage saw,
package versions, the git revision of this package (when run from a checkout), the parallel layout,
the calibration data hash, the seeds and whether the run was deterministic, plus the stage's own facts.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..plan.outputs import MANIFEST_NAME, MANIFEST_SCHEMA
from ..spec.recipe import Recipe
from ..spec.serde import to_dict
from .backend import RunPlan
from .result import PostTrainingResult, StageResult

_PACKAGES = (
    "modelopt-typed-recipes", "nvidia-modelopt", "torch", "megatron-core", "transformers", "tokenizers",
    "safetensors", "transformer-engine",
)


@functools.cache
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def git_revision() -> dict[str, Any] | None:
    """Commit and dirtiness of the checkout this package runs from (None when not a git checkout); asked once per
    process (the code a process runs is the code it imported), not once per manifest."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": rev, "dirty": bool(dirty)}


def build_manifest(recipe: Recipe, plan: RunPlan, result: PostTrainingResult,
                   stage: StageResult | None = None, *, run: dict[str, Any] | None = None,
                   files: dict[str, int] | None = None) -> dict[str, Any]:
    """The manifest of a run (``stage=None``) or of one stage's folder. The run's own carries ``run`` (its
    identity) and ``files`` (everything it wrote): what ``plan.outputs`` needs to prove a folder ours."""
    layout = getattr(recipe, "layout", None)
    return {
        "schema": MANIFEST_SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "run": run,
        "files": files,
        "recipe": to_dict(recipe),
        "recipe_hash": recipe.content_hash(),
        "architecture": to_dict(plan.arch),
        "stage_architectures": [a.name for a in plan.stage_archs],
        "backend": plan.backend,
        "device": plan.device,
        "dtype": plan.dtype,
        "layout": to_dict(layout) if layout is not None else None,
        "world_size": plan.world_size,
        "versions": package_versions(),
        "git": dict(g) if (g := git_revision()) else None,
        "command": sys.argv,
        "calibration": {
            "hash": result.calibration_hash,
            "dataset": recipe.calibration.dataset,
            "files": list(recipe.calibration.files),
            "num_samples": recipe.calibration.num_samples,
            "seq_length": recipe.calibration.seq_length,
        },
        "seeds": {"recipe": recipe.seed, "source": getattr(recipe.source, "seed", None)},
        "determinism": dict(result.determinism),
        "cpu_threads": dict(result.cpu_threads),
        "saved": saved_models(result),
        "stage": stage.to_dict() if stage is not None else None,
        "result": result.to_dict() if stage is None else None,
    }


def saved_models(result: PostTrainingResult) -> dict[str, Any]:
    """What the run wrote of its model besides the export, and why: each stage's checkpoint decision
    (``plan/save.py``) and each hand-over between layouts through a temporary checkpoint."""
    return {
        "checkpoints": [{"stage": s.name, **s.details["checkpoint"]} for s in result.stages
                        if "checkpoint" in s.details],
        "handovers": [{"stage": s.name, **s.details["handover"]} for s in result.stages if "handover" in s.details],
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return path
