"""gmpq-ray: distributed search for generalizable mixed-precision quantization policies.

``import gmpq_ray`` stays light: the Ray-based entry points load on first use, so
:mod:`gmpq_ray.core` works where Ray is not installed.
"""

from __future__ import annotations

from typing import Any

from gmpq_ray._versions import require_supported_environment

require_supported_environment()

__version__ = "0.1.0"
__all__ = ["finetune", "search", "__version__"]


def __getattr__(name: str) -> Any:
    # The callable module itself (see gmpq_ray._callable): ``gmpq_ray.search(...)`` runs a search,
    # ``gmpq_ray.finetune(...)`` a finetuning job, and both stay so after their modules are imported.
    if name in ("search", "finetune"):
        import importlib

        return importlib.import_module(f"gmpq_ray.{name}")
    raise AttributeError(f"module 'gmpq_ray' has no attribute {name!r}")
