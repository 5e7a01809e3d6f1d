"""The optional ``[export]`` extra: ``onnx`` and ``onnxruntime``, imported only when an export runs."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from gmpq_ray.core.errors import UserInputError

EXTRA_HINT = "pip install 'gmpq-ray[export]'"


def require(name: str) -> ModuleType:
    """Import ``name`` (``onnx`` or ``onnxruntime``), or raise a :class:`UserInputError` naming the extra."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserInputError(f"exporting to ONNX needs the {name} package, which is not installed: {EXTRA_HINT}") from None


def extra_installed() -> bool:
    """Whether ``onnx`` and ``onnxruntime`` can be imported (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
