"""Faults of the machine while a run writes (read-only folder, file-size limit, full disk) and paths with an
unknown ``~user``: each is a typed error that says what to fix, and nothing partial is left behind.

The full disk and the read-only folder are real where this machine lets a test mount a small tmpfs in a
private mount namespace (``unshare -m``, as root); the ENOSPC a library reports in its own words is also
injected in-process, so every CI machine checks it.
"""

from __future__ import annotations

import errno
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelopt_typed_recipes.errors import OutputError, SpecError
from modelopt_typed_recipes.runtime import api

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--set", "calibration.num_samples=4", "--set", "calibration.seq_length=32", "--set",
         "evaluation.num_samples=4", "--set", "evaluation.seq_length=32"]
RUN = [sys.executable, "-m", "modelopt_typed_recipes", "run", "examples/reference-fp8.yaml", "--no-progress", *SMALL]


def _tiny(tmp: Path, **changes: object) -> dict:
    return {"model": "tiny-dense", "source": {"type": "random", "seed": 0},
            "stages": [{"technique": "quantize", "format": "fp8"}, {"technique": "export"}],
            "calibration": {"dataset": "reference-train", "num_samples": 4, "seq_length": 32, "batch_size": 4},
            "output_dir": str(tmp / "runs" / "out"), "backend": "hf", "device": "cpu", **changes}


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.parametrize("message", [
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })',
    "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: file write failed",
])
def test_a_full_disk_mid_run_is_an_output_error_and_leaves_nothing(tmp_path: Path, monkeypatch, message: str) -> None:
    from safetensors import SafetensorError

    from modelopt_typed_recipes.plan import outputs
    from modelopt_typed_recipes.runtime.hf import export

    def full(*_a: object, **_k: object) -> None:
        raise SafetensorError(message)

    monkeypatch.setattr(export, "export", full)
    monkeypatch.setattr(outputs, "_diagnose", lambda where: errno.ENOSPC)  # the disk this test sees is not full
    with pytest.raises(OutputError, match="no space left") as exc:
        api.run_post_training(_tiny(tmp_path), progress=False)
    assert "free space" in exc.value.hint and exc.value.path == "output_dir"
    assert not (tmp_path / "runs").exists()  # no staging folder, no lock file, no folder we created


def test_an_oserror_while_writing_names_the_file(tmp_path: Path, monkeypatch) -> None:
    from modelopt_typed_recipes.runtime.hf import export

    def full(_model: object, _tok: object, directory: Path, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "model.safetensors"))

    monkeypatch.setattr(export, "export", full)
    with pytest.raises(OutputError, match=r"model.safetensors' failed: no space left on the device"):
        api.run_post_training(_tiny(tmp_path), progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_file_size_limit_is_an_output_error(tmp_path: Path) -> None:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    out = tmp_path / "out"
    proc = subprocess.run([*RUN, "--output-dir", str(out)], preexec_fn=limit, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "file-size limit of this process (4.0 MiB)" in proc.stderr and "ulimit -f" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs in a private namespace here")
@pytest.mark.parametrize(("options", "words"), [
    ("size=8m", "no space left on the device"),
    ("ro,size=1m", "the file system is read-only"),
])
def test_a_full_or_read_only_disk_is_an_output_error(options: str, words: str) -> None:
    script = ('d=$(mktemp -d) && mount -t tmpfs -o "$1" tmpfs "$d" && shift && "$@" --output-dir "$d/runs/out"; '
              'rc=$?; echo "left: [$(ls -A "$d")]"; exit $rc')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", options, *RUN], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert "left: []" in proc.stdout  # nothing partial: no staging folder, no lock, no folder we created


@pytest.mark.parametrize("field", ["output_dir", "source.path", "calibration.files"])
def test_an_unknown_user_in_a_path_is_a_spec_error(tmp_path: Path, field: str) -> None:
    changes: dict[str, object] = {
        "output_dir": {"output_dir": "~no-such-user-mtr/out"},
        "source.path": {"source": {"type": "hf", "path": "~no-such-user-mtr/model"}},
        "calibration.files": {"calibration": {"files": ["~no-such-user-mtr/a.txt"]}},
    }[field]
    with pytest.raises(SpecError, match="no home directory for no-such-user-mtr") as exc:
        api.run_post_training(_tiny(tmp_path, **changes), progress=False)
    assert exc.value.path.startswith(field)
