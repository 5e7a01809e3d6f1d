"""Calibration of activation ranges from a few batches of data."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from gmpq_ray.core.quantizers import ActivationQuantizer


@torch.no_grad()
def calibrate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu", num_batches: int = 4, quantile: float = 0.999) -> int:
    """Set every activation quantizer's clip (and sign) from ``num_batches`` batches.

    Activations pass through unquantized while they are observed, so each layer sees the
    inputs of the network it was converted from. Returns the number of quantizers set.
    """
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    was_training = model.training
    model.eval()
    for quantizer in quantizers:
        quantizer.start_observing()
    try:
        for index, (images, _) in enumerate(loader):
            if index >= num_batches:
                break
            model(images.to(device))
    finally:
        for quantizer in quantizers:
            quantizer.finish_observing(quantile)
        model.train(was_training)
    return len(quantizers)
