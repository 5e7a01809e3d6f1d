"""What a quantized layer holds, as integers: the numbers the ONNX graph stores.

Pure PyTorch (no onnx import). The values come from the quantizers themselves
(:func:`~gmpq_ray.core.quant.grid.weight_scale`, :func:`~gmpq_ray.core.quant.functions.quantize_weight`
and the activation quantizer's clip), so ``codes * scale`` is exactly the fake-quantized weight
the PyTorch network convolves with, and the activation grid is the one it rounds to.

* Weights: signed, symmetric, per output channel, narrow range: integers in ``[-n, n]`` with
  ``n = 2**(b-1) - 1`` (``2**b - 1`` levels at most), zero point 0, one float32 scale a channel.
* Activations: unsigned ``[0, 2**b - 1]`` after a ReLU, or (inputs found signed during
  calibration) signed ``[-n, n]``; one float32 scale ``(|clip| + 1e-8) / levels``, zero point 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.policy import FULL_PRECISION_BITS, MAX_BITS, MIN_BITS
from gmpq_ray.core.quant.functions import quantize_weight
from gmpq_ray.core.quant.grid import signed_levels, unsigned_levels, weight_scale
from gmpq_ray.core.quant.layers import MixedPrecisionConv2d, QuantConv2d, QuantLinear


@dataclass(frozen=True)
class WeightCodes:
    """A layer's weight as integers ``codes`` (int8 tensor, the weight's shape) times ``scales`` (float32, one a channel)."""

    bits: int
    codes: torch.Tensor
    scales: torch.Tensor

    @property
    def max_level(self) -> int:
        return signed_levels(self.bits)


@dataclass(frozen=True)
class ActivationGrid:
    """The grid a layer's input is rounded to: ``scale * q`` with integer ``q`` in ``[low, high]``."""

    bits: int
    signed: bool
    scale: float
    low: int
    high: int


def check_exportable(name: str, layer: nn.Module) -> None:
    """Raise a :class:`UserInputError` unless ``layer``'s bits have an ONNX form (2 to 8 bits, or 32).

    A supernet layer (several candidate bitwidths mixed) has none: finetune a policy first.
    """
    if isinstance(layer, MixedPrecisionConv2d):
        raise UserInputError(f"layer {name} is a supernet layer (mixed candidate bits); export a finetuned policy, not a supernet")
    for kind in ("w_bits", "a_bits"):
        bits = getattr(layer, kind)
        if not (isinstance(bits, int) and (MIN_BITS <= bits <= MAX_BITS or bits == FULL_PRECISION_BITS)):
            raise UserInputError(
                f"layer {name}: {kind}={bits!r} cannot be exported; ONNX Q/DQ here holds {MIN_BITS} to {MAX_BITS} bits "
                f"(int8/uint8 containers) or {FULL_PRECISION_BITS} for full precision"
            )


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's fixed-policy quantized layers (and supernet layers, which :func:`check_exportable` refuses) by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear, MixedPrecisionConv2d))}


@torch.no_grad()
def weight_codes(layer: QuantConv2d | QuantLinear) -> WeightCodes | None:
    """The integer form of ``layer``'s quantized weight (None for a 32-bit weight)."""
    bits = layer.w_bits
    if bits >= FULL_PRECISION_BITS:
        return None
    weight = layer.weight.detach().float().cpu()
    scales = weight_scale(weight, bits)
    fake = quantize_weight(weight, bits)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    # fake = round(clamp(w / s)) * s in float32, so fake / s is that integer to within an ulp.
    level = signed_levels(bits)
    codes = torch.round(fake / scales.view(shape)).clamp_(-level, level).to(torch.int8)
    return WeightCodes(bits, codes, scales.float())


@torch.no_grad()
def activation_grid(layer: QuantConv2d | QuantLinear) -> ActivationGrid | None:
    """The grid of ``layer``'s input activation (None for a 32-bit input)."""
    bits = layer.a_bits
    if bits >= FULL_PRECISION_BITS:
        return None
    quantizer = layer.act_quant
    signed = quantizer.is_signed()
    levels = signed_levels(bits) if signed else unsigned_levels(bits)
    # The same float32 operations as the quantizer's step size (core.quant.grid.activation_scales).
    effective = quantizer.clip.detach().abs().float().cpu() + 1e-8
    scale = float(effective / torch.tensor(float(levels), dtype=torch.float32))
    return ActivationGrid(bits, signed, scale, -levels if signed else 0, levels)


def weight_storage_bytes(model: nn.Module) -> tuple[float, float, float]:
    """(bytes at the policy's bits, bytes in FP32, bytes of the per-channel float32 scales).

    Quantized layers' weights count ``bits / 8`` bytes an element; every other parameter
    (biases, batch norm, full-precision layers) 4 bytes. Activation clips are not weights.
    """
    layers = quantized_layers(model)
    quantized_ids = {id(m.weight): m.w_bits for m in layers.values() if m.w_bits < FULL_PRECISION_BITS}
    policy_bytes = fp32_bytes = scale_bytes = 0.0
    for name, parameter in model.named_parameters():
        if name.endswith("act_quant.clip"):
            continue
        fp32_bytes += 4 * parameter.numel()
        bits = quantized_ids.get(id(parameter))
        if bits is None:
            policy_bytes += 4 * parameter.numel()
        else:
            policy_bytes += parameter.numel() * bits / 8
            scale_bytes += 4 * parameter.shape[0]
    return policy_bytes, fp32_bytes, scale_bytes
