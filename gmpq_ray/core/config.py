"""Strict parsing of YAML mappings into typed dataclasses, with errors that name the field.

Unknown keys are errors (a typo must not pass silently), so are wrong types, missing required
fields and numbers that are not finite. A dataclass may define ``validate(self, where)`` for
checks across fields (it only checks, it changes nothing) and ``normalize(self)`` to bring the
checked values into their canonical form (called once, after ``validate``).

YAML is read by :func:`load_yaml`: UTF-8 text only, a duplicate key is an error, and aliases may
not expand past :data:`MAX_YAML_NODES` nodes (a "billion laughs" file is refused, not expanded).
Error messages quote values through :func:`short_repr`, so no value makes an error line long.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, TypeVar

from gmpq_ray.core.errors import UserInputError

T = TypeVar("T")

_FILE_SUFFIXES = (".yaml", ".yml", ".json")

# A job has a few hundred nodes; aliases may repeat some, but not without bound.
MAX_YAML_NODES = 100_000
# A job or search space is a few kB; anything this large is not one.
MAX_YAML_BYTES = 10_000_000
# How much of a value an error message quotes.
MAX_QUOTED_CHARS = 200
# Seeds reach numpy, torch and Optuna: the range all of them accept.
MAX_SEED = 2**32 - 1
# Any integer field: what fits in the int64 torch and numpy keep counts in.
MAX_INT = 2**63 - 1
# Bounds shared by the configs: image side (pixels), classes, input channels.
MAX_IMAGE_SIZE = 4096
MAX_NAME_LENGTH = 200
MAX_CLASSES = 100_000
MAX_IN_CHANNELS = 1024


def short_repr(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for error messages.

    Lists and mappings are cut while they are written, so a huge (or alias-shared) value costs
    no more than the part quoted.

    Example:
        >>> short_repr([1, 2])
        '[1, 2]'
        >>> short_repr(list(range(100)), limit=20)
        '[0, 1, 2, 3, 4, 5, 6...'
    """
    parts: list[str] = []
    left = [limit]

    def emit(text: str) -> bool:
        parts.append(text[: left[0] + 1])
        left[0] -= len(text)
        return left[0] >= 0

    def walk(item: Any, depth: int) -> bool:
        if isinstance(item, (list, tuple, Mapping)):
            if depth > 20:
                return emit("...")
            if isinstance(item, Mapping):
                pairs = ((key, child) for key, child in item.items())
                opening, closing = "{", "}"
            else:
                pairs = ((None, child) for child in item)
                opening, closing = ("[", "]") if isinstance(item, list) else ("(", ")")
            if not emit(opening):
                return False
            for i, (key, child) in enumerate(pairs):
                if i and not emit(", "):
                    return False
                if key is not None and not (walk(key, depth + 1) and emit(": ")):
                    return False
                if not walk(child, depth + 1):
                    return False
            return emit(closing)
        return emit(repr(item))

    if walk(value, 0):
        return "".join(parts)
    return "".join(parts)[:limit] + "..."


