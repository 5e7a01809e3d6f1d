"""Memory-layout helpers shared by the quantizer kernels: flat views of dense tensors (standard
or channels-last), strides matched to a reference, and one-pass dot products."""

from __future__ import annotations

import math

import torch


def flat(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of ``t`` in memory order (dense standard layouts only), else None."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return t.permute(0, 2, 3, 4, 1).reshape(-1)
    return None


def unflat(flat_view: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`flat`: ``flat_view`` viewed with the shape and layout of ``like``."""
    if like.is_contiguous():
        return flat_view.view(like.shape)
    order = (0, 2, 3, 1) if like.dim() == 4 else (0, 2, 3, 4, 1)
    inverse = sorted(range(like.dim()), key=order.__getitem__)
    return flat_view.view([like.shape[i] for i in order]).permute(inverse)


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` if :func:`flat` can view it, else a contiguous copy."""
    return t if flat(t) is not None else t.contiguous()


def like(t: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of ``reference`` (a copy only when they differ)."""
    return t if t.stride() == reference.stride() else torch.empty_like(reference).copy_(t)


def flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum(a * b)``, in one pass when both tensors share a dense layout."""
    if a.stride() == b.stride():
        flat_a, flat_b = flat(a), flat(b)
        if flat_a is not None and flat_b is not None:
            return torch.dot(flat_a, flat_b)
    return (a * b).sum()


def inclusive_bounds(low: float, high: float) -> tuple[float, float]:
    """Bounds for ``hardtanh_backward`` (``low < x < high``, strict) that make it ``low <= x <= high``
    on float32 inputs."""
    bounds = torch.tensor([low, high], dtype=torch.float32)
    below, above = torch.nextafter(bounds, torch.tensor([-math.inf, math.inf])).tolist()
    return below, above
