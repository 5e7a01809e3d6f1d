"""Fake quantizers for weights and activations, with PyTorch's fake-quantize semantics.

* Weights: signed, symmetric, per output channel. The clipping range of channel ``c`` is
  ``min(max|w_c|, k_b * std(w_c))`` where ``k_b`` is the MSE-optimal clip of a Gaussian for
  ``b`` bits: at 2 to 3 bits the max-abs range would round most weights to zero. Values and
  gradient are those of ``torch.fake_quantize_per_channel_affine`` (straight-through where
  the rounded value lies on the grid).
* Activations: unsigned by default (inputs of searched convs follow a ReLU) with one learnable
  clipping value per layer, shared by every candidate bitwidth (PACT/LSQ style gradient).
  Inputs found signed during calibration (MobileNetV2's linear bottlenecks) switch the layer to
  a signed, symmetric grid. Values are those of ``torch.fake_quantize_per_tensor_affine``.

Each quantizer is one custom autograd function over plain tensor ops, for one bitwidth or a
mixture of several. Every branch computes what the fake-quantize operator computes, in the same
float32 operations (``round(x * (1 / s))`` clamped to the grid, times ``s``), so the values are
equal (``tests/core/test_quantizer_equivalence.py``); the operators themselves are not used
because their CPU kernels are not vectorized (about 20 times slower than a multiply over the
same tensor), and because a mixture of them keeps one copy of the input per candidate.

* Forward: the branches accumulate into one output; only the input (which the ReLU before it
  keeps anyway), the probabilities and the (K, C) weight scales are saved. The weight
  statistics are computed once for all candidates.
* Backward: each branch is recomputed once, for the gradient of its probability
  ``dot(grad, Q_i)``. The input gets the straight-through mask (for weights, the mixture
  ``sum_i p_i * mask_i`` of the branches' masks). The activation clip's gradient has a closed
  form: ``(dot(grad, out) - dot(grad_x, x)) / clip`` with ``dot(grad, out) = sum_i p_i
  dot(grad, Q_i)``.
* On CPU (float32) both passes run block by block, all candidates of a block at once, so that
  the block, its K branches and the output stay in the core's L2 cache: eager PyTorch cannot
  fuse the elementwise ops of a branch, and cache blocking recovers most of what fusion would.
  Elsewhere (CUDA, other dtypes, double backward) whole-tensor ops are used, and nothing reads
  a device tensor back to the host.
* Compiled (:func:`use_compiled_kernels`, ``GMPQ_COMPILE_QUANTIZERS=1``, or a search's
  ``quantizer_kernels``): the same math as ``torch.compile``d kernels, one fused loop per pass;
  faster still, at the price of compiling on the first step of a process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import nn

FULL_PRECISION = 32

# MSE-optimal clip (in standard deviations) of a symmetric uniform quantizer on N(0, 1) with
# 2**(b-1) - 1 positive levels, found by a grid search over 2 M samples.
_GAUSSIAN_CLIP = {2: 1.22, 3: 1.95, 4: 2.47, 5: 2.90, 6: 3.27, 7: 3.59, 8: 3.88}

# Elements of input per CPU thread in one block of an activation (weights: twice as many):
# the block, its K branches (K times as many) and its slice of the output stay in a 2 MB L2
# cache for K up to 4. Measured on a 2-core Xeon: 2^15 to 2^16 best, 2^13 and 2^18 1.4x slower.
CPU_BLOCK_ELEMENTS = 1 << 15


def signed_levels(bits: int) -> int:
    """Largest integer level of a symmetric signed grid of ``bits`` bits (narrow range)."""
    return 2 ** (bits - 1) - 1


def unsigned_levels(bits: int) -> int:
    """Largest integer level of an unsigned grid of ``bits`` bits."""
    return 2**bits - 1


# --- helpers ----------------------------------------------------------------------------------


def _blocked_cpu(*tensors: torch.Tensor) -> bool:
    """Whether the blocked CPU kernels apply (float32 CPU tensors, not under create_graph)."""
    return not torch.is_grad_enabled() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _block_elements(scale: int = 1) -> int:
    return scale * CPU_BLOCK_ELEMENTS * max(1, torch.get_num_threads())


def _flat(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of ``t`` in memory order (dense standard layouts only), else None."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return t.permute(0, 2, 3, 4, 1).reshape(-1)
    return None


def _unflat(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_flat`: ``flat`` viewed with the shape and layout of ``like``."""
    if like.is_contiguous():
        return flat.view(like.shape)
    order = (0, 2, 3, 1) if like.dim() == 4 else (0, 2, 3, 4, 1)
    inverse = sorted(range(like.dim()), key=order.__getitem__)
    return flat.view([like.shape[i] for i in order]).permute(inverse)


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t if _flat(t) is not None else t.contiguous()


