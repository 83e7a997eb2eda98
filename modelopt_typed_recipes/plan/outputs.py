"""The output folder: whose it is, who is writing it, and how a finished run takes its place.

A run writes into a staging folder beside ``output_dir`` and renames it into place when complete. The
promises, each kept here and nowhere else:

- **Ownership you can prove.** A folder is ours only if its ``manifest.json`` carries our schema name, the
  run's identity (run id, recipe hash) and the list of files that run wrote. A ``manifest.json`` of anything
  else (a web app's) does not count; any other non-empty folder is refused with :class:`OutputError`.
- **One run per folder.** A lock file beside the folder (``.NAME.lock``, holding pid, host, start time and
  recipe) is held with ``flock`` for the whole run; a second run is refused with
  :class:`OutputLockedError` naming the holder. The kernel drops the lock when its process dies, so a
  killed run's lock is simply taken by the next run.
- **The swap deletes only files we wrote.** The old folder's files are checked against its manifest's
  list before the swap; a file someone added (before or during the run) stops the swap with
  :class:`OutputError` naming it, and the finished run stays complete in its staging folder: the same
  command, once the file is moved away, only swaps. The old folder is then emptied file by file from its
  list, never with a recursive delete.
- **Leftovers are cleared.** Staging (``.NAME.partial-*``) and swap (``.NAME.old-*``) folders of dead runs
  are removed by the next run that holds the lock (the old folders again only file by file), and so are
  re-load scratch folders (``mtr-reload-PID-*`` in the temporary directory) of dead processes.
- **Machine faults are typed.** A read-only folder, a full disk or a file-size limit becomes an
  :class:`OutputError` that says what to free or fix (:func:`machine_fault`).

Pure Python (no torch): ``check`` can ask the same questions as ``run``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

from ..errors import OutputError, OutputLockedError, RecipeError, SpecError

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = "modelopt-typed-recipes/manifest/2"
"""Version 2 added ``run`` (the run's identity) and ``files`` (what the run wrote); version 1 folders had
no file list, so they are not taken as ours (nothing could prove which of their files a run wrote)."""
RELOAD_PREFIX = "mtr-reload-"
_MANIFEST_MAX_BYTES = 64 << 20


# --------------------------------------------------------------------------- paths a user gives
def user_path(raw: str, *, path: str) -> Path:
    """``raw`` with ``~``/``~user`` expanded; an unknown user is a :class:`SpecError` at ``path``."""
    try:
        out = Path(raw).expanduser()
    except RuntimeError as exc:  # Path.expanduser: "Could not determine home directory."
        user = raw[1:].split("/", 1)[0] or "the current user"
        raise SpecError(f"{raw[:200]!r}: no home directory for {user[:80]} on this machine", path=path,
                        hint="write the path without ~, or with ~ for your own home") from exc
    # what the file system refuses with OSError (ENAMETOOLONG) or ValueError (NUL) on the first stat
    if "\0" in raw or len(str(out).encode("utf-8", "surrogateescape")) > _MAX_PATH or any(
            len(part.encode("utf-8", "surrogateescape")) > _MAX_NAME for part in out.parts):
        raise SpecError(f"{raw[:200]!r} is not a path this file system can hold (NUL bytes, a name over "
                        f"{_MAX_NAME} bytes or a path over {_MAX_PATH})", path=path)
    return out


_MAX_NAME = 255
_MAX_PATH = 4096


def run_identity(recipe_hash: str) -> dict[str, Any]:
    """Who is writing: recorded in the lock file and in the manifest."""
    rid = os.environ.get("TORCHELASTIC_RUN_ID") or uuid.uuid4().hex[:12]
    return {
        "id": rid, "recipe_hash": recipe_hash, "host": socket.gethostname(), "pid": os.getpid(),
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- ownership
def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest if it is one of ours (schema, run identity, file list), else None."""
    f = folder / MANIFEST_NAME
    try:
        if not f.is_file() or f.stat().st_size > _MANIFEST_MAX_BYTES:
            return None
        doc = json.loads(f.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != MANIFEST_SCHEMA:
        return None
    run, files = doc.get("run"), doc.get("files")
    if not isinstance(run, dict) or not isinstance(run.get("id"), str) or not isinstance(run.get("recipe_hash"), str):
        return None
    if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
        return None
    return doc


def inventory(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (relative POSIX path -> size), the top manifest left out."""
    out: dict[str, int] = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if rel != MANIFEST_NAME:
                out[rel] = p.lstat().st_size
    return dict(sorted(out.items()))


def foreign_files(folder: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Files in ``folder`` that its manifest does not list: someone else's, never to be deleted."""
    listed = set(manifest.get("files", {}))
    return [rel for rel in inventory(folder) if rel not in listed]


def check_output(output: Path) -> dict[str, Any] | None:
    """Raise :class:`OutputError` unless a run may write ``output``; return its manifest when it is ours.

    Writable means: absent, an empty folder, or a folder whose manifest proves it ours and that holds no
    file the manifest does not list.
    """
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise OutputError(f"output_dir {str(output)!r} is a file or a link, not a folder", path="output_dir",
                          hint="choose a new folder name")
    if not output.is_dir():
        return None
    try:
        empty = not any(output.iterdir())
    except OSError as exc:
        raise _fault(exc, output) from exc
    if empty:
        return None
    manifest = read_manifest(output)
    if manifest is None:
        raise OutputError(
            f"output_dir {str(output)!r} is not empty and was not written by modelopt-typed-recipes "
            "(no manifest.json of ours in it)",
            path="output_dir",
            hint="choose an empty or new folder; only a folder written by an earlier run of ours is replaced",
        )
    extra = foreign_files(output, manifest)
    if extra:
        raise OutputError(
            f"output_dir {str(output)!r} holds files an earlier run did not write: {_names(extra)}",
            path="output_dir", hint="move them elsewhere (they would be lost with the old outputs), or choose "
                                    "another folder",
        )
    return manifest


def finished(output: Path, recipe_hash: str) -> dict[str, Any] | None:
    """Our manifest in ``output`` when it records a finished run of this very recipe (same hash), else None."""
    manifest = read_manifest(output) if output.is_dir() else None
    if manifest is None or manifest["run"].get("recipe_hash") != recipe_hash or not manifest.get("result"):
        return None
    return manifest


def staging_dir(output: Path, recipe_hash: str) -> Path:
    """The staging folder of one recipe: named by its hash, so the same command finds it again to resume."""
    return output.parent / f".{output.name}.partial-{recipe_hash}"


# --------------------------------------------------------------------------- the lock
def lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


class OutputLock:
    """``with OutputLock(output, identity):`` hold the output folder for one run (see the module text)."""

    def __init__(self, output: Path, identity: Mapping[str, Any]) -> None:
        self.output = output
        self.path = lock_path(output)
        self.identity = dict(identity)
        self._fd: int | None = None

    def __enter__(self) -> Self:
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise _fault(exc, self.path.parent) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise _fault(exc, self.path.parent) from exc
                raise OutputLockedError(
                    f"output_dir {str(self.output)!r} is being written by another run ({self._holder()})",
                    path="output_dir", hint="wait for it to finish, or choose another output_dir",
                ) from None
            # the holder before us may have unlinked the file after we opened it: lock the file on disk
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(self.identity) + "\n").encode())
        except OSError as exc:
            self.__exit__(None, None, None)
            raise _fault(exc, self.path.parent) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def _holder(self) -> str:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8")[:4096])
            return (f"pid {doc['pid']} on {doc['host']}, started {doc['started']}, recipe hash "
                    f"{doc['recipe_hash']}; lock file {self.path}")
        except (OSError, ValueError, KeyError, TypeError):
            return f"lock file {self.path}"


# --------------------------------------------------------------------------- leftovers of dead runs
def clean_leftovers(output: Path, *, keep: Path | None = None) -> list[str]:
    """Remove staging and swap folders of earlier runs beside ``output`` (call with the lock held: no live
    run of ours owns them) and re-load scratch folders of dead processes; returns what was removed."""
    removed: list[str] = []
    parent = output.parent
    if parent.is_dir():
        for p in sorted(parent.glob(f".{output.name}.partial-*")):
            if p != keep and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(str(p))
        for p in sorted(parent.glob(f".{output.name}.old-*")):
            if p.is_dir() and not p.is_symlink():
                _remove_listed(p)
                removed.append(str(p))
    tmp = Path(tempfile.gettempdir())
    for p in tmp.glob(f"{RELOAD_PREFIX}*"):
        pid = p.name[len(RELOAD_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(str(p))
    return removed


def reload_scratch() -> tempfile.TemporaryDirectory[str]:
    """A scratch folder for re-loading an export, named by this process so leftovers can be cleared."""
    return tempfile.TemporaryDirectory(prefix=f"{RELOAD_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_listed(folder: Path) -> list[str]:
    """Delete the files ``folder``'s manifest lists (the manifest last), then empty folders; return what is
    left (files we did not write stay where they are)."""
    manifest = read_manifest(folder)
    for rel in (manifest or {}).get("files", {}):
        p = folder / rel
        if ".." not in Path(rel).parts and (p.is_file() or p.is_symlink()):
            with contextlib.suppress(OSError):
                p.unlink()
    if manifest is not None:
        with contextlib.suppress(OSError):
            (folder / MANIFEST_NAME).unlink()
    for root, _dirs, _files in sorted(os.walk(folder, topdown=False), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):
            Path(root).rmdir()
    return sorted(inventory(folder)) if folder.exists() else []


# --------------------------------------------------------------------------- the swap
def publish(staging: Path, output: Path) -> list[str]:
    """Put the finished ``staging`` folder in ``output``'s place; return files of others that were kept.

    An earlier output of ours is moved aside and emptied file by file from its manifest. If it holds a
    file its manifest does not list, nothing is moved and :class:`OutputError` says which file; the
    finished run stays in ``staging`` and the same command, run again, only swaps.
    """
    try:
        if not output.exists():
            try:
                staging.rename(output)
                return []
            except OSError as exc:  # an empty folder is replaced; anything else appeared during the run
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        check_output(output)
        if not any(output.iterdir()):
            output.rmdir()
            staging.rename(output)
            return []
        old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        output.rename(old)
        manifest = read_manifest(old)
        extra = foreign_files(old, manifest) if manifest is not None else ["manifest.json"]
        if extra:  # a file arrived between the check and the move: put everything back
            old.rename(output)
            raise OutputError(
                f"output_dir {str(output)!r} got files during the run that no run of ours wrote: {_names(extra)}",
                path="output_dir", hint=f"move them away and run the same command again (the finished run "
                                        f"waits in {staging})",
            )
        staging.rename(output)
        left = _remove_listed(old)
    except OutputError as err:
        if "finished run waits" in err.hint or not staging.exists():
            raise
        raise OutputError(err.message, path=err.path,
                          hint=f"{err.hint}; the finished run waits in {staging}: run the same command again "
                               "to put it in place") from err
    except OSError as exc:
        raise _fault(exc, output.parent) from exc
    return [str(old / rel) for rel in left]


def _names(rels: list[str], n: int = 5) -> str:
    more = f" and {len(rels) - n} more" if len(rels) > n else ""
    return ", ".join(rels[:n]) + more


# --------------------------------------------------------------------------- machine faults
_FAULTS = {
    errno.ENOSPC: ("no space left on the device", ("free space there (df -h shows how much), or choose an "
                    "output_dir on another disk")),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota, or choose an output_dir elsewhere"),
    errno.EFBIG: ("a file grew past the file-size limit of this process",
                  "raise the limit (ulimit -f unlimited) or choose a smaller export"),
    errno.EACCES: ("permission denied", "make the folder writable (chmod/chown) or choose another output_dir"),
    errno.EPERM: ("operation not permitted", "make the folder writable or choose another output_dir"),
    errno.EROFS: ("the file system is read-only", "choose an output_dir on a writable file system"),
}
_TEXT_FAULTS = (  # what libraries that write files say when they swallow the OSError (safetensors, torch.save)
    ("no space left on device", errno.ENOSPC), ("os error 28", errno.ENOSPC), ("storagefull", errno.ENOSPC),
    ("file too large", errno.EFBIG), ("os error 27", errno.EFBIG), ("filetoolarge", errno.EFBIG),
    ("disk quota exceeded", errno.EDQUOT), ("read-only file system", errno.EROFS), ("os error 30", errno.EROFS),
)  # not "permission denied": in a library's text it may be about a file we read, not one we write


def machine_fault(exc: BaseException, where: Path) -> OutputError | None:
    """The :class:`OutputError` for a write the machine refused (full disk, file-size limit, permissions,
    read-only), or None when ``exc`` is something else. Library errors that only carry the OS message in
    their text (safetensors' ``SafetensorError``, torch's writer) are recognised by it. Permission errors
    count only for files under ``where`` (a source checkpoint we cannot read is not an output fault)."""
    if isinstance(exc, RecipeError):
        return None
    code = exc.errno if isinstance(exc, OSError) else None
    filename = getattr(exc, "filename", None)
    if code in (errno.EACCES, errno.EPERM) and filename and not _under(Path(str(filename)), where):
        return None
    if code not in _FAULTS:
        text = str(exc).lower().replace(" ", "") if not isinstance(exc, OSError) else ""
        code = next((c for words, c in _TEXT_FAULTS if words.replace(" ", "") in text), None)
        if code is None and any(w in text for w in _WRITE_FAILED):
            code = _diagnose(where)
            if code is None:
                return OutputError(f"writing under {str(where)!r} failed: {exc}"[:500], path="output_dir",
                                   hint="check the free space (df -h), the file-size limit (ulimit -f) and the "
                                        "permissions there")
    if code is None:
        return None
    what, hint = _FAULTS[code]
    if code == errno.EFBIG:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY:
            what += f" ({soft / 2**20:.1f} MiB)"
    target = f"writing {str(filename)!r}" if filename else f"writing under {str(where)!r}"
    return OutputError(f"{target} failed: {what}", path="output_dir", hint=hint)


_WRITE_FAILED = ("unexpectedpos", "filewritefailed", "pytorchstreamwriter", "ioerror", "errorwhileserializing")
"""Words of library write errors that lost the OS error on the way (torch.save's zip writer says only
"unexpected pos 94208 vs 94102" when the file-size limit stops it): then the machine is asked."""


def _diagnose(where: Path) -> int | None:
    """The likely cause of a write failure whose error lost its errno: a file-size limit, or a full disk."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return errno.EFBIG
    for p in (where, *where.parents):
        if p.exists():
            try:
                usage = shutil.disk_usage(p)
            except OSError:
                return None
            return errno.ENOSPC if usage.free < max(64 << 20, usage.total // 200) else None
    return None


def _under(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _fault(exc: OSError, where: Path) -> OutputError:
    return machine_fault(exc, where) or OutputError(f"{where}: {exc.strerror or exc}", path="output_dir",
                                                    hint="check the folder and its permissions")


@contextlib.contextmanager
def faults_as_errors(where: Path) -> Iterator[None]:
    """Turn a machine fault raised inside the block into its :class:`OutputError`."""
    try:
        yield
    except RecipeError:
        raise
    except Exception as exc:
        err = machine_fault(exc, where)
        if err is None:
            raise
        raise err from exc
