"""Fake quantizers for weights and activations, with PyTorch's fake-quantize semantics.

* Weights: signed, symmetric, per output channel (the clipping range is in
  :mod:`~gmpq_ray.core.quant.grid`). Values and gradient are those of
  ``torch.fake_quantize_per_channel_affine`` (straight-through where the rounded value lies on
  the grid).
* Activations: unsigned by default (inputs of searched convs follow a ReLU) with one learnable
  clipping value per layer, shared by every candidate bitwidth (PACT/LSQ style gradient).
  Inputs found signed during calibration (MobileNetV2's linear bottlenecks) switch the layer to
  a signed, symmetric grid. Values are those of ``torch.fake_quantize_per_tensor_affine``.

Each quantizer is one custom autograd function over plain tensor ops, for one bitwidth or a
mixture of several. Every backend computes what the fake-quantize operator computes, in the same
float32 operations (``round(x * (1 / s))`` clamped to the grid, times ``s``), so the values are
equal (``tests/core/quant/test_quantizer_equivalence.py``); the operators themselves are not
used because their CPU kernels are not vectorized (about 20 times slower than a multiply over
the same tensor), and because a mixture of them keeps one copy of the input per candidate.

* Forward: the branches accumulate into one output; only the input (which the ReLU before it
  keeps anyway), the probabilities and the (K, C) weight scales are saved. The weight
  statistics are computed once for all candidates.
* Backward: each branch is recomputed once, for the gradient of its probability
  ``dot(grad, Q_i)``. The input gets the straight-through mask (for weights, the mixture
  ``sum_i p_i * mask_i`` of the branches' masks). The activation clip's gradient has a closed
  form: ``(dot(grad, out) - dot(grad_x, x)) / clip`` with ``dot(grad, out) = sum_i p_i
  dot(grad, Q_i)``.
* Which kernels run each pass (compiled, cache-blocked on CPU, or whole-tensor) is chosen once
  per pass by :func:`gmpq_ray.core.quant.backends.select`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gmpq_ray.core.policy import FULL_PRECISION_BITS
from gmpq_ray.core.quant import backends
from gmpq_ray.core.quant.grid import activation_scales


class _MixedWeightQuant(torch.autograd.Function):
    """``sum_i probs[i] * fake_quantize_per_channel(weight, scale_i, -n_i, n_i)``.

    ``probs`` None: one candidate, no mixing. A 32-bit candidate contributes the weight itself.
    Saves the weight, the probabilities and the (K, C) scales of the quantized candidates.
    """

    @staticmethod
    def forward(ctx, weight, probs, bits: tuple[int, ...]):
        w = weight.detach()
        out, scales = backends.run(backends.select(bits, w), "weight_forward", w, probs, bits)
        ctx.bits = bits
        ctx.save_for_backward(weight, probs, scales)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        weight, probs, scales = ctx.saved_tensors
        need_weight, need_probs = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.detach()
        grad_weight, grad_probs = backends.run(
            backends.select(ctx.bits, weight, grad_out), "weight_backward",
            w, grad_out, probs, ctx.bits, scales, need_weight, need_probs,
        )
        return grad_weight, grad_probs, None


class _MixedActivationQuant(torch.autograd.Function):
    """Softmax-weighted mixture of fake-quantized copies of one activation tensor.

    ``levels`` are the grids' largest integers (``[0, n]``, or ``[-n, n]`` when ``signed``);
    ``probs`` may be None for one bitwidth. Keeps only the input for the backward pass.
    """

    @staticmethod
    def forward(ctx, x, clip, probs, levels: tuple[int, ...], signed: bool, grad_scale: float):
        effective, scales = activation_scales(clip, levels)
        coefficients = scales if probs is None else scales * probs.float()
        out = backends.run(
            backends.select(None, x), "activation_forward", x.detach(), effective, scales, coefficients, levels, signed
        )
        ctx.levels, ctx.signed, ctx.grad_scale = levels, signed, grad_scale
        ctx.save_for_backward(x, clip, probs)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, clip, probs = ctx.saved_tensors
        levels, signed = ctx.levels, ctx.signed
        need_x, need_clip, need_probs = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        effective, scales = activation_scales(clip, levels)
        x_value = x.detach()
        grad_x, dots, x_dot = backends.run(
            backends.select(None, x_value, grad_out), "activation_backward",
            x_value, grad_out, effective, scales, levels, signed,
            need_x or need_clip, need_probs or need_clip, need_clip,
        )
        grad_probs = grad_clip = None
        if dots is not None:
            # grad of probs[i] = dot(grad, branch_i) = scale_i * dot(grad, round(x / scale_i))
            dots = dots * scales
            if need_probs:
                grad_probs = dots.to(probs.dtype)
        if need_clip:
            # d out / d clip = (out - x * inside) / clip, elementwise (straight-through rounding;
            # +-1 where clipped), and dot(grad, out) = sum_i p_i dot(grad, branch_i).
            grad_dot_out = dots.sum() if probs is None else (probs.float() * dots).sum()
            grad_clip = (grad_dot_out - x_dot) / effective
            grad_clip = (grad_clip * torch.sign(clip.detach()) * ctx.grad_scale).to(clip.dtype).reshape(clip.shape)
        return (grad_x if need_x else None), grad_clip, grad_probs, None, None, None


def quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantize ``weight`` per output channel to ``bits`` bits (32: unchanged).

    Equal, in value and gradient, to ``torch.fake_quantize_per_channel_affine(weight,
    weight_scale(weight, bits), 0, 0, -n, n)`` with ``n = 2**(bits-1) - 1``.

    Example:
        >>> w = torch.randn(4, 3, 3, 3)
        >>> int(quantize_weight(w, 2)[0].unique().numel()) <= 4
        True
    """
    if bits >= FULL_PRECISION_BITS:
        return weight
    return _MixedWeightQuant.apply(weight, None, (int(bits),))


def mix_weights(weight: torch.Tensor, bits: Sequence[int], probs: torch.Tensor) -> torch.Tensor:
    """``sum_i probs[i] * quantize_weight(weight, bits[i])``, one tensor for one convolution.

    The weight statistics are computed once for all candidates, and no per-candidate copy of
    the weight is kept for the backward pass.
    """
    return _MixedWeightQuant.apply(weight, probs.to(weight.dtype), tuple(int(b) for b in bits))


def mix_activations(
    x: torch.Tensor, clip: torch.Tensor, probs: torch.Tensor | None, levels: tuple[int, ...], signed: bool, grad_scale: float
) -> torch.Tensor:
    """``sum_i probs[i] * fake_quantize_per_tensor(x, clip / levels[i])`` with the clip's LSQ
    gradient scaled by ``grad_scale`` (one level: ``probs`` may be None). Used by
    :class:`~gmpq_ray.core.quant.activation.ActivationQuantizer`."""
    return _MixedActivationQuant.apply(x, clip, probs, levels, signed, grad_scale)
