"""Weight and activation fake quantizers, and the custom autograd of the activation mixture."""

from __future__ import annotations

import math

import pytest
import torch

from gmpq_ray.core.quant.activation import ActivationQuantizer
from gmpq_ray.core.quant.functions import _MixedActivationQuant, mix_weights, quantize_weight
from gmpq_ray.core.quant.grid import signed_levels, unsigned_levels, weight_scale

BITS = range(2, 9)


def weight(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 64, 3, 3, generator=torch.Generator().manual_seed(seed))  # 576 values per channel


@pytest.mark.parametrize("bits", BITS)
def test_quantize_weight_is_on_a_narrow_symmetric_per_channel_grid(bits):
    w = weight(bits)
    q = quantize_weight(w, bits)
    scale = weight_scale(w, bits)
    levels = 2 ** (bits - 1) - 1
    assert q.shape == w.shape
    for channel in range(w.shape[0]):
        values = q[channel].unique()
        assert values.numel() <= 2**bits - 1  # narrow range: -levels..levels
        steps = values / scale[channel]
        assert torch.allclose(steps, steps.round(), atol=1e-4)
        assert int(steps.round().abs().max()) <= levels
        # The grid is used, not collapsed: both signs and zero occur.
        assert (values > 0).any() and (values < 0).any() and (values == 0).any()
    # Rounding error of a weight inside the clip range is at most half a step.
    inside = w.abs() <= (scale * levels)[:, None, None, None]
    error = (q - w).abs() / scale[:, None, None, None]
    assert float(error[inside].max()) <= 0.5 + 1e-4


def test_weight_scale_uses_gaussian_clip_below_max_abs():
    w = weight()
    flat = w.flatten(1)
    # At 2 bits the clip is 1.22 std, far below the max |w| (~3 std) of 576 Gaussian samples.
    expected = 1.22 * flat.std(dim=1) / signed_levels(2)
    assert torch.allclose(weight_scale(w, 2), expected, rtol=1e-6)
    # A channel of one value falls back to max |w|.
    single = torch.tensor([[0.5], [-2.0]])
    assert torch.allclose(weight_scale(single, 4), torch.tensor([0.5, 2.0]) / 7)


def test_quantize_weight_2_bits_uses_three_levels():
    q = quantize_weight(weight(), 2)
    for channel in q:
        assert channel.unique().numel() == 3


def test_quantize_weight_32_bits_is_identity():
    w = weight()
    assert quantize_weight(w, 32) is w


def test_quantize_weight_gradient_is_straight_through_inside_the_clip():
    w = weight().requires_grad_()
    bits = 2
    quantize_weight(w, bits).sum().backward()
    scale = weight_scale(w, bits)[:, None, None, None]
    steps = (w.detach() / scale).round()
    expected = (steps.abs() <= signed_levels(bits)).float()
    assert torch.equal(w.grad, expected)
    assert 0 < float(expected.mean()) < 1  # some weights clipped, most not


def test_mix_weights_is_the_probability_weighted_sum():
    w = weight().requires_grad_()
    probs = torch.tensor([0.2, 0.5, 0.3], requires_grad=True)
    bits = (2, 4, 8)
    mixed = mix_weights(w, bits, probs)
    branches = [quantize_weight(w.detach(), b) for b in bits]
    reference = sum(p * b for p, b in zip(probs.detach(), branches))
    assert torch.allclose(mixed, reference, atol=1e-6)
    grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(1))
    mixed.backward(grad)
    expected = torch.stack([(grad * b).sum() for b in branches])
    assert torch.allclose(probs.grad, expected, rtol=1e-5)


@pytest.mark.parametrize("bits", BITS)
def test_activation_quantizer_unsigned(bits):
    quantizer = ActivationQuantizer()
    with torch.no_grad():
        quantizer.clip.fill_(2.0)
    x = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(bits)) * 3
    y = quantizer(x, (bits,)).detach()
    values = y.unique()
    assert values.numel() <= 2**bits
    assert float(values.min()) >= 0 and float(values.max()) <= 2.0 + 1e-6
    steps = values / (2.0 / unsigned_levels(bits))
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    # Inputs this spread use the whole grid: 0, the clip and (at low bits) every level between.
    assert float(values.min()) == 0.0 and float(values.max()) == pytest.approx(2.0, rel=1e-6)
    if bits <= 4:
        assert values.numel() == 2**bits


