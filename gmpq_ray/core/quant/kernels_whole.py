"""Whole-tensor quantizer kernels: the backend for CUDA, dtypes other than float32, and double
backward (``create_graph``).

Plain tensor ops over the whole input, one branch per candidate; nothing reads a device tensor
back to the host, and the backward passes are differentiable in ``grad_out``. Each function has
the signature of its pass in :mod:`gmpq_ray.core.quant.backends`.
"""

from __future__ import annotations

import torch

from gmpq_ray.core.policy import FULL_PRECISION_BITS
from gmpq_ray.core.quant.grid import signed_levels, weight_scales
from gmpq_ray.core.quant.layout import flat_dot


def _channel_view(t: torch.Tensor, dims: int) -> torch.Tensor:
    """(K, C) -> (K, C, 1, ...) broadcasting against a (C, ...) weight of ``dims`` dims."""
    return t.view(t.shape + (1,) * (dims - 1))


def weight_forward(w, probs, bits):
    quantized = tuple(b for b in bits if b < FULL_PRECISION_BITS)
    scales = weight_scales(w, quantized)
    inverse = _channel_view(scales.reciprocal().to(w.dtype), w.dim())
    coefficients = _channel_view(scales.to(w.dtype), w.dim())
    out, j = None, 0
    for i, b in enumerate(bits):
        if b >= FULL_PRECISION_BITS:
            branch = w if probs is None else w * probs[i]
        else:
            levels = signed_levels(b)
            coefficient = coefficients[j] if probs is None else coefficients[j] * probs[i]
            branch = (w * inverse[j]).clamp_(-levels, levels).round_().mul_(coefficient)
            j += 1
        out = branch if out is None else out.add_(branch)
    return out, scales


def weight_backward(w, grad_out, probs, bits, scales, need_weight, need_probs):
    """Whole-tensor backward; differentiable in ``grad_out`` (double backward through a head)."""
    inverse = _channel_view(scales.reciprocal().to(w.dtype), w.dim())
    step = _channel_view(scales.to(w.dtype), w.dim())
    grad_weight, grad_probs, j = None, [], 0
    for i, b in enumerate(bits):
        if b >= FULL_PRECISION_BITS:
            masked, branch = grad_out, w
        else:
            levels = signed_levels(b)
            scaled = w * inverse[j]
            branch = scaled.clamp(-levels, levels).round_().mul_(step[j])
            # The fake-quantize STE: |round(w / s)| <= n, i.e. |w / s| < n + 1/2 (n is odd, so
            # a tie at n + 1/2 rounds to the even n + 1, off the grid).
            masked = torch.ops.aten.hardtanh_backward(grad_out, scaled, -levels - 0.5, levels + 0.5) if need_weight else None
            j += 1
        if need_weight:
            term = masked if probs is None else masked * probs[i].to(grad_out.dtype)
            grad_weight = term if grad_weight is None else grad_weight + term
        if need_probs:
            grad_probs.append((grad_out * branch).sum())
    grad_probs = torch.stack(grad_probs).to(probs.dtype) if need_probs else None
    return grad_weight, grad_probs


def activation_forward(x, effective, scales, coefficients, levels, signed):
    inverse = scales.reciprocal().to(x.dtype)
    coefficients = coefficients.to(x.dtype)
    out, buffer = None, None
    for i, top in enumerate(levels):
        target = torch.empty_like(x) if out is None else buffer
        branch = torch.mul(x, inverse[i], out=target).clamp_(-top if signed else 0, top).round_()
        if out is None:
            out = branch.mul_(coefficients[i])
            buffer = torch.empty_like(x) if len(levels) > 1 else None
        else:
            out.addcmul_(branch, coefficients[i])
    return out


def activation_backward(x, grad_out, effective, scales, levels, signed, need_mask, need_dots, need_x_dot):
    """Whole-tensor backward without host reads; differentiable in ``grad_out`` (double backward)."""
    grad_x = dots = x_dot = None
    if need_mask:
        low = -effective if signed else torch.zeros_like(effective)
        inside = (x >= low) & (x <= effective)
        grad_x = torch.where(inside, grad_out, torch.zeros((), dtype=grad_out.dtype, device=grad_out.device))
        if need_x_dot:
            x_dot = flat_dot(grad_x, x).float()
    if need_dots:
        inverse = scales.reciprocal().to(x.dtype)
        parts = []
        for i, top in enumerate(levels):
            with torch.no_grad():
                rounded = (x * inverse[i]).clamp_(-top if signed else 0, top).round_()
            parts.append(flat_dot(grad_out, rounded))
        dots = torch.stack(parts).float()
    return grad_x, dots, x_dot
