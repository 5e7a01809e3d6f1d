"""Run folders: what ``--output`` may point at, claiming one for a run, and the lock that keeps
a second run out.

A folder gmpq made carries a marker file (:data:`MARKER_FILE`, JSON: which command made it,
when, by which process). ``--overwrite`` only ever replaces such a folder, of the same kind, or
an empty one; it never touches the current folder, a parent of it, or a folder that holds one of
the run's inputs (the job file, a search space, a state dict, a data root). Users' own folders
are never deleted.

While a run works in a folder it holds an exclusive ``flock`` on :data:`LOCK_FILE` in it. The
kernel drops the lock when the process ends, however it ends, so a stale lock from a dead
process never blocks the next run; a second live run into the same folder is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from gmpq_ray.core.errors import UserInputError

MARKER_FILE = ".gmpq-run.json"
LOCK_FILE = ".gmpq-run.lock"


def study_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite study at ``path``, with ``?``, ``#`` and ``%`` escaped
    (a bare f-string would cut the path at ``?`` and put the study elsewhere)."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def read_marker(folder: Path) -> dict | None:
    """The marker of a gmpq run folder, or None if ``folder`` holds none (or an unreadable one)."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("kind"), str) else None


def _lock_holder(folder: Path) -> str | None:
    """Who holds the lock on ``folder`` (``pid N on host``), or None if no live process does."""
    path = folder / LOCK_FILE
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = json.loads(path.read_text())
            return f"pid {holder['pid']} on {holder['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"
    finally:
        os.close(fd)
    return None


def check_new_output(output: str | Path, kind: str, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Check that ``output`` may receive a new ``kind`` run (``search``, ``finetune``, ...); changes nothing.

    Args:
        output: the ``--output`` the user gave.
        kind: the command making the run; ``--overwrite`` replaces only a run of the same kind.
        overwrite: the user asked to replace an earlier run's results.
        inputs: files and folders the run reads; the output may not be one of them or hold one.

    Returns:
        The resolved folder.
    """
    if not str(output).strip():
        raise UserInputError("--output: the path is empty (an unset shell variable?)")
    out = Path(output).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise UserInputError(f"--output {out} is the current folder or one of its parents; name a folder for this run")
    if out == Path.home().resolve():
        raise UserInputError(f"--output {out} is the home folder; name a folder for this run")
    for item in inputs:
        if item is None or not str(item).strip():
            continue
        path = Path(item).expanduser().resolve()
        if out == path or out in path.parents:
            raise UserInputError(f"--output {out} holds {path}, which this run reads; choose another folder")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--output {out} exists and is not a folder")
    holder = _lock_holder(out) if out.is_dir() else None
    if holder:
        raise UserInputError(f"--output {out} is in use by a running gmpq ({holder}); wait for it or choose another folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserInputError(f"--output {out} already holds results; choose a new folder or pass --overwrite to replace them")
        marker = read_marker(out)
        if marker is None:
            raise UserInputError(f"--output {out} was not made by gmpq (no {MARKER_FILE}); --overwrite only replaces "
                                 f"gmpq run folders, so it is left as it is: choose another folder")
        if marker["kind"] != kind:
            raise UserInputError(f"--output {out} holds a gmpq {marker['kind']} run, not a {kind} run; "
                                 f"--overwrite leaves it as it is: choose another folder")
    return out


class RunFolder:
    """A run folder this process works in, locked for as long as the run lasts.

    Use :meth:`create` for a new run (after every check has passed) or :meth:`reopen` to resume,
    then :meth:`release` (or ``with``) when the run ends. :meth:`rollback` undoes :meth:`create`
    when the run fails before producing anything.
    """

    def __init__(self, path: Path, kind: str, fd: int, created: bool) -> None:
        self.path = path
        self.kind = kind
        self._fd: int | None = fd
        self._created = created

    @classmethod
    def create(cls, out: Path, kind: str, overwrite: bool) -> RunFolder:
        """Create (or, with ``overwrite``, empty) ``out``, lock it and mark it as a ``kind`` run.

        ``out`` must have passed :func:`check_new_output`; the checks that could change since
        (another run took the folder, results appeared in it) are made again under the lock.
        """
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        folder = cls(out, kind, cls._lock(out), created)
        try:
            others = [p for p in out.iterdir() if p.name != LOCK_FILE]
            if others and not overwrite:
                raise UserInputError(f"--output {out} already holds results; choose a new folder or pass --overwrite to replace them")
            if others:
                marker = read_marker(out)
                if marker is None or marker["kind"] != kind:  # changed since the check: never delete a stranger's folder
                    raise UserInputError(f"--output {out} is not a gmpq {kind} run folder; --overwrite leaves it as it is")
                for path in others:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            folder._write_marker()
        except BaseException:
            folder.release()
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
        return folder

    @classmethod
    def reopen(cls, out: Path, kind: str) -> RunFolder:
        """Lock the existing run folder ``out`` to continue its run (``--resume``)."""
        marker = read_marker(out)
        if marker is not None and marker["kind"] != kind:
            raise UserInputError(f"--resume {out} holds a gmpq {marker['kind']} run, not a {kind} run")
        folder = cls(out, kind, cls._lock(out), created=False)
        if marker is None:  # a run folder from before markers existed
            folder._write_marker()
        return folder

    @staticmethod
    def _lock(out: Path) -> int:
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _lock_holder(out) or "another process"
            raise UserInputError(f"--output {out} is in use by a running gmpq ({holder}); wait for it or choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        return fd

    def _write_marker(self) -> None:
        from gmpq_ray import __version__
        from gmpq_ray.core.policy import write_text_atomic

        marker = {"kind": self.kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "gmpq_ray": __version__,
                  "host": socket.gethostname(), "pid": os.getpid()}
        write_text_atomic(self.path / MARKER_FILE, json.dumps(marker, indent=1) + "\n")

    def rollback(self) -> None:
        """Undo :meth:`create`: remove what this run wrote (the folder too, if this run made it)."""
        self.release()
        if self._created:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            for path in self.path.iterdir():
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    def release(self) -> None:
        """Drop the lock (the lock file stays: it is how the next run finds the folder free)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
