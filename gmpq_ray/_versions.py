"""The Python and PyTorch this package supports, checked once when it is imported.

Kept free of newer syntax and of heavy imports (PyTorch is asked through its installed
metadata, not imported), so that an unsupported environment gets one clear line instead of a
failure deep inside an import.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# Keep in step with pyproject.toml's requires-python and torch lower bound.
MIN_PYTHON = (3, 11)
MIN_TORCH = (2, 11)
EXIT_USAGE = 2


def _release(version: str) -> tuple[int, ...]:
    """(2, 11) of '2.11.0+cu130', '2.12.0a0+git1234', '2.11'."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+", 1)[0])[:2])


def environment_problem(python: tuple[int, ...] | None = None, torch_version: str | None = None) -> str | None:
    """What makes this environment unsupported, in one line, or None."""
    python = tuple(sys.version_info[:2]) if python is None else python
    if python < MIN_PYTHON:
        return (f"gmpq-ray needs Python >= {'.'.join(map(str, MIN_PYTHON))}, this is Python "
                f"{'.'.join(map(str, python))}")
    if torch_version is None:
        from importlib import metadata

        try:
            torch_version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            return None  # a torch without metadata (a source build), or none: its import says which
    if _release(torch_version) < MIN_TORCH:
        return (f"gmpq-ray needs PyTorch >= {'.'.join(map(str, MIN_TORCH))}, this is torch {torch_version} "
                f"(pip install -U 'torch>={'.'.join(map(str, MIN_TORCH))}')")
    return None


def require_supported_environment() -> None:
    """Raise ImportError (as the ``gmpq`` command: print one line, exit 2) where unsupported."""
    problem = environment_problem()
    if problem is None:
        return
    if Path(sys.argv[0]).name in ("gmpq", "gmpq.exe"):
        print(f"gmpq: error: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    raise ImportError(problem)
