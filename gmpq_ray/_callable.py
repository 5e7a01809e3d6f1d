"""Make a module callable, so ``gmpq_ray.search(...)`` and ``gmpq_ray.finetune(...)`` keep working
once the subpackage or submodule of the same name has been imported.

Importing ``gmpq_ray.search.runner`` binds the *module* ``gmpq_ray.search`` on the package, which
shadows the lazily exported function of the same name; a module whose class has ``__call__``
stays usable as that function.
"""

from __future__ import annotations

import importlib
import sys
import types


def make_callable(module_name: str, target: str) -> None:
    """Calling module ``module_name`` calls ``target`` (``"package.module:function"``, imported on first call)."""
    target_module, function_name = target.split(":")

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module(target_module), function_name)(*args, **kwargs)

    _CallableModule.__call__.__doc__ = f"Calls :func:`{target_module}.{function_name}`."
    sys.modules[module_name].__class__ = _CallableModule
