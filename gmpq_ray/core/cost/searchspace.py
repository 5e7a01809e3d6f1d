"""Search spaces: the architecture, bit candidates, fixed layers and BOPs budget, from YAML.

Example ``searchspaces/resnet18.yaml``::

    model: resnet18
    input_size: 224          # deployment resolution: MACs are counted here
    num_classes: 1000        # deployment classes
    w_bits: [2, 3, 4, 6]
    a_bits: [2, 3, 4, 6]
    fixed_bits: 8            # first conv and classifier
    bops_limit: 15.3G        # searched layers; a plain number means G

"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gmpq_ray.core.config import MAX_CLASSES, MAX_IMAGE_SIZE, MAX_IN_CHANNELS, key_path, load_yaml, parse, require, short_repr
from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.registry import create_model, model_entry
from gmpq_ray.core.policy import MAX_BITS, MIN_BITS, LayerBits, check_bits
from gmpq_ray.core.quant.convert import check_fixed_layers

_UNITS = {"": 1e9, "G": 1e9, "M": 1e6, "T": 1e12, "K": 1e3}


def parse_bops(value: Any, where: str) -> float:
    """BOPs from a number (in G) or a string with a unit: ``15.3``, ``"15.3G"``, ``"33M"``."""
    if isinstance(value, bool):
        raise UserInputError(f"{where}: expected a BOPs amount such as 15.3 or '33M', got {short_repr(value)}")
    if isinstance(value, (int, float)):
        amount = float(value) * 1e9
    elif isinstance(value, str) and (match := re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([GMTK]?)\s*(?:BOPs)?\s*", value, re.I)):
        amount = float(match.group(1)) * _UNITS[match.group(2).upper()]
    else:
        raise UserInputError(f"{where}: expected a BOPs amount such as 15.3 (G) or '33M', got {short_repr(value)}")
    require(math.isfinite(amount), where, f"must be a finite amount, got {short_repr(value)}")
    require(amount > 0, where, "must be positive")
    return amount


@dataclass
class SearchSpace:
    """What a search may choose, for which architecture, under which budget.

    Built by :meth:`from_dict` (or :meth:`load`), which parses every field once: ``bops_limit``
    is in BOPs (the YAML's ``15.3``, ``"15.3G"`` or ``"33M"``), ``w_bits`` and ``a_bits`` are
    sorted. :meth:`validate` only checks.
    """

    model: str
    input_size: int
    w_bits: list[int]
    a_bits: list[int]
    bops_limit: float
    num_classes: int = 1000
    in_channels: int = 3
    cifar_stem: bool = False
    fixed_layers: list[str] | None = None
    fixed_bits: int = 8

    @classmethod
    def from_dict(cls, data: Any, where: str) -> SearchSpace:
        """Parse and validate a search-space mapping (the YAML's form); ``where`` names it in errors.

        Example:
            >>> space = SearchSpace.from_dict({"model": "digits_cnn", "input_size": 16, "num_classes": 10,
            ...     "in_channels": 1, "w_bits": [4, 2], "a_bits": [2, 4], "bops_limit": "33M"}, "space")
            >>> space.w_bits, space.bops_limit
            ([2, 4], 33000000.0)
        """
        if isinstance(data, Mapping) and "bops_limit" in data:
            data = {**data, "bops_limit": parse_bops(data["bops_limit"], f"{key_path(where)}bops_limit")}
        space = parse(cls, data, where)
        return dataclasses.replace(space, w_bits=sorted(space.w_bits), a_bits=sorted(space.a_bits))

    def validate(self, where: str) -> None:
        try:
            model_entry(self.model)
        except UserInputError as err:
            raise UserInputError(f"{key_path(where)}model: {err}") from None
        require(self.input_size >= 8, f"{key_path(where)}input_size", f"must be at least 8, got {self.input_size}")
        require(self.input_size <= MAX_IMAGE_SIZE, f"{key_path(where)}input_size", f"must be at most {MAX_IMAGE_SIZE}, got {self.input_size}")
        require(self.num_classes >= 2, f"{key_path(where)}num_classes", "must be at least 2")
        require(self.num_classes <= MAX_CLASSES, f"{key_path(where)}num_classes", f"must be at most {MAX_CLASSES}")
        require(self.in_channels >= 1, f"{key_path(where)}in_channels", "must be at least 1")
        require(self.in_channels <= MAX_IN_CHANNELS, f"{key_path(where)}in_channels", f"must be at most {MAX_IN_CHANNELS}")
        for kind in ("w_bits", "a_bits"):
            bits = getattr(self, kind)
            require(len(bits) >= 1, f"{key_path(where)}{kind}", "needs at least one candidate")
            require(len(set(bits)) == len(bits), f"{key_path(where)}{kind}", f"repeats a candidate: {bits}")
            for i, b in enumerate(bits):
                require(MIN_BITS <= b <= MAX_BITS, f"{key_path(where)}{kind}[{i}]", f"bits must be between {MIN_BITS} and {MAX_BITS}, got {b}")
        check_bits(self.fixed_bits, f"{key_path(where)}fixed_bits")
        limit = self.bops_limit
        require(math.isfinite(limit) and limit > 0, f"{key_path(where)}bops_limit", f"must be a positive amount, got {short_repr(limit)}")
        if self.fixed_layers is not None:
            model = create_model(self.model, self.num_classes, self.in_channels, self.cifar_stem, device="meta")
            check_fixed_layers(model, self.fixed_layers, f"{key_path(where)}fixed_layers")
        cost = self.cost_model()
        require(bool(cost.searched), f"{key_path(where)}fixed_layers", "leaves no layer to search")
        floor = cost.floor_bops(self.w_bits, self.a_bits)
        require(
            floor <= limit, f"{key_path(where)}bops_limit",
            f"{limit / 1e9:.4g} G is below the smallest policy's {floor / 1e9:.4g} G "
            f"(every searched layer at {min(self.w_bits)}/{min(self.a_bits)} bits)",
        )

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Read and validate a search-space YAML file."""
        return cls.from_dict(load_yaml(path), str(path))

    @property
    def fixed(self) -> LayerBits:
        """The bits of the fixed layers (``fixed_layers``, by default the first conv and the classifier)."""
        return LayerBits(self.fixed_bits, self.fixed_bits)

    def cost_model(self) -> CostModel:
        """MACs of the deployment model (``model`` at ``input_size``, ``num_classes``).

        ``cifar_stem`` only shapes the network trained during the search on small images; the
        policy is deployed on the standard-stem network (its searched layers have the same
        names), so the budget is always counted on that one.
        """
        if self.fixed_layers is not None:
            check_fixed_layers(create_model(self.model, self.num_classes, self.in_channels, self.cifar_stem, device="meta"), self.fixed_layers)
        return CostModel.for_model(self.model, self.input_size, self.num_classes, self.in_channels, False, self.fixed_layers)

    def floor_bops(self) -> int:
        """Searched-layer BOPs with every searched layer at the lowest candidates."""
        return self.cost_model().floor_bops(self.w_bits, self.a_bits)
