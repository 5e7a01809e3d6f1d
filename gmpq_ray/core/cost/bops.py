"""Complexity: per-layer MACs at the deployment resolution and BOPs (bit operations).

BOPs of a layer = MACs x weight bits x activation bits; of a network, the sum. MACs come from
``torch.utils.flop_counter`` run on a meta-device copy of the deployment model, so even
ResNet-50 at 224x224 costs no memory and a few milliseconds. Budgets count the *searched*
layers (the paper's convention); the total adds the fixed first conv and classifier.

This module is the one place BOPs are summed: :func:`searched_bops` (the searched layers of a
policy), :func:`floor_bops` (every searched layer at the lowest candidates),
:meth:`CostModel.policy_bops` (searched and total, as a :class:`PolicyBops` record) and, for a
supernet, :class:`~gmpq_ray.core.cost.expected.SupernetBops` (expected and argmax BOPs, as
tensors). Values in BOPs are named ``*bops*``; values in G carry ``_g``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gmpq_ray.core.cost.expected import SupernetBops
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.quant.convert import default_fixed_layers, quantizable_layers, searched_layers

GIGA = 1e9
DEFAULT_FIXED_BITS = LayerBits(8, 8)


def searched_bops(layers: Mapping[str, LayerBits], macs: Mapping[str, int]) -> int:
    """BOPs of per-layer bits: ``sum(macs[n] * w_bits * a_bits)`` over ``layers``.

    Example:
        >>> searched_bops({"conv": LayerBits(4, 2)}, {"conv": 1000})
        8000
    """
    return sum(macs[name] * bits.w_bits * bits.a_bits for name, bits in layers.items())


def floor_bops(layers: Iterable[str], macs: Mapping[str, int], w_candidates: Sequence[int], a_candidates: Sequence[int]) -> int:
    """BOPs of ``layers`` all at the lowest candidates: the smallest any policy can reach.

    Example:
        >>> floor_bops(["conv"], {"conv": 1000}, [4, 2], [3, 2])
        4000
    """
    lowest = LayerBits(min(w_candidates), min(a_candidates))
    return searched_bops(dict.fromkeys(layers, lowest), macs)


class PolicyBops(NamedTuple):
    """A policy's BOPs: its searched layers and the whole network (fixed layers included).

    A tuple ``(searched, total)``, so ``searched, total = cost.policy_bops(policy)`` unpacks it.

    Example:
        >>> PolicyBops(15_000_000, 22_000_000).to_dict(bops_limit=33e6)
        {'searched_g': 0.015, 'total_g': 0.022, 'limit_g': 0.033}
    """

    searched: int
    total: int

    def to_dict(self, bops_limit: float | None = None) -> dict[str, float]:
        """The ``bops`` entry of a policy file, in G (``limit_g`` when a limit is given)."""
        record = {"searched_g": self.searched / GIGA, "total_g": self.total / GIGA}
        if bops_limit is not None:
            record["limit_g"] = bops_limit / GIGA
        return record


def module_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs of every Conv2d/Linear of ``model`` for one input of ``input_shape`` (C, H, W)."""
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, *input_shape, device=device))
    counts = counter.get_flop_counts()
    macs: dict[str, int] = {}
    for name in quantizable_layers(model):
        # Keys are prefixed with the root module's class name: "ResNet.layer1.0.conv1".
        key = f"{type(model).__name__}.{name}"
        macs[name] = sum(counts.get(key, {}).values()) // 2
    return macs


@functools.lru_cache(maxsize=32)
def _deployment_macs(model_name: str, input_size: int, num_classes: int, in_channels: int, cifar_stem: bool) -> tuple:
    # eval: a batch of one reaches 1x1 maps at small sizes, which batch norm refuses in training mode.
    model = create_model(model_name, num_classes=num_classes, in_channels=in_channels, cifar_stem=cifar_stem, device="meta").eval()
    macs = module_macs(model, (in_channels, input_size, input_size))
    convs = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    return tuple(macs.items()), tuple(default_fixed_layers(model)), convs


