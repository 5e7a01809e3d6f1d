"""Calibration of activation ranges from a few batches of data."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from gmpq_ray.core.quant.activation import ActivationQuantizer


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


class reestimated_batch_norm:
    """Context manager: the model's batch-norm running statistics re-estimated on ``num_batches``
    training batches, restored on exit.

    A supernet's statistics belong to the mixture of all bit branches; a discrete policy run
    with its shared weights sees other activations, and scored with the mixture's statistics it
    is ranked by its distance to the mixture rather than by its quality. Re-estimating them
    (a cumulative average over a few batches, in train mode, no gradient) is the usual one-shot
    NAS practice before a sub-network is scored.

    Example::

        with pinned_policy(supernet, policy), reestimated_batch_norm(supernet, train_loader, device):
            accuracy = evaluate(supernet, val_loader)
    """

    def __init__(self, model: nn.Module, loader: Iterable, device: torch.device | str = "cpu", num_batches: int = 4) -> None:
        self.model, self.loader, self.device, self.num_batches = model, loader, device, num_batches
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]

    @torch.no_grad()
    def __enter__(self) -> None:
        self._saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in self.norms]
        was_training = self.model.training
        for norm in self.norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches
        self.model.train()
        try:
            for index, (images, _) in enumerate(self.loader):
                if index >= self.num_batches:
                    break
                self.model(images.to(self.device))
        finally:
            self.model.train(was_training)

    def __exit__(self, *exc) -> None:
        for norm, (momentum, state) in zip(self.norms, self._saved):
            norm.momentum = momentum
            norm.load_state_dict(state)
