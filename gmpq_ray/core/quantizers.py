"""Fake quantizers for weights and activations, built on PyTorch's fake-quantize operators.

* Weights: signed, symmetric, per output channel. The clipping range of channel ``c`` is
  ``min(max|w_c|, k_b * std(w_c))`` where ``k_b`` is the MSE-optimal clip of a Gaussian for
  ``b`` bits: at 2 to 3 bits the max-abs range would round most weights to zero. The gradient
  is the straight-through estimator of ``torch.fake_quantize_per_channel_affine``.
* Activations: unsigned by default (inputs of searched convs follow a ReLU) with one learnable
  clipping value per layer, shared by every candidate bitwidth (PACT/LSQ style gradient).
  Inputs found signed during calibration (MobileNetV2's linear bottlenecks) switch the layer to
  a signed, symmetric grid.

The activation mixture of the supernet is a custom autograd function: it keeps only the input
and the mixed output for the backward pass (the output is also the conv's saved input, so it
costs no extra memory) and recomputes each branch in the backward pass, instead of keeping one
activation-sized copy per candidate bitwidth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

FULL_PRECISION = 32

# MSE-optimal clip (in standard deviations) of a symmetric uniform quantizer on N(0, 1) with
# 2**(b-1) - 1 positive levels, found by a grid search over 2 M samples.
_GAUSSIAN_CLIP = {2: 1.22, 3: 1.95, 4: 2.47, 5: 2.90, 6: 3.27, 7: 3.59, 8: 3.88}


def signed_levels(bits: int) -> int:
    """Largest integer level of a symmetric signed grid of ``bits`` bits (narrow range)."""
    return 2 ** (bits - 1) - 1


def unsigned_levels(bits: int) -> int:
    """Largest integer level of an unsigned grid of ``bits`` bits."""
    return 2**bits - 1


def weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel step size of ``bits``-bit symmetric weight quantization."""
    flat = weight.detach().flatten(1)
    max_abs = flat.abs().amax(dim=1)
    if flat.shape[1] > 1:
        clip = torch.minimum(max_abs, _GAUSSIAN_CLIP[bits] * flat.std(dim=1))
    else:
        clip = max_abs
    return (clip / signed_levels(bits)).clamp_min(1e-8).float()


def quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantize ``weight`` per output channel to ``bits`` bits (32: unchanged).

    Example:
        >>> w = torch.randn(4, 3, 3, 3)
        >>> int(quantize_weight(w, 2)[0].unique().numel()) <= 4
        True
    """
    if bits >= FULL_PRECISION:
        return weight
    scale = weight_scale(weight, bits)
    zero_point = torch.zeros(scale.shape, dtype=torch.int32, device=weight.device)
    levels = signed_levels(bits)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -levels, levels)


def mix_weights(weight: torch.Tensor, bits: Sequence[int], probs: torch.Tensor) -> torch.Tensor:
    """``sum_i probs[i] * quantize_weight(weight, bits[i])``, one tensor for one convolution.

    Weights are small, so plain autograd (which keeps each branch for the gradient of
    ``probs``) is cheaper here than recomputation.
    """
    branches = torch.stack([quantize_weight(weight, b) for b in bits])
    return torch.tensordot(probs.to(branches.dtype), branches, dims=1)


class _MixedActivationQuant(torch.autograd.Function):
    """Softmax-weighted mixture of fake-quantized copies of one activation tensor."""

    @staticmethod
    def forward(ctx, x, clip, probs, levels: tuple[int, ...], signed: bool, grad_scale: float):
        clip = clip.abs() + 1e-8
        zero_point = torch.zeros((), dtype=torch.int32, device=x.device)
        out = None
        for i, top in enumerate(levels):
            scale = (clip / top).float()
            branch = torch.fake_quantize_per_tensor_affine(
                x, scale, zero_point, -top if signed else 0, top
            )
            out = branch * probs[i] if out is None else out.addcmul_(branch, probs[i])
        ctx.save_for_backward(x, clip, probs, out)
        ctx.levels, ctx.signed, ctx.grad_scale = levels, signed, grad_scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, clip, probs, out = ctx.saved_tensors
        levels, signed = ctx.levels, ctx.signed
        low = -clip if signed else torch.zeros_like(clip)
        inside = (x >= low) & (x <= clip)
        grad_x = grad_out * inside if ctx.needs_input_grad[0] else None

        grad_probs = None
        if ctx.needs_input_grad[2]:
            zero_point = torch.zeros((), dtype=torch.int32, device=x.device)
            flat_grad = grad_out.reshape(-1)
            grads = []
            for top in levels:
                branch = torch.fake_quantize_per_tensor_affine(
                    x, (clip / top).float(), zero_point, -top if signed else 0, top
                )
                grads.append(torch.dot(flat_grad, branch.reshape(-1)))
            grad_probs = torch.stack(grads).to(probs.dtype)

        grad_clip = None
        if ctx.needs_input_grad[1]:
            # d(mixture)/d(clip): (y - x) / clip inside the range (the rounding residue of
            # every branch, mixed), +1 above it and -1 below it (signed grids only).
            residue = torch.where(inside, (out - x) / clip, torch.sign(x) * (x != 0))
            if not signed:
                residue = torch.where(x < 0, torch.zeros_like(residue), residue)
            grad_clip = (grad_out * residue).sum().reshape(clip.shape) * ctx.grad_scale
        return grad_x, grad_clip, grad_probs, None, None, None


class ActivationQuantizer(nn.Module):
    """Quantizes a layer's input activation at one or several candidate bitwidths.

    One learnable clipping value is shared by all candidates. Call :meth:`observe` (through
    :func:`gmpq_ray.core.calibration.calibrate`) to set the clip from data before training.

    Args:
        init_clip: starting clip before calibration.
    """

    def __init__(self, init_clip: float = 6.0) -> None:
        super().__init__()
        self.clip = nn.Parameter(torch.tensor(float(init_clip)))
        self.register_buffer("signed", torch.tensor(False))
        self.observing = False
        self._observed: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, bits: Sequence[int], probs: torch.Tensor | None = None) -> torch.Tensor:
        """Quantize ``x`` at ``bits`` mixed with ``probs`` (one bitwidth: ``probs`` may be None)."""
        if self.observing:
            self._record(x)
            return x
        if len(bits) == 1 and bits[0] >= FULL_PRECISION:
            return x
        if any(b >= FULL_PRECISION for b in bits):
            raise ValueError("32-bit (full precision) cannot be mixed with quantized candidates")
        signed = bool(self.signed)
        levels = tuple(signed_levels(b) if signed else unsigned_levels(b) for b in bits)
        if probs is None:
            probs = torch.ones(1, device=x.device, dtype=x.dtype)
        # LSQ's gradient scale keeps the clip's step size comparable to the weights'.
        per_sample = max(1, x[0].numel())
        grad_scale = 1.0 / math.sqrt(per_sample * max(levels))
        return _MixedActivationQuant.apply(x, self.clip, probs.to(x.dtype), levels, signed, grad_scale)

    def _record(self, x: torch.Tensor) -> None:
        sample = x.detach().flatten().float()
        if sample.numel() > 200_000:
            index = torch.randint(0, sample.numel(), (200_000,), device=sample.device)
            sample = sample[index]
        self._observed.append(sample)

    def start_observing(self) -> None:
        """Pass activations through unchanged and record them, until :meth:`finish_observing`."""
        self.observing = True
        self._observed = []

    @torch.no_grad()
    def finish_observing(self, quantile: float = 0.999) -> None:
        """Set the clip to a high quantile of |x| and the grid's sign from what was observed."""
        self.observing = False
        if not self._observed:
            return
        values = torch.cat(self._observed)
        self._observed = []
        signed = bool((values < 0).any()) and float(values.min()) < -1e-3 * float(values.abs().max())
        self.signed.fill_(signed)
        magnitude = values.abs() if signed else values.clamp_min(0)
        clip = torch.quantile(magnitude, quantile) if magnitude.numel() > 1 else magnitude.max()
        self.clip.fill_(max(float(clip), 1e-3))
