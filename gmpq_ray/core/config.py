"""Strict parsing of YAML mappings into typed dataclasses, with errors that name the field.

Unknown keys are errors (a typo must not pass silently), so are wrong types and missing
required fields. A dataclass may define ``validate(self, where)`` for checks across fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from gmpq_ray.core.errors import UserInputError

T = TypeVar("T")

_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def key_path(where: str) -> str:
    """The prefix of a key under ``where``: ``job.yaml: `` for a file's top-level keys, else ``where.``.

    So errors read ``job.yaml: search.epochs: ...`` and ``data.root: ...``.
    """
    return f"{where}: " if where.endswith(_FILE_SUFFIXES) else f"{where}."


def load_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` of a file, with clear errors for a missing or malformed file."""
    import yaml  # here: the rest of core needs PyTorch only

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise UserInputError(f"{path}: not valid YAML{where} ({problem})") from None


def parse(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` names it in errors (``job.search``)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise UserInputError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        raise UserInputError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _coerce(hints[name], data[name], f"{key_path(where)}{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise UserInputError(f"{where}: missing required key {name!r}")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except UserInputError as err:
                errors.append(str(err))
        raise UserInputError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not valid here")
    if origin is typing.Literal:
        if value not in args:
            raise UserInputError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserInputError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserInputError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key_path(where)}{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserInputError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserInputError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserInputError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserInputError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")


def to_dict(obj: Any) -> dict[str, Any]:
    """The plain-data form of a config dataclass (round-trips through :func:`parse`)."""
    return dataclasses.asdict(obj)


def require(condition: bool, where: str, message: str) -> None:
    """Raise a :class:`UserInputError` ``where: message`` unless ``condition``."""
    if not condition:
        raise UserInputError(f"{where}: {message}")
