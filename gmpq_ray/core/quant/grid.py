"""Quantization grids: integer levels, step sizes and the weight statistics they come from.

* Weights: signed, symmetric, per output channel. The clipping range of channel ``c`` is
  ``min(max|w_c|, k_b * std(w_c))`` where ``k_b`` is the MSE-optimal clip of a Gaussian for
  ``b`` bits: at 2 to 3 bits the max-abs range would round most weights to zero.
* Activations: one clip per layer, shared by every candidate bitwidth; the step of a ``b``-bit
  candidate is ``(|clip| + 1e-8) / n_b``.
"""

from __future__ import annotations

import math

import torch

# MSE-optimal clip (in standard deviations) of a symmetric uniform quantizer on N(0, 1) with
# 2**(b-1) - 1 positive levels, found by a grid search over 2 M samples.
_GAUSSIAN_CLIP = {2: 1.22, 3: 1.95, 4: 2.47, 5: 2.90, 6: 3.27, 7: 3.59, 8: 3.88}


def signed_levels(bits: int) -> int:
    """Largest integer level of a symmetric signed grid of ``bits`` bits (narrow range).

    Example:
        >>> signed_levels(4)
        7
    """
    return 2 ** (bits - 1) - 1


def unsigned_levels(bits: int) -> int:
    """Largest integer level of an unsigned grid of ``bits`` bits.

    Example:
        >>> unsigned_levels(4)
        15
    """
    return 2**bits - 1


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def constant(values: tuple[float, ...], device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    """A small float32 tensor, made once per device: a copy from pageable host memory would wait
    for the device every step."""
    key = (values, device, shape)
    tensor = _CONSTANTS.get(key)
    if tensor is None:
        tensor = _CONSTANTS[key] = torch.tensor(values, dtype=torch.float32).reshape(shape).to(device)
    return tensor


def weight_stats(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
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

    Example:
        >>> weight_scale(torch.ones(2, 3), 4).shape
        torch.Size([2])
    """
    return _scale_from_stats(*weight_stats(weight), bits)


def weight_scales(weight: torch.Tensor, bits: tuple[int, ...]) -> torch.Tensor:
    """(K, C) step sizes of the candidates ``bits`` (all quantized) from one set of statistics.

    Row ``i`` equals ``weight_scale(weight, bits[i])``: the same float32 operations.
    """
    max_abs, std = weight_stats(weight)
    if std is None or any(b not in _GAUSSIAN_CLIP for b in bits):
        return torch.stack([_scale_from_stats(max_abs, std, b) for b in bits])
    gaussian = constant(tuple(_GAUSSIAN_CLIP[b] for b in bits), max_abs.device, (len(bits), 1))
    levels = constant(tuple(float(signed_levels(b)) for b in bits), max_abs.device, (len(bits), 1))
    return torch.minimum(max_abs, gaussian * std).div_(levels).clamp_min_(1e-8).float()


def activation_scales(clip: torch.Tensor, levels: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The effective clip ``|clip| + 1e-8`` and the (K,) float32 step sizes ``clip / levels``."""
    effective = clip.detach().abs().float() + 1e-8
    return effective, effective / constant(tuple(float(n) for n in levels), effective.device, (len(levels),))
