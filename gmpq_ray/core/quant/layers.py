"""Quantized layers: the fixed-policy conv/linear and the supernet (mixed-precision) conv.

All of them subclass the PyTorch layer they replace, so a module swap keeps parameter names
(``weight``, ``bias``) and FP state dicts load into them unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gmpq_ray.core.policy import LayerBits
from gmpq_ray.core.quant.activation import ActivationQuantizer
from gmpq_ray.core.quant.functions import mix_weights, quantize_weight


class QuantConv2d(nn.Conv2d):
    """A convolution with fixed weight and input-activation bitwidths (32: not quantized)."""

    def __init__(self, *args, w_bits: int = 8, a_bits: int = 8, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.w_bits, self.a_bits = w_bits, a_bits
        self.act_quant = ActivationQuantizer().to(self.weight.device)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: LayerBits) -> QuantConv2d:
        """Wrap ``conv``'s parameters (shared, not copied) at the given bits."""
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
            w_bits=bits.w_bits, a_bits=bits.a_bits, device=conv.weight.device,
        )
        layer.weight, layer.bias = conv.weight, conv.bias
        return layer

    def quantized_weight(self) -> torch.Tensor:
        return quantize_weight(self.weight, self.w_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_quant(x, (self.a_bits,))
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(nn.Linear):
    """A linear layer with fixed weight and input-activation bitwidths (32: not quantized)."""

    def __init__(self, *args, w_bits: int = 8, a_bits: int = 8, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.w_bits, self.a_bits = w_bits, a_bits
        self.act_quant = ActivationQuantizer().to(self.weight.device)

    @classmethod
    def from_float(cls, linear: nn.Linear, bits: LayerBits) -> QuantLinear:
        layer = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            w_bits=bits.w_bits, a_bits=bits.a_bits, device=linear.weight.device,
        )
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer

    def quantized_weight(self) -> torch.Tensor:
        return quantize_weight(self.weight, self.w_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act_quant(x, (self.a_bits,)), self.quantized_weight(), self.bias)


class MixedPrecisionConv2d(nn.Conv2d):
    """The supernet layer: one shared FP weight, α over weight bits and over activation bits.

    Forward: the input is quantized at every activation candidate and mixed with
    ``softmax(alpha_a)``, the weight at every weight candidate and mixed with
    ``softmax(alpha_w)``; one convolution runs on the two mixtures. :attr:`chosen` pins the layer
    to one discrete choice (to evaluate a derived policy with the supernet's weights).
    """

    def __init__(self, *args, w_candidates: Sequence[int], a_candidates: Sequence[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.w_candidates = tuple(int(b) for b in w_candidates)
        self.a_candidates = tuple(int(b) for b in a_candidates)
        device = self.weight.device
        self.alpha_w = nn.Parameter(torch.zeros(len(self.w_candidates), device=device))
        self.alpha_a = nn.Parameter(torch.zeros(len(self.a_candidates), device=device))
        self.act_quant = ActivationQuantizer().to(device)
        # Buffers, so that the expected bits need no host-to-device copy every step.
        self.register_buffer("w_bit_values", torch.tensor(self.w_candidates, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("a_bit_values", torch.tensor(self.a_candidates, dtype=torch.float32, device=device), persistent=False)
        self.chosen: LayerBits | None = None

    @classmethod
    def from_float(
        cls, conv: nn.Conv2d, w_candidates: Sequence[int], a_candidates: Sequence[int]
    ) -> MixedPrecisionConv2d:
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
            w_candidates=w_candidates, a_candidates=a_candidates, device=conv.weight.device,
        )
        layer.weight, layer.bias = conv.weight, conv.bias
        return layer

    def probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``softmax(alpha_w)`` and ``softmax(alpha_a)``."""
        return self.alpha_w.softmax(0), self.alpha_a.softmax(0)

    def expected_bits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Expected weight and activation bits under softmax(α), differentiable in α."""
        p_w, p_a = self.probs()
        return (p_w * self.w_bit_values).sum(), (p_a * self.a_bit_values).sum()

    def argmax_bits(self) -> LayerBits:
        """The discrete choice with the largest α for weights and for activations."""
        return LayerBits(
            self.w_candidates[int(self.alpha_w.argmax())], self.a_candidates[int(self.alpha_a.argmax())]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.chosen is not None:
            x = self.act_quant(x, (self.chosen.a_bits,))
            weight = quantize_weight(self.weight, self.chosen.w_bits)
            return self._conv_forward(x, weight, self.bias)
        p_w, p_a = self.probs()
        x = self.act_quant(x, self.a_candidates, p_a)
        weight = mix_weights(self.weight, self.w_candidates, p_w.to(self.weight.dtype))
        return self._conv_forward(x, weight, self.bias)