@pytest.mark.parametrize("bits", BITS)
def test_activation_quantizer_signed(bits):
    quantizer = ActivationQuantizer()
    with torch.no_grad():
        quantizer.clip.fill_(1.5)
        quantizer.signed.fill_(True)
    x = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(bits)) * 3
    y = quantizer(x, (bits,)).detach()
    values = y.unique()
    assert values.numel() <= 2**bits - 1
    assert float(values.min()) >= -1.5 - 1e-6 and float(values.max()) <= 1.5 + 1e-6
    assert float(values.min()) < 0 < float(values.max())


def test_activation_quantizer_full_precision_and_mixing_32_bits():
    quantizer = ActivationQuantizer()
    x = torch.randn(2, 3, 4, 4)
    assert quantizer(x, (32,)) is x
    with pytest.raises(ValueError, match="32-bit"):
        quantizer(x, (4, 32), torch.tensor([0.5, 0.5]))


def test_activation_quantizer_mixture_is_weighted_sum_of_single_bit_outputs():
    quantizer = ActivationQuantizer(init_clip=1.0)
    x = torch.rand(2, 3, 8, 8) * 1.5
    probs = torch.tensor([0.1, 0.6, 0.3])
    mixed = quantizer(x, (2, 3, 4), probs)
    singles = [quantizer(x, (b,)) for b in (2, 3, 4)]
    assert torch.allclose(mixed, sum(p * s for p, s in zip(probs, singles)), atol=1e-6)


# --- the custom autograd function of the activation mixture ---------------------------------


def mixture_input(clip: float, signed: bool, seed: int = 0) -> torch.Tensor:
    """Activations on both sides of the clip, away from the half step just beyond it.

    Within half a quantization step beyond either end of the grid the straight-through mask of
    ``torch.fake_quantize_*`` (which tests the *rounded* value) and the PACT mask of the custom
    function (which tests ``low <= x <= clip``) legitimately differ; the coarsest grid here has
    a step of clip / 3, so a band of clip / 4 clears it.
    """
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed)) * clip
    band = clip / 4
    x = torch.where((x > clip) & (x < clip + band), x + band, x)
    if signed:
        x = torch.where((x < -clip) & (x > -clip - band), x - band, x)
    else:  # the lower edge of an unsigned grid is 0
        x = torch.where((x < 0) & (x > -band), x - band, x)
    return x


def ste_reference(x, clip, probs, tops, signed):
    """The mixture in plain autograd, LSQ style: scale * round_ste(clamp(x / scale)), mixed by probs."""
    clip = clip.abs() + 1e-8
    out = 0
    for p, top in zip(probs, tops):
        scale = clip / top
        v = (x / scale).clamp(-top if signed else 0, top)
        rounded = v + (v.round() - v).detach()
        out = out + p * scale * rounded
    return out


def fake_quant_reference(x, clip, probs, tops, signed):
    """The mixture from ``torch.fake_quantize_per_tensor_affine`` branches (no grad for the clip)."""
    clip = clip.detach().abs() + 1e-8
    zero_point = torch.zeros((), dtype=torch.int32)
    out = 0
    for p, top in zip(probs, tops):
        branch = torch.fake_quantize_per_tensor_affine(x, (clip / top).float(), zero_point, -top if signed else 0, top)
        out = out + p * branch
    return out


