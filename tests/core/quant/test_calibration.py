"""Calibration of activation clips (and their sign) from data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.quant.activation import ActivationQuantizer
from gmpq_ray.core.quant.calibration import calibrate, reestimated_batch_norm
from gmpq_ray.core.quant.convert import fixed_quant_layers, pinned_policy, supernet_layers, to_supernet
from gmpq_ray.core.quant.layers import MixedPrecisionConv2d, QuantConv2d, QuantLinear


class QuantizeInput(nn.Module):
    """One activation quantizer at 4 bits on the raw input."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = ActivationQuantizer(init_clip=6.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant(x, (4,))


def loader_of(*batches: torch.Tensor):
    return [(b, torch.zeros(b.shape[0], dtype=torch.long)) for b in batches]


def test_calibrate_sets_unsigned_clip_to_the_quantile():
    model = QuantizeInput().train()
    data = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 5
    assert calibrate(model, loader_of(data)) == 1
    assert not bool(model.quant.signed)
    assert model.quant.clip.item() == pytest.approx(float(torch.quantile(data.flatten(), 0.999)), rel=1e-5)
    assert model.quant.clip.item() < 5.0
    assert model.training  # the mode is restored
    assert not model.quant.observing
    # After calibration the quantizer quantizes again: 4 bits, within [0, clip].
    out = model(data).detach()
    assert out.unique().numel() <= 16 and float(out.max()) <= model.quant.clip.item() + 1e-6


def test_calibrate_detects_signed_inputs():
    model = QuantizeInput().eval()
    data = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    calibrate(model, loader_of(data), quantile=0.99)
    assert bool(model.quant.signed)
    assert model.quant.clip.item() == pytest.approx(float(torch.quantile(data.abs().flatten(), 0.99)), rel=1e-5)
    assert not model.training
    out = model(data).detach()
    assert float(out.min()) < 0 and out.unique().numel() <= 15  # signed narrow 4-bit grid


def test_calibrate_ignores_negligible_negative_values():
    model = QuantizeInput()
    data = torch.rand(16, 3, 8, 8) * 4
    data[0, 0, 0, 0] = -1e-6  # numerical noise after a ReLU-like op
    calibrate(model, loader_of(data))
    assert not bool(model.quant.signed)


def test_calibrate_uses_only_num_batches():
    model = QuantizeInput()
    small = torch.rand(32, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    large = small * 100
    calibrate(model, loader_of(small, large, large), num_batches=1, quantile=1.0)
    assert model.quant.clip.item() == pytest.approx(float(small.max()), rel=1e-6)
    calibrate(model, loader_of(small, large), num_batches=2, quantile=1.0)
    assert model.quant.clip.item() == pytest.approx(float(large.max()), rel=1e-6)


def test_calibrate_a_supernet_sees_full_precision_activations(digits_fp, batch):
    images, labels = batch
    supernet = to_supernet(digits_fp, [2, 3, 4], [2, 3, 4])
    count = calibrate(supernet, [(images, labels)])
    quantizers = [m for m in supernet.modules() if isinstance(m, ActivationQuantizer)]
    assert count == len(quantizers) == 8  # stem, six searched convs, classifier
    stem = supernet.features[0].conv
    assert isinstance(stem, QuantConv2d) and isinstance(supernet.fc, QuantLinear)
    # The stem reads standardized images (signed); the other convs read ReLU outputs (unsigned).
    assert bool(stem.act_quant.signed)
    assert stem.act_quant.clip.item() == pytest.approx(float(torch.quantile(images.abs().flatten(), 0.999)), rel=1e-5)
    for index in range(1, 7):
        layer = supernet.features[index].conv
        assert isinstance(layer, MixedPrecisionConv2d)
        assert not bool(layer.act_quant.signed)
        assert 0 < layer.act_quant.clip.item() < 6.0


def test_reestimated_batch_norm_measures_the_policy_and_restores_the_mixture(digits_fp, batch, make_supernet):
    images, labels = batch
    supernet = make_supernet(digits_fp, images, labels)
    norms = [m for m in supernet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(n.running_mean.clone(), n.running_var.clone(), n.momentum) for n in norms]
    layers = {name: LayerBits(2, 2) for name in supernet_layers(supernet)}
    policy = Policy("digits_cnn", layers, {name: LayerBits(8, 8) for name in fixed_quant_layers(supernet)})
    with pinned_policy(supernet, policy), reestimated_batch_norm(supernet, [(images, labels)] * 3, num_batches=2):
        inside = [n.running_mean.clone() for n in norms]
        assert not supernet.training
    # Re-estimated: the statistics changed (fresh FP weights' BN buffers hold the defaults).
    assert any(not torch.allclose(a, b[0]) for a, b in zip(inside, before))
    # ... and put back on exit, momentum included.
    for norm, (mean, var, momentum) in zip(norms, before):
        assert torch.equal(norm.running_mean, mean) and torch.equal(norm.running_var, var) and norm.momentum == momentum
