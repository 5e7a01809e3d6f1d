"""Shared builders for the core tests: a digits CNN, a synthetic batch, a calibrated supernet.

Everything is tiny (16x16 single-channel images, a 7-conv CNN) so the whole core suite runs
in well under a minute on two CPU cores.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from gmpq_ray.core.data.bundle import make_synthetic
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.quant.calibration import calibrate
from gmpq_ray.core.quant.convert import supernet_layers, to_supernet

CANDIDATES = (2, 3, 4)


@pytest.fixture
def digits_fp() -> torch.nn.Module:
    """A freshly initialized FP digits CNN (1 input channel, 10 classes), in eval mode."""
    torch.manual_seed(0)
    return create_model("digits_cnn", num_classes=10, in_channels=1).eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """32 synthetic 1x16x16 images of 10 classes and their labels."""
    data = make_synthetic(num_train=32, num_val=1, num_classes=10, image_size=16, in_channels=1, seed=0)
    return data.train.tensors


@pytest.fixture
def make_supernet() -> Callable[..., torch.nn.Module]:
    """Factory: a supernet on a copy of ``fp``, calibrated on one batch, with seeded random alphas."""

    def build(fp: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.nn.Module:
        supernet = to_supernet(copy.deepcopy(fp), CANDIDATES, CANDIDATES, **kwargs)
        calibrate(supernet, [(images, labels)])
        generator = torch.Generator().manual_seed(123)
        with torch.no_grad():
            for layer in supernet_layers(supernet).values():
                layer.alpha_w.copy_(torch.randn(layer.alpha_w.shape, generator=generator))
                layer.alpha_a.copy_(torch.randn(layer.alpha_a.shape, generator=generator))
        return supernet.eval()

    return build