@pytest.mark.parametrize("signed", [False, True])
def test_mixed_activation_grads_match_plain_autograd(signed):
    bits = (2, 3, 4) if not signed else (3, 4, 6)
    tops = tuple(signed_levels(b) if signed else unsigned_levels(b) for b in bits)
    clip_value = 1.3
    x = mixture_input(clip_value, signed)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    alpha = torch.tensor([0.3, -0.2, 0.5])

    # The custom function.
    x1 = x.clone().requires_grad_()
    clip1 = torch.tensor(clip_value, requires_grad=True)
    probs1 = alpha.softmax(0).detach().requires_grad_()
    out1 = _MixedActivationQuant.apply(x1, clip1, probs1, tops, signed, 0.5)
    out1.backward(grad_out)

    # Plain autograd with fake-quantize branches: gradients of x and probs.
    x2 = x.clone().requires_grad_()
    probs2 = alpha.softmax(0).detach().requires_grad_()
    out2 = fake_quant_reference(x2, torch.tensor(clip_value), probs2, tops, signed)
    out2.backward(grad_out)
    assert torch.allclose(out1, out2, atol=1e-6)
    assert torch.allclose(probs1.grad, probs2.grad, rtol=1e-5, atol=1e-5)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)

    # grad wrt probs is exactly dot(grad, branch).
    for i, top in enumerate(tops):
        branch = fake_quant_reference(x, torch.tensor(clip_value), [1.0], (top,), signed)
        assert float(probs1.grad[i]) == pytest.approx(float((grad_out * branch).sum()), rel=1e-5, abs=1e-5)

    # grad wrt x is the straight-through (PACT) mask of the clipping range.
    low = -clip_value if signed else 0.0
    mask = (x >= low) & (x <= clip_value)
    assert torch.equal(x1.grad, grad_out * mask)
    assert 0 < float(mask.float().mean()) < 1

    # grad wrt the clip: LSQ/PACT, scaled by grad_scale (0.5 here).
    x3 = x.clone().requires_grad_()
    clip3 = torch.tensor(clip_value, requires_grad=True)
    ste_reference(x3, clip3, alpha.softmax(0), tops, signed).backward(grad_out)
    assert float(clip1.grad) == pytest.approx(0.5 * float(clip3.grad), rel=1e-4, abs=1e-5)
    assert torch.allclose(x1.grad, x3.grad, atol=1e-6)


def test_mixed_activation_clip_gradient_for_a_negative_clip():
    """The forward uses |clip|, so its gradient for clip = -c must be minus that for +c.

    An SGD step can push a learnable clip below zero; the backward pass must then still follow
    the function the forward computes.
    """
    tops = (3, 7)
    x = mixture_input(1.0, signed=False)
    probs = torch.tensor([0.4, 0.6])
    grads = {}
    for value in (1.0, -1.0):
        clip = torch.tensor(value, requires_grad=True)
        out = _MixedActivationQuant.apply(x, clip, probs, tops, False, 1.0)
        out.sum().backward()
        grads[value] = float(clip.grad)
        reference_clip = torch.tensor(value, requires_grad=True)
        ste_reference(x, reference_clip, probs, tops, False).sum().backward()
        assert torch.allclose(out, ste_reference(x, torch.tensor(value), probs, tops, False), atol=1e-6)
        assert grads[value] == pytest.approx(float(reference_clip.grad), rel=1e-4), f"clip={value}"
    assert grads[1.0] == pytest.approx(-grads[-1.0], rel=1e-5)


def test_activation_quantizer_clip_gradient_uses_lsq_scale():
    quantizer = ActivationQuantizer(init_clip=1.0)
    x = mixture_input(1.0, signed=False)
    quantizer(x, (4,)).sum().backward()
    reference_clip = torch.tensor(1.0, requires_grad=True)
    ste_reference(x, reference_clip, [1.0], (15,), False).sum().backward()
    grad_scale = 1 / math.sqrt(x[0].numel() * 15)
    assert float(quantizer.clip.grad) == pytest.approx(grad_scale * float(reference_clip.grad), rel=1e-4)


def test_mixed_activation_probs_gradient_through_softmax():
    """d loss / d p_i = dot(grad, Q_i) with Q_i the single-bitwidth output; through the softmax,
    d loss / d alpha = p * (g - dot(p, g))."""
    quantizer = ActivationQuantizer(init_clip=1.0)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 1.2
    alpha = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)
    bits = (2, 3, 4)
    out = quantizer(x, bits, alpha.softmax(0))
    out.pow(2).sum().backward()
    with torch.no_grad():
        grad = 2 * out.detach()
        branches = [quantizer(x, (b,)) for b in bits]
        g = torch.stack([(grad * q).sum() for q in branches])
        p = alpha.detach().softmax(0)
        expected = p * (g - (p * g).sum())
    assert torch.allclose(alpha.grad, expected, rtol=1e-4, atol=1e-5)
    assert float(expected.abs().min()) > 1e-3  # every branch's own gradient is checked