def read_text_file(path: str | Path, kind: str = "text", max_bytes: int = MAX_YAML_BYTES) -> str:
    """The UTF-8 text of ``path``; a missing, unreadable, binary or non-UTF-8 file is one :class:`UserInputError`."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: file not found")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UserInputError(f"{path}: {size:,} bytes is too large for a {kind} file (at most {max_bytes:,})")
        raw = path.read_bytes()
    except OSError as err:
        raise UserInputError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None
    if b"\x00" in raw:
        raise UserInputError(f"{path}: a binary file, not {kind} (it holds NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserInputError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                             f"save the {kind} file as UTF-8") from None


def key_path(where: str) -> str:
    """The prefix of a key under ``where``: ``job.yaml: `` for a file's top-level keys, else ``where.``.

    So errors read ``job.yaml: search.epochs: ...`` and ``data.root: ...``.
    """
    return f"{where}: " if where.endswith(_FILE_SUFFIXES) else f"{where}."


def load_yaml(path: str | Path) -> Any:
    """A YAML file's data, with one clear error for a missing, binary, malformed or hostile file.

    Duplicate keys, non-UTF-8 bytes and aliases that expand past :data:`MAX_YAML_NODES` values
    are errors that name the file (and the line).
    """
    from gmpq_ray.core.yaml_strict import parse_yaml_text  # here: the rest of core needs PyTorch only

    return parse_yaml_text(read_text_file(path, "YAML"), str(path))


def parse(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` names it in errors (``job.search``)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise UserInputError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        raise UserInputError(f"{where}: unknown key(s) {short_repr(unknown)}; allowed: {sorted(fields)}")
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
    normalize = getattr(obj, "normalize", None)
    if normalize is not None:
        normalize()
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
        raise UserInputError(errors[0] if len(errors) == 1 else f"{where}: {short_repr(value)} is not valid here")
    if origin is typing.Literal:
        if value not in args:
            raise UserInputError(f"{where}: {short_repr(value)} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserInputError(f"{where}: expected a list, got {short_repr(value)}")
        return [_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserInputError(f"{where}: expected a mapping, got {short_repr(value)}")
        return {str(k): _coerce(args[1], v, f"{key_path(where)}{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserInputError(f"{where}: expected true or false, got {short_repr(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserInputError(f"{where}: expected an integer, got {short_repr(value)}")
        if not -MAX_INT <= value <= MAX_INT:
            raise UserInputError(f"{where}: {short_repr(value)} is out of range (at most {MAX_INT:.3g} in size)")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserInputError(f"{where}: expected a number, got {short_repr(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond a float's range
            number = math.inf
        if not math.isfinite(number):
            raise UserInputError(f"{where}: must be a finite number, got {short_repr(value)}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise UserInputError(f"{where}: expected a string, got {short_repr(value)}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")


def config_to_dict(obj: Any, omit_defaults: tuple[type, ...] = ()) -> dict[str, Any]:
    """The plain-data form of a config dataclass, which :func:`parse` reads back to an equal one.

    Nested dataclasses become mappings, tuples lists, paths strings and enums their values; fields
    that :func:`parse` does not take (``init=False``) are left out, and so are the fields of the
    classes in ``omit_defaults`` that hold their default (``ParamSpec(value=3.0)`` -> ``{value: 3.0}``).

    Example:
        >>> @dataclasses.dataclass
        ... class Budget:
        ...     epochs: int = 2
        ...     root: Path | None = None
        >>> config_to_dict(Budget(root=Path("/data")))
        {'epochs': 2, 'root': '/data'}
    """
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        raise TypeError(f"config_to_dict expects a dataclass instance, got {type(obj).__name__}")
    return _plain(obj, omit_defaults)


def _plain(value: Any, omit_defaults: tuple[type, ...]) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        omit = isinstance(value, omit_defaults)
        data = {}
        for field in dataclasses.fields(value):
            if not field.init:
                continue
            item = getattr(value, field.name)
            if omit and _is_default(field, item):
                continue
            data[field.name] = _plain(item, omit_defaults)
        return data
    if isinstance(value, Mapping):
        return {key: _plain(item, omit_defaults) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, omit_defaults) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    return copy.deepcopy(value)


def _is_default(field: dataclasses.Field, value: Any) -> bool:
    if field.default is not dataclasses.MISSING:
        return value == field.default
    if field.default_factory is not dataclasses.MISSING:
        return value == field.default_factory()
    return False


def to_dict(obj: Any) -> dict[str, Any]:
    """The plain-data form of a config dataclass (round-trips through :func:`parse`)."""
    return config_to_dict(obj)


def require_name(name: str, where: str) -> None:
    """A job name goes into folder and study names: ASCII letters, digits, '-' and '_', at most :data:`MAX_NAME_LENGTH`."""
    require(bool(name) and name.isascii() and name.replace("-", "").replace("_", "").isalnum(), where,
            f"must be letters, digits, '-' or '_', got {short_repr(name)}")
    require(len(name) <= MAX_NAME_LENGTH, where, f"must be at most {MAX_NAME_LENGTH} characters, got {len(name)}")


def require_seed(seed: int, where: str) -> None:
    """A seed numpy, torch and Optuna all accept: 0 to 2**32 - 1."""
    require(0 <= seed <= MAX_SEED, where, f"must be between 0 and {MAX_SEED} (2**32 - 1), got {short_repr(seed)}")


def require(condition: bool, where: str, message: str) -> None:
    """Raise a :class:`UserInputError` ``where: message`` unless ``condition``."""
    if not condition:
        raise UserInputError(f"{where}: {message}")
