"""BOPs of a supernet: expected under softmax(α) (differentiable) and of its argmax policy.

The search loss (:class:`~gmpq_ray.core.objective.loss.GMPQObjective`) calls both every step;
they stay on the α's device and never read a value back to the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from gmpq_ray.core.quant.convert import supernet_layers

if TYPE_CHECKING:
    from gmpq_ray.core.cost.bops import CostModel

ExpectedBits = list[tuple[torch.Tensor, torch.Tensor]]


class SupernetBops:
    """The searched-layer BOPs of one supernet under a cost model.

    Args:
        cost: the deployment cost model (MACs per searched layer).
        supernet: a model after :func:`~gmpq_ray.core.quant.convert.to_supernet`.

    Example::

        bops = SupernetBops(cost, supernet)
        expected, bits = bops.expected()   # a differentiable tensor, and each layer's E[b_w], E[b_a]
        bops.argmax()                      # the argmax policy's searched BOPs, as a tensor
    """

    def __init__(self, cost: CostModel, supernet: nn.Module) -> None:
        self.layers = list(supernet_layers(supernet).items())
        self.macs = [float(cost.macs[name]) for name, _ in self.layers]

    def expected(self) -> tuple[torch.Tensor, ExpectedBits]:
        """``sum_l macs_l * E[b_w,l] * E[b_a,l]`` under softmax(α), and the expected bits per layer."""
        bits = [layer.expected_bits() for _, layer in self.layers]
        total = sum(macs * w * a for macs, (w, a) in zip(self.macs, bits))
        return total, bits

    def argmax(self) -> torch.Tensor:
        """Searched-layer BOPs of the argmax policy, as a tensor on the α's device (no host sync)."""
        with torch.no_grad():
            return sum(macs * layer.w_bit_values[layer.alpha_w.argmax()] * layer.a_bit_values[layer.alpha_a.argmax()]
                       for macs, (_, layer) in zip(self.macs, self.layers))
