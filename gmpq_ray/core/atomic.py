"""Atomic file writes: a temporary file in the same folder, then a rename.

A reader (or a resumed run) sees the old file or the new one, never half of one. Every file
this project writes that a crash could cut short goes through :func:`write_atomic`: text
(:func:`write_text_atomic`), ``torch.save`` (:func:`save_torch_atomic`) and figures.

Example::

    write_atomic(Path("runs/x/figure.png"), lambda tmp: fig.savefig(tmp, format="png"))
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Write ``path`` atomically: ``writer`` writes a temporary path, which is then renamed.

    Args:
        path: the file to (re)place; its folder is created if missing.
        writer: called with the temporary file's path (it exists, empty); whatever it writes
            there becomes ``path``. It must name the format if it infers one from the suffix
            (the temporary file ends in ``.tmp``).

    Returns:
        ``path``, as a :class:`Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; results are shared like any other file (0644 under umask 022).
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        writer(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def save_torch_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` through a temporary file and a rename."""
    import torch

    write_atomic(path, lambda tmp: torch.save(obj, tmp))