def _like(t: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of ``reference`` (a copy only when they differ)."""
    return t if t.stride() == reference.stride() else torch.empty_like(reference).copy_(t)


def _flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum(a * b)``, in one pass when both tensors share a dense layout."""
    if a.stride() == b.stride():
        flat_a, flat_b = _flat(a), _flat(b)
        if flat_a is not None and flat_b is not None:
            return torch.dot(flat_a, flat_b)
    return (a * b).sum()


def _inclusive_bounds(low: float, high: float) -> tuple[float, float]:
    """Bounds for ``hardtanh_backward`` (``low < x < high``, strict) that make it ``low <= x <= high``
    on float32 inputs."""
    bounds = torch.tensor([low, high], dtype=torch.float32)
    below, above = torch.nextafter(bounds, torch.tensor([-math.inf, math.inf])).tolist()
    return below, above


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _constant(values: tuple[float, ...], device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    """A small float32 tensor, made once per device: a copy from pageable host memory would wait
    for the device every step."""
    key = (values, device, shape)
    tensor = _CONSTANTS.get(key)
    if tensor is None:
        tensor = _CONSTANTS[key] = torch.tensor(values, dtype=torch.float32).reshape(shape).to(device)
    return tensor


# --- weights ----------------------------------------------------------------------------------


def _weight_stats(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-output-channel max |w| and standard deviation (None for one value per channel).

    The deviation is the norm of the centered rows: the same value as ``Tensor.std`` from
    vectorized passes (``std`` is a Welford reduction, 20 times slower on CPU).
    """
    flat = weight.detach().flatten(1)
    max_abs = flat.abs().amax(dim=1)
    if flat.shape[1] <= 1:
        return max_abs, None
    centered = flat - flat.mean(dim=1, keepdim=True)
    std = torch.linalg.vector_norm(centered, dim=1) / math.sqrt(flat.shape[1] - 1)
    return max_abs, std


def _scale_from_stats(max_abs: torch.Tensor, std: torch.Tensor | None, bits: int) -> torch.Tensor:
    gaussian_clip = _GAUSSIAN_CLIP.get(bits)
    clip = max_abs if std is None or gaussian_clip is None else torch.minimum(max_abs, gaussian_clip * std)
    return (clip / signed_levels(bits)).clamp_min(1e-8).float()


def weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel step size of ``bits``-bit symmetric weight quantization.

    Bitwidths above 8 clip at max |w|.
    """
    return _scale_from_stats(*_weight_stats(weight), bits)


def _weight_scales(weight: torch.Tensor, bits: tuple[int, ...]) -> torch.Tensor:
    """(K, C) step sizes of the candidates ``bits`` (all quantized) from one set of statistics.

    Row ``i`` equals ``weight_scale(weight, bits[i])``: the same float32 operations.
    """
    max_abs, std = _weight_stats(weight)
    if std is None or any(b not in _GAUSSIAN_CLIP for b in bits):
        return torch.stack([_scale_from_stats(max_abs, std, b) for b in bits])
    gaussian = _constant(tuple(_GAUSSIAN_CLIP[b] for b in bits), max_abs.device, (len(bits), 1))
    levels = _constant(tuple(float(signed_levels(b)) for b in bits), max_abs.device, (len(bits), 1))
    return torch.minimum(max_abs, gaussian * std).div_(levels).clamp_min_(1e-8).float()


class _MixedWeightQuant(torch.autograd.Function):
    """``sum_i probs[i] * fake_quantize_per_channel(weight, scale_i, -n_i, n_i)``.

    ``probs`` None: one candidate, no mixing. A 32-bit candidate contributes the weight itself.
    Saves the weight, the probabilities and the (K, C) scales of the quantized candidates.
    """

    @staticmethod
    def forward(ctx, weight, probs, bits: tuple[int, ...]):
        w = weight.detach()
        quantized = tuple(b for b in bits if b < FULL_PRECISION)
        out = None
        if _compiled_applies(bits, w):
            scales = _weight_scales(w, quantized)
            out = _run_compiled("weight_forward", w.reshape(w.shape[0], -1), scales, probs, bits)
        if out is not None:
            out = out.view(w.shape)
        elif _blocked_cpu(w):
            out, scales = _weight_forward_blocked(w, probs, bits, quantized)
        else:
            scales = _weight_scales(w, quantized)
            out = _weight_forward_whole(w, probs, bits, scales)
        ctx.bits = bits
        ctx.save_for_backward(weight, probs, scales)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        weight, probs, scales = ctx.saved_tensors
        need_weight, need_probs = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grads = None
        if _compiled_applies(ctx.bits, weight, grad_out):
            w = weight.detach()
            grads = _run_compiled(
                "weight_backward",
                w.reshape(w.shape[0], -1), grad_out.reshape(w.shape[0], -1), scales, probs, ctx.bits, need_weight, need_probs,
            )
        if grads is not None:
            grad_weight, grad_probs = grads
            if grad_weight is not None:
                grad_weight = grad_weight.view(w.shape)
            if grad_probs is not None:
                grad_probs = grad_probs.to(probs.dtype)
        elif _blocked_cpu(weight, grad_out):
            grad_weight, grad_probs = _weight_backward_blocked(
                weight.detach(), grad_out, probs, ctx.bits, scales, need_weight, need_probs
            )
        else:
            grad_weight, grad_probs = _weight_backward_whole(
                weight.detach(), grad_out, probs, ctx.bits, scales, need_weight, need_probs
            )
        return grad_weight, grad_probs, None


def _channel_view(t: torch.Tensor, dims: int) -> torch.Tensor:
    """(K, C) -> (K, C, 1, ...) broadcasting against a (C, ...) weight of ``dims`` dims."""
    return t.view(t.shape + (1,) * (dims - 1))


def _weight_forward_whole(w, probs, bits, scales):
    inverse = _channel_view(scales.reciprocal().to(w.dtype), w.dim())
    coefficients = _channel_view(scales.to(w.dtype), w.dim())
    out, j = None, 0
    for i, b in enumerate(bits):
        if b >= FULL_PRECISION:
            branch = w if probs is None else w * probs[i]
        else:
            levels = signed_levels(b)
            coefficient = coefficients[j] if probs is None else coefficients[j] * probs[i]
            branch = (w * inverse[j]).clamp_(-levels, levels).round_().mul_(coefficient)
            j += 1
        out = branch if out is None else out.add_(branch)
    return out


def _weight_backward_whole(w, grad_out, probs, bits, scales, need_weight, need_probs):
    """Whole-tensor backward; differentiable in ``grad_out`` (double backward through a head)."""
    inverse = _channel_view(scales.reciprocal().to(w.dtype), w.dim())
    step = _channel_view(scales.to(w.dtype), w.dim())
    grad_weight, grad_probs, j = None, [], 0
    for i, b in enumerate(bits):
        if b >= FULL_PRECISION:
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


def _weight_blocks(w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The (C, J) matrix of ``w`` and the rows of its near-equal blocks."""
    matrix = w.reshape(w.shape[0], -1)
    channels = matrix.shape[0]
    rows = max(1, _block_elements(2) // max(1, matrix.shape[1]))
    rows = -(-channels // -(-channels // rows))
    return matrix, rows


def _weight_forward_blocked(w, probs, bits, quantized):
    matrix, rows = _weight_blocks(w)
    channels, columns = matrix.shape
    count = len(quantized)
    out = torch.empty_like(matrix)
    scales = torch.empty(count, channels)
    blocks = zip(matrix.split(rows), out.split(rows), scales.split(rows, dim=1))
    scratch = _Scratch(count, rows * columns, flat=False) if count else None
    bounds = [signed_levels(b) for b in quantized]
    q_index = [i for i, b in enumerate(bits) if b < FULL_PRECISION]
    q_probs = None if probs is None else probs.float()[q_index].view(count, 1, 1)
    ones = torch.ones(1, count)
    for block, out_block, scales_block in blocks:
        size = block.shape[0]
        if count:
            block_scales = _weight_scales(block, quantized)
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
            if b >= FULL_PRECISION:
                out_block.add_(block if probs is None else block * probs[i])
    return out.view(w.shape), scales


def _weight_backward_blocked(w, grad_out, probs, bits, scales, need_weight, need_probs):
    quantized = tuple(b for b in bits if b < FULL_PRECISION)
    count = len(quantized)
    matrix, rows = _weight_blocks(w)
    gradient = grad_out.reshape(matrix.shape)
    channels, columns = matrix.shape
    bounds = [signed_levels(b) for b in quantized]
    q_index = [i for i, b in enumerate(bits) if b < FULL_PRECISION]
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
                    # The fake-quantize STE, as in _weight_backward_whole.
                    torch.ops.aten.hardtanh_backward.grad_input(
                        grad_block, values[j], -levels - 0.5, levels + 0.5, grad_input=masked[j].view(size, columns)
                    )
                # sum_j p_j * masked_j: one (1, K) x (K, rows * J) product.
                torch.mm(q_probs, masked, out=out_block.view(1, -1))
            else:
                out_block.zero_()
            for i, b in enumerate(bits):
                if b >= FULL_PRECISION:
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
                if b >= FULL_PRECISION:
                    partial[i].append((grad_block * block).sum())
    grad_probs = None
    if need_probs:
        grad_probs = torch.stack([parts[0] if len(parts) == 1 else torch.stack(parts).sum() for parts in partial])
        grad_probs = grad_probs.to(probs.dtype)
    return (grad_weight.view(w.shape) if need_weight else None), grad_probs


def quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantize ``weight`` per output channel to ``bits`` bits (32: unchanged).

    Equal, in value and gradient, to ``torch.fake_quantize_per_channel_affine(weight,
    weight_scale(weight, bits), 0, 0, -n, n)`` with ``n = 2**(bits-1) - 1``.

    Example:
        >>> w = torch.randn(4, 3, 3, 3)
        >>> int(quantize_weight(w, 2)[0].unique().numel()) <= 4
        True
    """
    if bits >= FULL_PRECISION:
        return weight
    return _MixedWeightQuant.apply(weight, None, (int(bits),))


def mix_weights(weight: torch.Tensor, bits: Sequence[int], probs: torch.Tensor) -> torch.Tensor:
    """``sum_i probs[i] * quantize_weight(weight, bits[i])``, one tensor for one convolution.

    The weight statistics are computed once for all candidates, and no per-candidate copy of
    the weight is kept for the backward pass.
    """
    return _MixedWeightQuant.apply(weight, probs.to(weight.dtype), tuple(int(b) for b in bits))


# --- activations ------------------------------------------------------------------------------


def _activation_scales(clip: torch.Tensor, levels: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The effective clip ``|clip| + 1e-8`` and the (K,) float32 step sizes ``clip / levels``."""
    effective = clip.detach().abs().float() + 1e-8
    return effective, effective / _constant(tuple(float(n) for n in levels), effective.device, (len(levels),))


class _MixedActivationQuant(torch.autograd.Function):
    """Softmax-weighted mixture of fake-quantized copies of one activation tensor.

    ``levels`` are the grids' largest integers (``[0, n]``, or ``[-n, n]`` when ``signed``);
    ``probs`` may be None for one bitwidth. Keeps only the input for the backward pass.
    """

    @staticmethod
    def forward(ctx, x, clip, probs, levels: tuple[int, ...], signed: bool, grad_scale: float):
        effective, scales = _activation_scales(clip, levels)
        coefficients = scales if probs is None else scales * probs.float()
        out = None
        if _compiled_applies(None, x):
            x_value = _dense(x.detach())
            flat_out = _run_compiled("activation_forward", _flat(x_value), scales, coefficients, levels, signed)
            out = None if flat_out is None else _unflat(flat_out, x_value)
        if out is None and _blocked_cpu(x):
            out = _activation_forward_blocked(_dense(x.detach()), float(effective), scales, coefficients, signed)
        elif out is None:
            out = _activation_forward_whole(x.detach(), scales, coefficients, levels, signed)
        ctx.levels, ctx.signed, ctx.grad_scale = levels, signed, grad_scale
        ctx.save_for_backward(x, clip, probs)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, clip, probs = ctx.saved_tensors
        levels, signed = ctx.levels, ctx.signed
        need_x, need_clip, need_probs = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        effective, scales = _activation_scales(clip, levels)
        x_value = x.detach()
        grads = None
        if _compiled_applies(None, x_value, grad_out):
            dense = _dense(x_value)
            grads = _run_compiled(
                "activation_backward", _flat(dense), _flat(_like(grad_out, dense)), effective, scales, levels, signed,
                need_mask=need_x or need_clip, need_dots=need_probs or need_clip,
            )
        if grads is not None:
            flat_grad_x, dots, x_dot = grads
            grad_x = None if flat_grad_x is None else _unflat(flat_grad_x, dense)
        elif _blocked_cpu(x_value, grad_out):
            grad_x, dots, x_dot = _activation_backward_blocked(
                _dense(x_value), grad_out, float(effective), scales, signed,
                need_mask=need_x or need_clip, need_dots=need_probs or need_clip, need_x_dot=need_clip,
            )
        else:
            grad_x, dots, x_dot = _activation_backward_whole(
                x_value, grad_out, effective, scales, levels, signed,
                need_mask=need_x or need_clip, need_dots=need_probs or need_clip, need_x_dot=need_clip,
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


def _activation_forward_whole(x, scales, coefficients, levels, signed):
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


def _activation_backward_whole(x, grad_out, effective, scales, levels, signed, need_mask, need_dots, need_x_dot):
    """Whole-tensor backward without host reads; differentiable in ``grad_out`` (double backward)."""
    grad_x = dots = x_dot = None
    if need_mask:
        low = -effective if signed else torch.zeros_like(effective)
        inside = (x >= low) & (x <= effective)
        grad_x = torch.where(inside, grad_out, torch.zeros((), dtype=grad_out.dtype, device=grad_out.device))
        if need_x_dot:
            x_dot = _flat_dot(grad_x, x).float()
    if need_dots:
        inverse = scales.reciprocal().to(x.dtype)
        parts = []
        for i, top in enumerate(levels):
            with torch.no_grad():
                rounded = (x * inverse[i]).clamp_(-top if signed else 0, top).round_()
            parts.append(_flat_dot(grad_out, rounded))
        dots = torch.stack(parts).float()
    return grad_x, dots, x_dot


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


def _activation_forward_blocked(x, clip, scales, coefficients, signed):
    """Clamps each block once: ``round(clamp(x, lo, c) / s)`` equals ``clamp(round(x / s), lo/s, n)``
    (``c * (1 / s)`` is within a few ulps of the integer ``n``)."""
    low = -clip if signed else 0.0
    out = torch.empty_like(x)
    size = max(1, min(x.numel(), _block_elements()))
    sources, targets = _flat(x).split(size), _flat(out).view(1, -1).split(size, dim=1)
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


def _activation_backward_blocked(x, grad_out, clip, scales, signed, need_mask, need_dots, need_x_dot):
    low = -clip if signed else 0.0
    below, above = _inclusive_bounds(low, clip)
    size = max(1, min(x.numel(), _block_elements()))
    sources, gradients = _flat(x).split(size), _flat(_like(grad_out, x)).split(size)
    blocks = len(sources)
    grad_x = torch.empty_like(x) if need_mask else None
    masked_blocks = _flat(grad_x).split(size) if need_mask else [None] * blocks
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


# --- compiled kernels ---------------------------------------------------------------------------
#
# torch.compile fuses each quantizer's elementwise work into one or two loops over the tensor
# (about 3x faster than the blocked eager kernels on CPU, and far fewer launches on CUDA). It is
# not the default of the library: the first call of every kernel compiles it (tens of seconds on
# CPU, with a C++ compiler), which is worth it for a search that runs for hours but not for
# tests or a short script; a search turns it on by itself when its trials are long enough. The
# kernels see flat activations and (C, J) weight matrices with dynamic shapes, so they compile
# once per candidate set, not once per layer.


def _activation_forward_kernel(x, scales, coefficients, levels: tuple[int, ...], signed: bool):
    inverse = scales.reciprocal()
    out = None
    for i, top in enumerate(levels):
        branch = torch.round(torch.clamp(x.float() * inverse[i], -top if signed else 0, top)) * coefficients[i]
        out = branch if out is None else out + branch
    return out.to(x.dtype)


def _activation_backward_kernel(x, grad, clip, scales, levels: tuple[int, ...], signed: bool, need_mask: bool, need_dots: bool):
    grad_x = dots = x_dot = None
    if need_mask:
        inside = (x >= (-clip if signed else 0.0)) & (x <= clip)
        grad_x = torch.where(inside, grad, torch.zeros_like(grad))
        x_dot = (grad_x.float() * x.float()).sum()
    if need_dots:
        inverse = scales.reciprocal()
        dots = torch.stack([
            (grad.float() * torch.round(torch.clamp(x.float() * inverse[i], -top if signed else 0, top))).sum()
            for i, top in enumerate(levels)
        ])
    return grad_x, dots, x_dot


def _weight_forward_kernel(matrix, scales, probs, bits: tuple[int, ...]):
    inverse, steps, out = scales.reciprocal().unsqueeze(2), scales.unsqueeze(2), None
    for j, b in enumerate(bits):
        levels = signed_levels(b)
        branch = torch.round(torch.clamp(matrix.float() * inverse[j], -levels, levels)) * steps[j]
        branch = branch if probs is None else branch * probs[j].float()
        out = branch if out is None else out + branch
    return out.to(matrix.dtype)


def _weight_backward_kernel(matrix, grad, scales, probs, bits: tuple[int, ...], need_weight: bool, need_probs: bool):
    inverse, steps = scales.reciprocal().unsqueeze(2), scales.unsqueeze(2)
    mixed_mask, dots = None, []
    for j, b in enumerate(bits):
        levels = signed_levels(b)
        scaled = matrix.float() * inverse[j]
        if need_weight:
            mask = (scaled.abs() < levels + 0.5).float()  # the fake-quantize STE
            mask = mask if probs is None else mask * probs[j].float()
            mixed_mask = mask if mixed_mask is None else mixed_mask + mask
        if need_probs:
            dots.append((grad.float() * (torch.round(torch.clamp(scaled, -levels, levels)) * steps[j])).sum())
    grad_weight = (grad.float() * mixed_mask).to(grad.dtype) if need_weight else None
    return grad_weight, (torch.stack(dots) if need_probs else None)


_KERNELS = {
    "activation_forward": _activation_forward_kernel,
    "activation_backward": _activation_backward_kernel,
    "weight_forward": _weight_forward_kernel,
    "weight_backward": _weight_backward_kernel,
}
_compiled: dict[str, object] = {}  # the kernels in use: empty while the eager ones run
_compiled_once: dict[str, object] = {}  # made once per process, so toggling keeps what compiled


def use_compiled_kernels(enabled: bool = True) -> None:
    """Run the quantizers' elementwise work through ``torch.compile``d kernels, or not.

    Also enabled by the environment variable ``GMPQ_COMPILE_QUANTIZERS=1`` (read at import,
    so that Ray workers inherit it); search trials choose with ``search.quantizer_kernels``.
    Values and gradients are those of the eager kernels; the first step of a process pays the
    compilation (about 20 s for ResNet18 on 2 CPU cores, 5 s from inductor's disk cache).
    Double backward (``create_graph``) stays eager. If compiling fails (no C++ compiler, no
    Triton), a warning says so and the eager kernels take over.
    """
    _compiled.clear()
    if enabled:
        if not _compiled_once:
            import torch._dynamo

            # The kernels take detached tensors, but a caller compiling around them with
            # parameters would otherwise recompile for every layer's shape (see DESIGN.md).
            torch._dynamo.config.force_parameter_static_shapes = False
            _compiled_once.update({name: torch.compile(kernel, dynamic=True) for name, kernel in _KERNELS.items()})
        _compiled.update(_compiled_once)


def compiled_kernels_enabled() -> bool:
    """Whether the quantizers currently run the ``torch.compile``d kernels."""
    return bool(_compiled)


def compiler_available(device: torch.device | str = "cpu") -> bool:
    """Whether ``torch.compile`` has what it needs to build kernels for ``device``: a C++
    compiler for CPUs, Triton for CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        import importlib.util

        return importlib.util.find_spec("triton") is not None
    import shutil

    return any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "g++", "clang++", "c++"))


def _run_compiled(name: str, *args, **kwargs):
    """The compiled kernel's result, or None (and the eager kernels from now on) if it fails."""
    try:
        return _compiled[name](*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - a missing toolchain shows up as any backend error
        import warnings

        warnings.warn(f"compiled quantizer kernels failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                      "using the eager kernels", RuntimeWarning, stacklevel=2)
        _compiled.clear()
        return None


def _compiled_applies(bits: tuple[int, ...] | None, *tensors: torch.Tensor) -> bool:
    """Whether the compiled kernels are on and apply (``bits``: weight candidates, no 32)."""
    return (
        bool(_compiled)
        and not torch.is_grad_enabled()
        and (bits is None or all(b < FULL_PRECISION for b in bits))
        and all(t.dtype in (torch.float32, torch.float16, torch.bfloat16) for t in tensors)
    )


def compile_requested_by_environment() -> bool | None:
    """``GMPQ_COMPILE_QUANTIZERS`` read as a switch: True, False, or None where it is not set."""
    value = os.environ.get("GMPQ_COMPILE_QUANTIZERS", "").strip().lower()
    return None if not value else value in ("1", "true", "yes", "on")


if compile_requested_by_environment():
    use_compiled_kernels()


class ActivationQuantizer(nn.Module):
    """Quantizes a layer's input activation at one or several candidate bitwidths.

    One learnable clipping value is shared by all candidates. Call :meth:`observe` (through
    :func:`gmpq_ray.core.quant.calibration.calibrate`) to set the clip from data before training.

    Args:
        init_clip: starting clip before calibration.
    """

    def __init__(self, init_clip: float = 6.0) -> None:
        super().__init__()
        self.clip = nn.Parameter(torch.tensor(float(init_clip)))
        self.register_buffer("signed", torch.tensor(False))
        self.observing = False
        self._observed: list[torch.Tensor] = []
        self._signed_cache: tuple[torch.Tensor, int, bool] | None = None

    def is_signed(self) -> bool:
        """The grid's sign as a Python bool, read from the buffer only when the buffer changed.

        Reading a CUDA buffer forces a device sync. The buffer is replaced by a device move and
        its version counter moves on every in-place write (``fill_``, ``load_state_dict``).
        """
        cache = self._signed_cache
        if cache is None or cache[0] is not self.signed or cache[1] != self.signed._version:
            cache = self._signed_cache = (self.signed, self.signed._version, bool(self.signed))
        return cache[2]

    def forward(self, x: torch.Tensor, bits: Sequence[int], probs: torch.Tensor | None = None) -> torch.Tensor:
        """Quantize ``x`` at ``bits`` mixed with ``probs`` (one bitwidth: ``probs`` may be None)."""
        if self.observing:
            self._record(x)
            return x
        if len(bits) == 1 and bits[0] >= FULL_PRECISION:
            return x
        if any(b >= FULL_PRECISION for b in bits):
            raise ValueError("32-bit (full precision) cannot be mixed with quantized candidates")
        signed = self.is_signed()
        levels = tuple(signed_levels(b) if signed else unsigned_levels(b) for b in bits)
        if probs is not None:
            probs = probs.to(x.dtype)
        # LSQ's gradient scale keeps the clip's step size comparable to the weights'.
        per_sample = max(1, x.numel() // max(1, x.shape[0])) if x.dim() else 1
        grad_scale = 1.0 / math.sqrt(per_sample * max(levels))
        return _MixedActivationQuant.apply(x, self.clip, probs, levels, signed, grad_scale)

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
