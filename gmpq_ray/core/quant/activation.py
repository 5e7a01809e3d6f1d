"""The activation quantizer module: one learnable clip per layer, calibrated from data."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gmpq_ray.core.policy import FULL_PRECISION_BITS
from gmpq_ray.core.quant.functions import mix_activations
from gmpq_ray.core.quant.grid import signed_levels, unsigned_levels


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
        if len(bits) == 1 and bits[0] >= FULL_PRECISION_BITS:
            return x
        if any(b >= FULL_PRECISION_BITS for b in bits):
            raise ValueError("32-bit (full precision) cannot be mixed with quantized candidates")
        signed = self.is_signed()
        levels = tuple(signed_levels(b) if signed else unsigned_levels(b) for b in bits)
        if probs is not None:
            probs = probs.to(x.dtype)
        # LSQ's gradient scale keeps the clip's step size comparable to the weights'.
        per_sample = max(1, x.numel() // max(1, x.shape[0])) if x.dim() else 1
        grad_scale = 1.0 / math.sqrt(per_sample * max(levels))
        return mix_activations(x, self.clip, probs, levels, signed, grad_scale)

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
