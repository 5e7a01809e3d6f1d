"""The integers the ONNX file stores reproduce the fake-quant network's values exactly (pure PyTorch)."""

from __future__ import annotations

import pytest
import torch

from gmpq_ray.core.policy import LayerBits
from gmpq_ray.core.quant.functions import quantize_weight
from gmpq_ray.core.quant.layers import QuantConv2d, QuantLinear
from gmpq_ray.export.quantized import activation_grid, weight_codes, weight_storage_bytes


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_weight_codes_times_scales_are_the_fake_quantized_weight(bits):
    torch.manual_seed(bits)
    layer = QuantConv2d.from_float(torch.nn.Conv2d(8, 16, 3), LayerBits(bits, 8))
    codes = weight_codes(layer)
    assert codes.codes.dtype == torch.int8 and codes.scales.shape == (16,)
    # DequantizeLinear computes (q - 0) * scale in float32: bit for bit the fake-quantized weight.
    dequantized = codes.codes.float() * codes.scales.view(-1, 1, 1, 1)
    assert torch.equal(dequantized, quantize_weight(layer.weight.detach(), bits))
    assert int(codes.codes.abs().max()) <= 2 ** (bits - 1) - 1 and codes.codes.unique().numel() <= 2**bits - 1


def test_full_precision_weights_and_inputs_have_no_integer_form():
    layer = QuantLinear.from_float(torch.nn.Linear(4, 3), LayerBits(32, 32))
    assert weight_codes(layer) is None and activation_grid(layer) is None


@pytest.mark.parametrize(("bits", "signed"), [(2, False), (3, True), (8, False), (8, True)])
def test_activation_grid_is_the_quantizers(bits, signed):
    torch.manual_seed(0)
    layer = QuantConv2d.from_float(torch.nn.Conv2d(4, 4, 1), LayerBits(4, bits))
    layer.act_quant.clip.data.fill_(1.7)
    layer.act_quant.signed.fill_(signed)
    grid = activation_grid(layer)
    top = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    assert (grid.low, grid.high, grid.signed) == ((-top if signed else 0), top, signed)
    x = torch.randn(2, 4, 8, 8) * 2
    with torch.no_grad():
        fake = layer.act_quant(x, (bits,))
    scale = torch.tensor(grid.scale, dtype=torch.float32)
    # QuantizeLinear -> Clip -> DequantizeLinear; values off a rounding tie (x / s against x * (1 / s)) agree exactly.
    onnx_like = torch.clamp(torch.round(x / scale), grid.low, grid.high) * scale
    assert (onnx_like != fake).float().mean() < 1e-3
    assert torch.allclose(onnx_like, fake, atol=float(scale) * 1.01)


def test_storage_counts_quantized_weights_at_their_bits():
    layer = QuantConv2d.from_float(torch.nn.Conv2d(8, 16, 3, bias=True), LayerBits(2, 8))
    model = torch.nn.Sequential(layer, torch.nn.BatchNorm2d(16))
    policy_bytes, fp32_bytes, scale_bytes = weight_storage_bytes(model)
    assert fp32_bytes == 4 * (16 * 8 * 9 + 16 + 32)
    assert policy_bytes == 16 * 8 * 9 * 2 / 8 + 4 * (16 + 32) and scale_bytes == 4 * 16
