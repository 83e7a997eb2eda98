"""The output folder's promises (plan/outputs.py, plan/journal.py), without a model: ownership by manifest,
the lock, the swap that deletes only listed files, leftovers of dead runs, machine faults, the journal."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelopt_typed_recipes.errors import OutputError, OutputLockedError, SpecError
from modelopt_typed_recipes.plan import outputs
from modelopt_typed_recipes.plan.journal import Journal


def _ours(folder: Path, files: dict[str, str], recipe_hash: str = "abc123") -> Path:
    """A folder as a finished run of ours leaves it: the files, and a manifest listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    manifest = {"schema": outputs.MANIFEST_SCHEMA, "run": outputs.run_identity(recipe_hash),
                "files": outputs.inventory(folder), "result": {"recipe": "r"}}
    (folder / outputs.MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


def test_a_web_apps_manifest_does_not_make_a_folder_ours(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text('{"name": "my app", "start_url": "/"}')
    (app / "src" / "index.js").write_text("console.log(1)")
    with pytest.raises(OutputError, match="not written by modelopt-typed-recipes") as exc:
        outputs.check_output(app)
    assert exc.value.path == "output_dir"
    assert (app / "src" / "index.js").read_text() == "console.log(1)"


def test_an_earlier_manifest_version_without_a_file_list_is_not_ours(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"schema": "modelopt-typed-recipes/manifest/1",
                                                   "recipe_hash": "x"}))
    assert outputs.read_manifest(old) is None
    with pytest.raises(OutputError):
        outputs.check_output(old)


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[1, 2]", b"{" * 5000, b'{"schema": 3}'])
def test_unreadable_manifests_are_not_ours(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "manifest.json").write_bytes(content)
    assert outputs.read_manifest(tmp_path) is None


def test_absent_empty_and_our_folders_may_be_written(tmp_path: Path) -> None:
    assert outputs.check_output(tmp_path / "new") is None
    (tmp_path / "empty").mkdir()
    assert outputs.check_output(tmp_path / "empty") is None
    ours = _ours(tmp_path / "ours", {"export/model.safetensors": "w", "export/config.json": "{}"})
    assert outputs.check_output(ours)["run"]["recipe_hash"] == "abc123"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        outputs.check_output(tmp_path / "file")


def test_a_file_we_did_not_write_in_our_folder_is_refused_by_name(tmp_path: Path) -> None:
    ours = _ours(tmp_path / "ours", {"export/model.safetensors": "w"})
    (ours / "export" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        outputs.check_output(ours)


def test_publish_replaces_our_folder_and_deletes_only_listed_files(tmp_path: Path) -> None:
    out = _ours(tmp_path / "out", {"export/model.safetensors": "old", "01-q/m.pth": "old"})
    staging = _ours(outputs.staging_dir(out, "new"), {"export/model.safetensors": "new"}, "new")
    assert outputs.publish(staging, out) == []
    assert (out / "export" / "model.safetensors").read_text() == "new"
    assert not (out / "01-q").exists()
    assert not staging.exists()
    assert not list(tmp_path.glob(".out.old-*"))


def test_publish_refuses_when_a_file_appeared_and_keeps_both(tmp_path: Path) -> None:
    out = _ours(tmp_path / "out", {"export/model.safetensors": "old"})
    staging = _ours(outputs.staging_dir(out, "new"), {"export/model.safetensors": "new"}, "new")
    (out / "export" / "written-during-the-run.txt").write_text("user")
    with pytest.raises(OutputError, match="written-during-the-run.txt") as exc:
        outputs.publish(staging, out)
    assert "run the same command again" in exc.value.hint
    assert (out / "export" / "written-during-the-run.txt").read_text() == "user"
    assert (out / "export" / "model.safetensors").read_text() == "old"
    assert (staging / "export" / "model.safetensors").read_text() == "new"
    (out / "export" / "written-during-the-run.txt").unlink()
    outputs.publish(staging, out)
    assert (out / "export" / "model.safetensors").read_text() == "new"


def test_publish_into_a_folder_that_filled_up_during_the_run_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    staging = _ours(outputs.staging_dir(out, "new"), {"a": "new"}, "new")
    out.mkdir()
    (out / "index.html").write_text("<html>")
    with pytest.raises(OutputError, match="not written by"):
        outputs.publish(staging, out)
    assert (out / "index.html").read_text() == "<html>"
    assert (staging / "a").is_file()


def test_lock_refuses_a_second_run_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with (outputs.OutputLock(out, outputs.run_identity("h1")),
          pytest.raises(OutputLockedError, match=rf"pid {os.getpid()} on .*recipe hash h1"),
          outputs.OutputLock(out, outputs.run_identity("h2"))):
        pass
    with outputs.OutputLock(out, outputs.run_identity("h2")):  # released: free again
        pass
    assert not outputs.lock_path(out).exists()


def test_the_lock_of_a_killed_process_is_reclaimed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = ("import sys, time; from pathlib import Path; from modelopt_typed_recipes.plan import outputs; "
            "l = outputs.OutputLock(Path(sys.argv[1]), outputs.run_identity('dead')).__enter__(); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=f"pid {proc.pid}"):
            outputs.OutputLock(out, outputs.run_identity("me")).__enter__()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert outputs.lock_path(out).exists()  # left behind by the kill ...
    with outputs.OutputLock(out, outputs.run_identity("me")):  # ... and taken over
        assert json.loads(outputs.lock_path(out).read_text())["recipe_hash"] == "me"


def test_leftovers_of_dead_runs_are_cleaned_but_not_files_of_others(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    keep = outputs.staging_dir(out, "current")
    keep.mkdir(parents=True)
    dead = outputs.staging_dir(out, "other")
    (dead / "export").mkdir(parents=True)
    (dead / "export" / "w").write_text("x")
    old = _ours(tmp_path / ".out.old-1234abcd", {"export/w": "x"})
    (old / "export" / "users-file.txt").write_text("keep me")
    monkeypatch.setattr(outputs.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    (tmp_path / "tmp" / f"mtr-reload-{dead_pid}-x1").mkdir(parents=True)
    (tmp_path / "tmp" / f"mtr-reload-{os.getpid()}-x2").mkdir()
    removed = outputs.clean_leftovers(out, keep=keep)
    assert keep.is_dir() and not dead.exists()
    assert (old / "export" / "users-file.txt").read_text() == "keep me"
    assert not (old / "export" / "w").exists() and not (old / "manifest.json").exists()
    assert not (tmp_path / "tmp" / f"mtr-reload-{dead_pid}-x1").exists()
    assert (tmp_path / "tmp" / f"mtr-reload-{os.getpid()}-x2").exists()
    assert str(dead) in removed


@pytest.mark.parametrize(("exc", "words"), [
    (OSError(errno.ENOSPC, "No space left on device", "/x/out/a"), "free space"),
    (OSError(errno.EFBIG, "File too large"), "ulimit -f"),
    (OSError(errno.EROFS, "Read-only file system"), "writable file system"),
    (RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                  'device" })'), "free space"),
    (RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                  "data/0: file write failed: File too large"), "ulimit -f"),
])
def test_machine_faults_become_output_errors_that_say_what_to_fix(exc: BaseException, words: str) -> None:
    err = outputs.machine_fault(exc, Path("/x"))
    assert isinstance(err, OutputError) and words in err.hint and err.path == "output_dir"


def test_other_errors_are_not_machine_faults() -> None:
    assert outputs.machine_fault(ValueError("bad value"), Path("/x")) is None
    assert outputs.machine_fault(OutputError("no space left on device"), Path("/x")) is None
    # permissions on a file outside the output folder (a source checkpoint) are not an output fault
    assert outputs.machine_fault(PermissionError(errno.EACCES, "Permission denied", "/src/config.json"),
                                 Path("/x")) is None


def test_unknown_user_in_a_path_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="no home directory") as exc:
        outputs.user_path("~nosuchuser-mtr/out", path="output_dir")
    assert exc.value.path == "output_dir"
    assert outputs.user_path("~/x", path="p") == Path.home() / "x"


def test_journal_resume_points(tmp_path: Path) -> None:
    staging = tmp_path / "s"
    j = Journal.open(staging, recipe_hash="h", backend="hf")
    assert j.begin(2).start == 0
    state = staging / ".resume" / "after-01.pth"
    state.parent.mkdir()
    state.write_text("model")
    j.finish_stage(0, {"name": "quantize-fp8"}, state)
    again = Journal.open(staging, recipe_hash="h", backend="hf").resume_point(2)
    assert (again.start, again.state) == (1, state) and "continuing with stages[1]" in again.note
    other = Journal.open(staging, recipe_hash="other", backend="hf").begin(2)
    assert other.start == 0 and "another recipe" in other.note
    assert list(staging.iterdir()) == [staging / "journal.json"]  # a fresh start clears what was left


def test_journal_says_why_it_restarts(tmp_path: Path) -> None:
    j = Journal.open(tmp_path, recipe_hash="h", backend="megatron")
    j.finish_stage(0, {"name": "prune"}, None)
    point = Journal.open(tmp_path, recipe_hash="h", backend="megatron").resume_point(3)
    assert point.start == 0 and "did not save the model" in point.note
    j.finish_stage(0, {"name": "prune"}, tmp_path / "gone")
    point = Journal.open(tmp_path, recipe_hash="h", backend="megatron").resume_point(3)
    assert point.start == 0 and "missing" in point.note
    j.finish_stage(0, {"name": "prune"}, None)  # every stage done, but the model after the last one is needed
    assert Journal.open(tmp_path, recipe_hash="h", backend="megatron").resume_point(1).start == 1
    point = Journal.open(tmp_path, recipe_hash="h", backend="megatron").resume_point(1, final_model_needed=True)
    assert point.start == 0 and "did not save the model" in point.note
    (tmp_path / "journal.json").write_bytes(b"\xff\x00")
    assert "could not be read" in Journal.open(tmp_path, recipe_hash="h", backend="hf").begin(3).note


def test_journal_writes_are_atomic(tmp_path: Path) -> None:
    j = Journal.open(tmp_path, recipe_hash="h", backend="hf")
    for i in range(3):
        j.finish_stage(i, {"name": f"s{i}", "t": time.time()})
    assert [p.name for p in tmp_path.iterdir()] == ["journal.json"]
    assert len(json.loads((tmp_path / "journal.json").read_text())["stages"]) == 3
