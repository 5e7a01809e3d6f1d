"""Mixed-precision policies: per-layer weight and activation bits, as data.

A policy is saved as JSON::

    {
      "format": "gmpq-policy/1",
      "model": "resnet18",
      "input_size": 224,
      "layers": {"layer1.0.conv1": {"w_bits": 4, "a_bits": 3}, ...},
      "fixed_layers": {"conv1": {"w_bits": 8, "a_bits": 8}, "fc": {"w_bits": 8, "a_bits": 8}},
      "bops": {"searched_g": 15.1, "total_g": 22.9},
      "provenance": {"kind": "argmax", "repair_steps": 0, "fill_steps": 0}
    }

``layers`` holds the searched layers, ``fixed_layers`` the first conv and the classifier kept
at a fixed precision. ``bops`` is informative: it is recomputed, never trusted, when the policy is
applied. ``provenance`` (optional) says where a searched policy comes from: ``kind`` is
``argmax`` (the supernet's argmax as it is), ``repaired`` (lowered into the limit by
``repair_steps`` single-layer bit steps), ``filled`` (then raised by ``fill_steps`` steps
towards the limit) or, for a sampled policy, ``proposal``. A bitwidth of 32 means "not quantized".
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmpq_ray.core.atomic import write_text_atomic
from gmpq_ray.core.config import MAX_IMAGE_SIZE, key_path, read_text_file, short_repr
from gmpq_ray.core.errors import UserInputError

POLICY_FORMAT = "gmpq-policy/1"
FULL_PRECISION_BITS = 32
MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: Any, where: str) -> int:
    """Return ``bits`` as an int if it is 2..8 or 32, else raise naming ``where``."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise UserInputError(f"{where}: bits must be an integer, got {short_repr(bits)}")
    if not (MIN_BITS <= bits <= MAX_BITS or bits == FULL_PRECISION_BITS):
        raise UserInputError(
            f"{where}: bits must be between {MIN_BITS} and {MAX_BITS}, or 32 for full precision; "
            f"got {bits}"
        )
    return bits


@dataclass(frozen=True)
class LayerBits:
    """Weight and activation bitwidths of one layer."""

    w_bits: int
    a_bits: int

    def to_dict(self) -> dict[str, int]:
        return {"w_bits": self.w_bits, "a_bits": self.a_bits}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> LayerBits:
        if not isinstance(data, Mapping):
            raise UserInputError(f"{where}: expected a mapping with w_bits and a_bits, got {short_repr(data)}")
        unknown = set(data) - {"w_bits", "a_bits"}
        if unknown:
            raise UserInputError(f"{where}: unknown key(s) {short_repr(sorted(map(str, unknown)))}; allowed: w_bits, a_bits")
        for key in ("w_bits", "a_bits"):
            if key not in data:
                raise UserInputError(f"{where}: missing {key}")
        return cls(check_bits(data["w_bits"], f"{key_path(where)}w_bits"), check_bits(data["a_bits"], f"{key_path(where)}a_bits"))


