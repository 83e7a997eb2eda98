"""The stage journal: which stages of a run are finished, so a stopped run continues where it stopped.

A run keeps ``journal.json`` in its staging folder (named by the recipe hash, so the same command finds it
again). After each stage the backend records the stage's result and where the model after that stage was
saved: the Hugging Face backend saves it for every stage but the last; the Megatron-Core backend records the
checkpoint the recipe's ``save`` policy wrote, and none when the stage handed the model over in memory. After a crash or ``kill -9`` the same command reads the journal and
continues with the first unfinished stage from the model the stage before it left on disk; when that model
was not saved, :meth:`Journal.resume_point` says why the run starts again from the beginning.

Writes are atomic (a temporary file, ``fsync``, ``os.replace``): a kill leaves the old journal or the new
one, never half of one. Pure Python: the backends store the results, this module only keeps the record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs

JOURNAL_NAME = "journal.json"
JOURNAL_SCHEMA = "modelopt-typed-recipes/journal/1"


@attrs.frozen(kw_only=True)
class ResumePoint:
    """Where a run starts: ``start`` is the first stage to run; ``state`` the model saved after the stage
    before it (None when starting from the source); ``note`` what a user should be told (empty: nothing)."""

    start: int = 0
    state: Path | None = None
    note: str = ""


@attrs.define(kw_only=True)
class Journal:
    """The record of one recipe's run in one staging folder."""

    staging: Path
    recipe_hash: str
    backend: str
    stages: list[dict[str, Any]] = attrs.field(factory=list)
    """Finished stages in order: ``{"result": StageResult.to_dict(), "state": path or None}``."""
    extra: dict[str, Any] = attrs.field(factory=dict)
    """What the backend needs again on resume (metrics measured before the stages, timings)."""
    found: str = ""
    """What was found in the staging folder when opened (for the note when it cannot be used)."""

    @classmethod
    def open(cls, staging: Path, *, recipe_hash: str, backend: str) -> Journal:
        """The journal in ``staging`` when it belongs to this recipe and backend, else a fresh one."""
        path = staging / JOURNAL_NAME
        fresh = cls(staging=staging, recipe_hash=recipe_hash, backend=backend)
        if not path.is_file():
            return fresh
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return attrs.evolve(fresh, found="its journal could not be read")
        if not isinstance(doc, dict) or doc.get("schema") != JOURNAL_SCHEMA:
            return attrs.evolve(fresh, found="its journal has another format")
        if doc.get("recipe_hash") != recipe_hash:
            return attrs.evolve(fresh, found="its journal belongs to another recipe")
        if doc.get("backend") != backend:
            return attrs.evolve(fresh, found=f"the stopped run used the {doc.get('backend')} backend")
        stages = doc.get("stages")
        if not isinstance(stages, list) or not all(isinstance(s, dict) and "result" in s for s in stages):
            return attrs.evolve(fresh, found="its journal has another format")
        return cls(staging=staging, recipe_hash=recipe_hash, backend=backend, stages=stages,
                   extra=dict(doc.get("extra") or {}))

    def resume_point(self, n_stages: int, *, final_model_needed: bool = False, unsaved: str = "") -> ResumePoint:
        """Where to start: after the last finished stage whose model is on disk (see the module text).
        ``final_model_needed``: the work after the last stage (an evaluation) needs the model it left;
        ``unsaved``: why a backend may not have saved it (added to the note, with what to change)."""
        done = min(len(self.stages), n_stages)
        if done == 0:
            note = f"a stopped run was found in {self.staging} but {self.found}; starting from the beginning" \
                if self.found else ""
            return ResumePoint(note=note)
        state = self.stages[done - 1].get("state")
        label = self.stages[done - 1]["result"].get("name", f"stage {done - 1}")
        if state is None and (done < n_stages or final_model_needed):
            return ResumePoint(note=f"a stopped run finished stages[{done - 1}] ({label}) but did not save the "
                                    f"model after it{f' ({unsaved})' if unsaved else ''}; starting from the beginning")
        path = self.staging / state if state is not None else None
        if path is not None and not path.exists():
            return ResumePoint(note=f"the model saved after stages[{done - 1}] ({label}) is missing ({path}); "
                                    "starting from the beginning")
        what = "all stages were finished" if done == n_stages else f"continuing with stages[{done}]"
        return ResumePoint(start=done, state=path,
                           note=f"resuming a stopped run of this recipe: {done} stage(s) done, {what}")

    def begin(self, n_stages: int, *, final_model_needed: bool = False, unsaved: str = "") -> ResumePoint:
        """The resume point; when it is the beginning, whatever a stopped run left in the staging folder is
        cleared first (stage folders half written)."""
        point = self.resume_point(n_stages, final_model_needed=final_model_needed, unsaved=unsaved)
        if point.start == 0:
            import shutil

            if self.staging.is_dir():
                for p in self.staging.iterdir():
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
            self.stages.clear()
            self.extra.clear()
            self.save()
        return point

    def finish_stage(self, index: int, result: dict[str, Any], state: Path | None = None) -> None:
        """Record stage ``index`` as finished (its result, and where the model after it was saved)."""
        del self.stages[index:]
        self.stages.append({"result": result,
                            "state": state.relative_to(self.staging).as_posix() if state is not None else None})
        self.save()

    def save(self) -> None:
        doc = {"schema": JOURNAL_SCHEMA, "recipe_hash": self.recipe_hash, "backend": self.backend,
               "stages": self.stages, "extra": self.extra}
        self.staging.mkdir(parents=True, exist_ok=True)
        path = self.staging / JOURNAL_NAME
        tmp = path.with_name(f".{JOURNAL_NAME}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=1, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
