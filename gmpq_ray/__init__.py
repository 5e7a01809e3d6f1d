"""gmpq-ray: distributed search for generalizable mixed-precision quantization policies.

``import gmpq_ray`` stays light: the Ray-based entry points load on first use, so
:mod:`gmpq_ray.core` works where Ray is not installed.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["search", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "search":
        from gmpq_ray.search.runner import run_search

        return run_search
    raise AttributeError(f"module 'gmpq_ray' has no attribute {name!r}")
