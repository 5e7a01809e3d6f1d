"""Complexity: per-layer MACs at the deployment resolution and BOPs (bit operations).

BOPs of a layer = MACs x weight bits x activation bits; of a network, the sum. MACs come from
``torch.utils.flop_counter`` run on a meta-device copy of the deployment model, so even
ResNet-50 at 224x224 costs no memory and a few milliseconds. Budgets count the *searched*
layers (the paper's convention); the total adds the fixed first conv and classifier.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.quant.convert import default_fixed_layers, quantizable_layers, searched_layers, supernet_layers

GIGA = 1e9


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
    fixed: tuple[str, ...]

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
        return cls(macs=dict(macs_items), searched=tuple(n for n in convs if n not in fixed), fixed=fixed)

    @classmethod
    def for_module(cls, model: nn.Module, input_shape: Sequence[int], fixed_layers: Sequence[str] | None = None) -> CostModel:
        """Cost model of an arbitrary FP module (for tests and custom networks)."""
        macs = module_macs(model, input_shape)
        fixed = tuple(default_fixed_layers(model) if fixed_layers is None else fixed_layers)
        return cls(macs=macs, searched=tuple(searched_layers(model, fixed)), fixed=fixed)

    def searched_macs(self) -> int:
        return sum(self.macs[n] for n in self.searched)

    def policy_bops(self, policy: Policy, fixed_bits: LayerBits = LayerBits(8, 8)) -> tuple[int, int]:
        """(searched-layer BOPs, total BOPs) of ``policy``."""
        searched = sum(self.macs[n] * b.w_bits * b.a_bits for n, b in policy.layers.items())
        fixed = sum(
            self.macs[n] * policy.fixed_layers.get(n, fixed_bits).w_bits * policy.fixed_layers.get(n, fixed_bits).a_bits
            for n in self.fixed
        )
        return searched, searched + fixed

    def uniform_policy(self, model_name: str, w_bits: int, a_bits: int, fixed_bits: LayerBits | None = None) -> Policy:
        """Every searched layer at (w_bits, a_bits); fixed layers at ``fixed_bits`` (default: the same)."""
        fixed = fixed_bits or LayerBits(w_bits, a_bits)
        return Policy(
            model=model_name,
            layers={n: LayerBits(w_bits, a_bits) for n in self.searched},
            fixed_layers={n: fixed for n in self.fixed},
        )

    def uniform_bops(self, w_bits: int, a_bits: int) -> int:
        """Total BOPs with every layer, fixed ones included, at (w_bits, a_bits)."""
        return sum(m * w_bits * a_bits for n, m in self.macs.items() if n in self.searched or n in self.fixed)

    def expected_bops(self, supernet: nn.Module) -> torch.Tensor:
        """Expected searched-layer BOPs under softmax(α), differentiable in α."""
        terms = []
        for name, layer in supernet_layers(supernet).items():
            e_w, e_a = layer.expected_bits()
            terms.append(self.macs[name] * e_w * e_a)
        return torch.stack(terms).sum()


def format_bops(bops: float) -> str:
    """BOPs in G with enough digits for small networks: 15.31 G, 0.02074 G."""
    value = bops / GIGA
    return f"{value:.2f} G" if value >= 1 else f"{value:.4g} G"