@dataclass
class Policy:
    """Per-layer bits of a mixed-precision network.

    Example:
        >>> policy = Policy("digits_cnn", {"layers.0": LayerBits(4, 3)})
        >>> Policy.from_json(policy.to_json()).layers["layers.0"].w_bits
        4
    """

    model: str
    layers: dict[str, LayerBits]
    fixed_layers: dict[str, LayerBits] = field(default_factory=dict)
    input_size: int | None = None
    bops: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def all_layers(self) -> dict[str, LayerBits]:
        """Searched and fixed layers together, fixed layers first."""
        return {**self.fixed_layers, **self.layers}

    def is_uniform(self) -> bool:
        """Whether every searched layer has the same weight and activation bits."""
        return len({(b.w_bits, b.a_bits) for b in self.layers.values()}) <= 1

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": POLICY_FORMAT, "model": self.model}
        if self.input_size is not None:
            data["input_size"] = self.input_size
        data["layers"] = {name: bits.to_dict() for name, bits in self.layers.items()}
        data["fixed_layers"] = {name: bits.to_dict() for name, bits in self.fixed_layers.items()}
        if self.bops:
            data["bops"] = dict(self.bops)
        if self.provenance:
            data["provenance"] = dict(self.provenance)
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "policy") -> Policy:
        """Build a policy from parsed JSON, with errors that name the offending field."""
        if not isinstance(data, Mapping):
            raise UserInputError(f"{source}: a policy must be a JSON object")
        allowed = {"format", "model", "input_size", "layers", "fixed_layers", "bops", "provenance"}
        unknown = set(data) - allowed
        if unknown:
            raise UserInputError(f"{source}: unknown key(s) {short_repr(sorted(map(str, unknown)))}; allowed: {sorted(allowed)}")
        if data.get("format", POLICY_FORMAT) != POLICY_FORMAT:
            raise UserInputError(f"{source}: format {short_repr(data['format'])} is not {POLICY_FORMAT!r}")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise UserInputError(f"{source}: 'model' must be a model name")
        layers = data.get("layers")
        if not isinstance(layers, Mapping) or not layers:
            raise UserInputError(f"{source}: 'layers' must be a non-empty mapping of layer name to bits")
        fixed = data.get("fixed_layers", {})
        if not isinstance(fixed, Mapping):
            raise UserInputError(f"{source}: 'fixed_layers' must be a mapping of layer name to bits")
        input_size = data.get("input_size")
        if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                       or not 0 < input_size <= MAX_IMAGE_SIZE):
            raise UserInputError(f"{source}: 'input_size' must be a positive integer up to {MAX_IMAGE_SIZE}, "
                                 f"got {short_repr(input_size)}")
        bops = data.get("bops", {})
        if not isinstance(bops, Mapping):
            raise UserInputError(f"{source}: 'bops' must be a mapping")
        for key, value in bops.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise UserInputError(f"{source}: bops.{short_repr(key)[1:-1]} must be a finite number, got {short_repr(value)}")
        return cls(
            model=model,
            layers={str(k): LayerBits.from_dict(v, f"{source}: layers.{k}") for k, v in layers.items()},
            fixed_layers={str(k): LayerBits.from_dict(v, f"{source}: fixed_layers.{k}") for k, v in fixed.items()},
            input_size=input_size,
            bops={str(k): float(v) for k, v in bops.items()},
            provenance=_provenance(data.get("provenance", {}), source),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "policy") -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserInputError(f"{source}: not valid JSON ({err})") from None
        except RecursionError:
            raise UserInputError(f"{source}: not valid JSON (nested too deeply)") from None
        except OverflowError:  # 1e999999 and kin
            raise UserInputError(f"{source}: not valid JSON (a number out of range)") from None
        return cls.from_dict(data, source)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the policy atomically, so a crash never leaves half a file."""
        write_text_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"policy file {path} does not exist")
        return cls.from_json(read_text_file(path, "policy JSON"), source=str(path))

    def validate_layers(
        self,
        searched_layers: Iterable[str],
        fixed_layers: Iterable[str] = (),
        w_candidates: Iterable[int] | None = None,
        a_candidates: Iterable[int] | None = None,
    ) -> None:
        """Check this policy against a model's layer names and, optionally, a bit space.

        Raises:
            UserInputError: a layer is unknown or missing, or bits fall outside the space.
        """
        searched, fixed = list(searched_layers), list(fixed_layers)
        unknown = [name for name in self.layers if name not in searched]
        if unknown:
            raise UserInputError(
                f"policy for {self.model!r}: unknown layer(s) {unknown[:5]} "
                f"(the model's searched layers are e.g. {searched[:3]})"
            )
        missing = [name for name in searched if name not in self.layers]
        if missing:
            raise UserInputError(f"policy for {self.model!r}: missing layer(s) {missing[:5]}")
        unknown_fixed = [name for name in self.fixed_layers if name not in fixed]
        if unknown_fixed:
            raise UserInputError(
                f"policy for {self.model!r}: unknown fixed layer(s) {unknown_fixed}; the model's are {fixed}"
            )
        for kind, candidates in (("w_bits", w_candidates), ("a_bits", a_candidates)):
            if candidates is None:
                continue
            allowed = set(candidates)
            for name, bits in self.layers.items():
                value = getattr(bits, kind)
                if value not in allowed:
                    raise UserInputError(
                        f"policy for {self.model!r}: layers.{name}.{kind}={value} is not in the "
                        f"search space's candidates {sorted(allowed)}"
                    )


PROVENANCE_KINDS = ("argmax", "repaired", "filled", "proposal")


def _provenance(data: Any, source: str) -> dict[str, Any]:
    if not isinstance(data, Mapping) or set(data) - {"kind", "repair_steps", "fill_steps"}:
        raise UserInputError(f"{source}: 'provenance' must be a mapping of kind, repair_steps and fill_steps")
    if "kind" in data and data["kind"] not in PROVENANCE_KINDS:
        raise UserInputError(f"{source}: provenance.kind must be one of {list(PROVENANCE_KINDS)}, got {data['kind']!r}")
    for key in ("repair_steps", "fill_steps"):
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserInputError(f"{source}: provenance.{key} must be a non-negative integer, got {value!r}")
    return dict(data)