@dataclass(frozen=True)
class CostModel:
    """BOPs of policies and supernets of one architecture at its deployment resolution.

    Example:
        >>> cost = CostModel.for_model("resnet18", input_size=224)
        >>> round(cost.uniform_bops(32, 32) / 1e9)
        1858
    """

    macs: Mapping[str, int]
    searched: tuple[str, ...]
    fixed_layers: tuple[str, ...]

    @classmethod
    def for_model(
        cls,
        model_name: str,
        input_size: int,
        num_classes: int = 1000,
        in_channels: int = 3,
        cifar_stem: bool = False,
        fixed_layers: Sequence[str] | None = None,
    ) -> CostModel:
        """Cost model of a registered architecture at ``input_size`` x ``input_size``."""
        macs_items, default_fixed, convs = _deployment_macs(model_name, input_size, num_classes, in_channels, cifar_stem)
        fixed = tuple(default_fixed if fixed_layers is None else fixed_layers)
        return cls(macs=dict(macs_items), searched=tuple(n for n in convs if n not in fixed), fixed_layers=fixed)

    @classmethod
    def for_module(cls, model: nn.Module, input_shape: Sequence[int], fixed_layers: Sequence[str] | None = None) -> CostModel:
        """Cost model of an arbitrary FP module (for tests and custom networks)."""
        macs = module_macs(model, input_shape)
        fixed = tuple(default_fixed_layers(model) if fixed_layers is None else fixed_layers)
        return cls(macs=macs, searched=tuple(searched_layers(model, fixed)), fixed_layers=fixed)

    def searched_macs(self) -> int:
        return sum(self.macs[n] for n in self.searched)

    def searched_bops(self, layers: Mapping[str, LayerBits]) -> int:
        """BOPs of per-layer bits of searched layers (:func:`searched_bops`)."""
        return searched_bops(layers, self.macs)

    def floor_bops(self, w_candidates: Sequence[int], a_candidates: Sequence[int]) -> int:
        """Searched-layer BOPs with every searched layer at the lowest candidates."""
        return floor_bops(self.searched, self.macs, w_candidates, a_candidates)

    def policy_bops(self, policy: Policy, fixed_bits: LayerBits = DEFAULT_FIXED_BITS) -> PolicyBops:
        """The BOPs record of ``policy``: searched layers, and total with the fixed layers at
        their bits in the policy, else ``fixed_bits``."""
        searched = self.searched_bops(policy.layers)
        fixed = searched_bops({n: policy.fixed_layers.get(n, fixed_bits) for n in self.fixed_layers}, self.macs)
        return PolicyBops(searched, searched + fixed)

    def uniform_policy(self, model_name: str, w_bits: int, a_bits: int, fixed_bits: LayerBits | None = None) -> Policy:
        """Every searched layer at (w_bits, a_bits); fixed layers at ``fixed_bits`` (default: the same)."""
        fixed = fixed_bits or LayerBits(w_bits, a_bits)
        return Policy(
            model=model_name,
            layers={n: LayerBits(w_bits, a_bits) for n in self.searched},
            fixed_layers={n: fixed for n in self.fixed_layers},
        )

    def uniform_bops(self, w_bits: int, a_bits: int) -> int:
        """Total BOPs with every layer, fixed ones included, at (w_bits, a_bits)."""
        return sum(m * w_bits * a_bits for n, m in self.macs.items() if n in self.searched or n in self.fixed_layers)

    def expected_bops(self, supernet: nn.Module) -> torch.Tensor:
        """Expected searched-layer BOPs under softmax(α), differentiable in α (what the search
        loss uses: :class:`~gmpq_ray.core.cost.expected.SupernetBops`)."""
        return SupernetBops(self, supernet).expected()[0]


def format_bops(bops: float) -> str:
    """BOPs in G with enough digits for small networks: 15.31 G, 0.02074 G."""
    value = bops / GIGA
    return f"{value:.2f} G" if value >= 1 else f"{value:.4g} G"
