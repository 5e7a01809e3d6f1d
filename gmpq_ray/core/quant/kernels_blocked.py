"""Cache-blocked quantizer kernels: the backend for float32 CPU tensors outside double backward.

Eager PyTorch cannot fuse the elementwise ops of a branch, and on CPU each op streams the whole
tensor through memory. These kernels run both passes block by block, all candidates of a block at
once, so that the block, its K branches and the output stay in the core's L2 cache: cache
blocking recovers most of what fusion would. Each public function has the signature of its pass in
:mod:`gmpq_ray.core.quant.backends`.
"""

from __future__ import annotations

import torch

from gmpq_ray.core.policy import FULL_PRECISION_BITS
from gmpq_ray.core.quant import layout
from gmpq_ray.core.quant.grid import signed_levels, weight_scales

# Elements of input per CPU thread in one block of an activation (weights: twice as many):
# the block, its K branches (K times as many) and its slice of the output stay in a 2 MB L2
# cache for K up to 4. Measured on a 2-core Xeon: 2^15 to 2^16 best, 2^13 and 2^18 1.4x slower.
CPU_BLOCK_ELEMENTS = 1 << 15


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the blocked CPU kernels apply (float32 CPU tensors, not under create_graph)."""
    return not torch.is_grad_enabled() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _block_elements(scale: int = 1) -> int:
    return scale * CPU_BLOCK_ELEMENTS * max(1, torch.get_num_threads())


class _Scratch:
    """Reusable (K, n) and (n,) scratch views for blocks of n elements (the last block is shorter)."""

    def __init__(self, count: int, size: int, flat: bool = True) -> None:
        self.count = count
        self.branches = torch.empty(count * size)
        self.flat = torch.empty(size) if flat else None
        self.views: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}

    def __call__(self, length: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        views = self.views.get(length)
        if views is None:
            flat = None if self.flat is None else self.flat[:length]
            views = self.views[length] = (flat, self.branches[: self.count * length].view(self.count, length))
        return views


def _weight_blocks(w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The (C, J) matrix of ``w`` and the rows of its near-equal blocks."""
    matrix = w.reshape(w.shape[0], -1)
    channels = matrix.shape[0]
    rows = max(1, _block_elements(2) // max(1, matrix.shape[1]))
    rows = -(-channels // -(-channels // rows))
    return matrix, rows


def weight_forward(w, probs, bits):
    quantized = tuple(b for b in bits if b < FULL_PRECISION_BITS)
    matrix, rows = _weight_blocks(w)
    channels, columns = matrix.shape
    count = len(quantized)
    out = torch.empty_like(matrix)
    scales = torch.empty(count, channels)
    blocks = zip(matrix.split(rows), out.split(rows), scales.split(rows, dim=1))
    scratch = _Scratch(count, rows * columns, flat=False) if count else None
    bounds = [signed_levels(b) for b in quantized]
    q_index = [i for i, b in enumerate(bits) if b < FULL_PRECISION_BITS]
    q_probs = None if probs is None else probs.float()[q_index].view(count, 1, 1)
    ones = torch.ones(1, count)
    for block, out_block, scales_block in blocks:
        size = block.shape[0]
        if count:
            block_scales = weight_scales(block, quantized)
            scales_block.copy_(block_scales)
            values = scratch(size * columns)[1].view(count, size, columns)
            torch.mul(block, block_scales.reciprocal().unsqueeze(2), out=values)
            for j, levels in enumerate(bounds):
                values[j].clamp_(-levels, levels)
            values.round_()
            steps = block_scales.unsqueeze(2)
            if count == 1 and probs is None:
                torch.mul(values[0], steps[0], out=out_block)
            else:
                values.mul_(steps if q_probs is None else steps * q_probs)
                torch.mm(ones, values.view(count, -1), out=out_block.view(1, -1))
        else:
            out_block.zero_()
        for i, b in enumerate(bits):
            if b >= FULL_PRECISION_BITS:
                out_block.add_(block if probs is None else block * probs[i])
    return out.view(w.shape), scales


def weight_backward(w, grad_out, probs, bits, scales, need_weight, need_probs):
    quantized = tuple(b for b in bits if b < FULL_PRECISION_BITS)
    count = len(quantized)
    matrix, rows = _weight_blocks(w)
    gradient = grad_out.reshape(matrix.shape)
    channels, columns = matrix.shape
    bounds = [signed_levels(b) for b in quantized]
    q_index = [i for i, b in enumerate(bits) if b < FULL_PRECISION_BITS]
    single = count == 1 and probs is None
    q_probs = None if probs is None else probs.float()[q_index].unsqueeze(0)
    grad_weight = torch.empty_like(matrix) if need_weight else None
    blocks = list(zip(
        matrix.split(rows), gradient.split(rows),
        grad_weight.split(rows) if need_weight else [None] * -(-channels // rows),
        scales.reciprocal().unsqueeze(2).split(rows, dim=1), scales.unsqueeze(2).split(rows, dim=1),
    ))
    scratch = _Scratch(count, rows * columns, flat=False) if count else None
    masks = _Scratch(count, rows * columns, flat=False) if count and need_weight and not single else None
    partial = [[] for _ in bits]
    for block, grad_block, out_block, inverse, steps in blocks:
        size = block.shape[0]
        if count:
            values = scratch(size * columns)[1].view(count, size, columns)
            torch.mul(block, inverse, out=values)
        if need_weight:
            if single:
                torch.ops.aten.hardtanh_backward.grad_input(
                    grad_block, values[0], -bounds[0] - 0.5, bounds[0] + 0.5, grad_input=out_block
                )
            elif count:
                masked = masks(size * columns)[1]
                for j, levels in enumerate(bounds):
                    # The fake-quantize STE, as in kernels_whole.weight_backward.
                    torch.ops.aten.hardtanh_backward.grad_input(
                        grad_block, values[j], -levels - 0.5, levels + 0.5, grad_input=masked[j].view(size, columns)
                    )
                # sum_j p_j * masked_j: one (1, K) x (K, rows * J) product.
                torch.mm(q_probs, masked, out=out_block.view(1, -1))
            else:
                out_block.zero_()
            for i, b in enumerate(bits):
                if b >= FULL_PRECISION_BITS:
                    out_block.addcmul_(grad_block, probs[i].to(grad_block.dtype))
        if need_probs:
            if count:
                for j, levels in enumerate(bounds):
                    values[j].clamp_(-levels, levels)
                values.round_().mul_(steps).mul_(grad_block)
                if len(blocks) == 1:  # branch by branch: the products and sums of plain autograd
                    for j, i in enumerate(q_index):
                        partial[i].append(values[j].sum())
                else:
                    for i, total in zip(q_index, values.view(count, -1).sum(1).unbind(0)):
                        partial[i].append(total)
            for i, b in enumerate(bits):
                if b >= FULL_PRECISION_BITS:
                    partial[i].append((grad_block * block).sum())
    grad_probs = None
    if need_probs:
        grad_probs = torch.stack([parts[0] if len(parts) == 1 else torch.stack(parts).sum() for parts in partial])
        grad_probs = grad_probs.to(probs.dtype)
    return (grad_weight.view(w.shape) if need_weight else None), grad_probs



def activation_forward(x, effective, scales, coefficients, levels, signed):
    """Clamps each block once: ``round(clamp(x, lo, c) / s)`` equals ``clamp(round(x / s), lo/s, n)``
    (``c * (1 / s)`` is within a few ulps of the integer ``n``)."""
    x, clip = layout.dense(x), float(effective)
    low = -clip if signed else 0.0
    out = torch.empty_like(x)
    size = max(1, min(x.numel(), _block_elements()))
    sources, targets = layout.flat(x).split(size), layout.flat(out).view(1, -1).split(size, dim=1)
    inverse = scales.reciprocal()
    count = scales.numel()
    if count == 1:
        for source, target in zip(sources, targets):
            torch.clamp(source, low, clip, out=target[0]).mul_(inverse[0]).round_().mul_(coefficients[0])
        return out
    scratch = _Scratch(count, size)
    inverse, coefficients = inverse.unsqueeze(1), coefficients.unsqueeze(0)
    for source, target in zip(sources, targets):
        clamped, values = scratch(source.numel())
        torch.mul(torch.clamp(source, low, clip, out=clamped), inverse, out=values).round_()
        torch.mm(coefficients, values, out=target)
    return out


def activation_backward(x, grad_out, effective, scales, levels, signed, need_mask, need_dots, need_x_dot):
    x, clip = layout.dense(x), float(effective)
    low = -clip if signed else 0.0
    below, above = layout.inclusive_bounds(low, clip)
    size = max(1, min(x.numel(), _block_elements()))
    sources, gradients = layout.flat(x).split(size), layout.flat(layout.like(grad_out, x)).split(size)
    blocks = len(sources)
    grad_x = torch.empty_like(x) if need_mask else None
    masked_blocks = layout.flat(grad_x).split(size) if need_mask else [None] * blocks
    x_dots = torch.empty(blocks) if need_x_dot else None
    x_dot_blocks = x_dots.unbind(0) if need_x_dot else [None] * blocks
    count = scales.numel()
    dots = torch.empty(blocks, count) if need_dots else None
    dot_blocks = dots.unbind(0) if need_dots else [None] * blocks
    scratch = _Scratch(count, size) if need_dots else None
    inverse = scales.reciprocal().unsqueeze(1)
    for source, gradient, masked, x_dot, dot in zip(sources, gradients, masked_blocks, x_dot_blocks, dot_blocks):
        if need_mask:
            torch.ops.aten.hardtanh_backward.grad_input(gradient, source, below, above, grad_input=masked)
            if need_x_dot:
                torch.dot(masked, source, out=x_dot)
        if need_dots:
            clamped, values = scratch(source.numel())
            torch.mul(torch.clamp(source, low, clip, out=clamped), inverse, out=values).round_()
            torch.mv(values, gradient, out=dot)
    return (
        grad_x,
        dots.sum(0) if need_dots else None,
        x_dots.sum() if need_x_dot else None,
    )
