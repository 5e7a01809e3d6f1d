"""The quantizers' custom autograd functions against plain autograd built from PyTorch's
fake-quantize operators: equal values, equal gradients for x / w, probs and the clip.

Every case runs through the blocked CPU kernels (with blocks made small, so that tensors span
several blocks) and through the whole-tensor kernels that CUDA, other dtypes and double
backward use.
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
import torch._inductor.config as inductor_config

from gmpq_ray.core.quant import backends, grid, kernels_blocked, kernels_compiled
from gmpq_ray.core.quant.activation import ActivationQuantizer
from gmpq_ray.core.quant.functions import _MixedActivationQuant, mix_weights, quantize_weight
from gmpq_ray.core.quant.grid import signed_levels, unsigned_levels, weight_scale

PATHS = ["blocked", "whole"]


@pytest.fixture
def path(request, monkeypatch):
    """Run the quantizers through the blocked CPU kernels (blocks of 64 elements per thread,
    so every tensor spans several) or through the whole-tensor kernels."""
    monkeypatch.setattr(kernels_blocked, "CPU_BLOCK_ELEMENTS", 64)
    if request.param == "whole":
        monkeypatch.setattr(kernels_blocked, "applies", lambda *tensors: False)
    return request.param


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def activations(signed: bool, seed: int = 0, clip: float = 1.3, shape=(3, 4, 7, 5)) -> torch.Tensor:
    """Inputs on both sides of the clip, away from the half step beyond it, where the PACT mask
    (``low <= x <= clip``) and the fake-quantize mask (rounded value on the grid) differ: half
    a step is at most ``clip / 2`` (the signed 2-bit grid -1, 0, 1)."""
    x = torch.randn(shape, generator=generator(seed)) * clip
    band = 0.55 * clip
    x = torch.where((x > clip) & (x < clip + band), x + band, x)
    if signed:
        x = torch.where((x < -clip) & (x > -clip - band), x - band, x)
    else:
        x = torch.where((x < 0) & (x > -band), x - band, x)
    return x


def levels_of(bits, signed):
    return tuple(signed_levels(b) if signed else unsigned_levels(b) for b in bits)


def fake_quant_activation(x, clip_value, top, signed):
    scale = (torch.tensor(clip_value).abs() + 1e-8) / top
    zero_point = torch.zeros((), dtype=torch.int32)
    return torch.fake_quantize_per_tensor_affine(x, scale.float(), zero_point, -top if signed else 0, top)


def learnable_reference(x, clip, probs, tops, signed):
    """The mixture from ``torch._fake_quantize_learnable_per_tensor_affine`` (LSQ gradients of
    the scale, PACT mask for x) with every branch's scale ``(|clip| + 1e-8) / n_i``."""
    effective = clip.abs() + 1e-8
    zero_point = torch.zeros(1)
    out = 0
    for p, top in zip(probs, tops):
        scale = (effective / top).reshape(1)
        branch = torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero_point, -top if signed else 0, top, 1.0)
        out = out + p * branch
    return out


# --- activations ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_single_bitwidth_activation_equals_fake_quantize_per_tensor(path, signed, bits):
    quantizer = ActivationQuantizer(init_clip=1.3)
    quantizer.signed.fill_(signed)
    x = torch.randn(4, 8, 6, 6, generator=generator(bits)) * 2
    top = levels_of((bits,), signed)[0]
    expected = fake_quant_activation(x, 1.3, top, signed)
    assert torch.equal(quantizer(x, (bits,)), expected)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    out = quantizer(channels_last, (bits,))
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last) or path == "whole"
    transposed = x.transpose(1, 3)  # neither contiguous nor channels_last
    assert torch.equal(quantizer(transposed, (bits,)), expected.transpose(1, 3))


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [(2, 3, 4, 6), (3,)])
def test_activation_mixture_values_and_gradients(path, signed, bits):
    """A mixture, and one bitwidth without probabilities (the fixed-precision layers)."""
    tops = levels_of(bits, signed)
    x = activations(signed, seed=1)
    grad = torch.randn(x.shape, generator=generator(2))
    probs0 = torch.linspace(0.3, -0.2, len(bits)).softmax(0)
    grad_scale = 0.25

    x1 = x.clone().requires_grad_()
    clip1 = torch.tensor(1.3, requires_grad=True)
    probs1 = probs0.clone().requires_grad_() if len(bits) > 1 else None
    out1 = _MixedActivationQuant.apply(x1, clip1, probs1, tops, signed, grad_scale)
    out1.backward(grad)

    # Values: the probability-weighted sum of fake_quantize_per_tensor_affine branches.
    branches = [fake_quant_activation(x, 1.3, top, signed) for top in tops]
    if probs1 is None:
        assert torch.equal(out1, branches[0])
    else:
        assert torch.allclose(out1, sum(p * b for p, b in zip(probs0, branches)), atol=1e-6)
        # grad of probs[i]: dot(grad, branch_i).
        expected_probs = torch.stack([(grad.double() * b.double()).sum() for b in branches]).float()
        assert torch.allclose(probs1.grad, expected_probs, rtol=1e-5, atol=1e-5)

    # x and clip against the learnable fake-quantize operator in plain autograd.
    x2 = x.clone().requires_grad_()
    clip2 = torch.tensor(1.3, requires_grad=True)
    learnable_reference(x2, clip2, probs0 if probs1 is not None else [1.0], tops, signed).backward(grad)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-6, atol=0)  # sum_i p_i * mask * grad
    assert float(clip1.grad) == pytest.approx(grad_scale * float(clip2.grad), rel=1e-4, abs=1e-6)
    # and the straight-through mask, explicitly.
    low = -1.3 if signed else 0.0
    assert torch.equal(x1.grad, grad * ((x >= low) & (x <= 1.3)))


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_activation_gradients_with_channels_last_and_mismatched_grad_layout(path):
    tops = levels_of((2, 4), False)
    x = activations(False, seed=3, shape=(2, 6, 5, 4))
    grad = torch.randn(x.shape, generator=generator(4))
    probs = torch.tensor([0.4, 0.6])
    results = []
    for x_layout, grad_layout in ((torch.contiguous_format,) * 2, (torch.channels_last, torch.contiguous_format)):
        x1 = x.clone(memory_format=x_layout).requires_grad_()
        clip = torch.tensor(1.3, requires_grad=True)
        p = probs.clone().requires_grad_()
        _MixedActivationQuant.apply(x1, clip, p, tops, False, 1.0).backward(grad.contiguous(memory_format=grad_layout))
        results.append((x1.grad, clip.grad, p.grad))
    (gx_a, gc_a, gp_a), (gx_b, gc_b, gp_b) = results
    assert torch.equal(gx_a, gx_b)
    assert torch.allclose(gc_a, gc_b, rtol=1e-5) and torch.allclose(gp_a, gp_b, rtol=1e-5)


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_activation_clip_gradient_with_a_negative_clip(path):
    tops = levels_of((3, 4), False)
    x = activations(False, seed=5, clip=1.0)
    probs = torch.tensor([0.5, 0.5])
    for value in (1.0, -1.0):
        clip = torch.tensor(value, requires_grad=True)
        _MixedActivationQuant.apply(x, clip, probs, tops, False, 1.0).sum().backward()
        reference = torch.tensor(value, requires_grad=True)
        learnable_reference(x, reference, probs, tops, False).sum().backward()
        assert float(clip.grad) == pytest.approx(float(reference.grad), rel=1e-4)


def test_blocked_and_whole_activation_kernels_agree(monkeypatch):
    tops = levels_of((2, 3, 4, 6), True)
    x = activations(True, seed=6, shape=(5, 16, 9, 9))
    grad = torch.randn(x.shape, generator=generator(7))
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    results = []
    for blocked in (True, False):
        monkeypatch.setattr(kernels_blocked, "CPU_BLOCK_ELEMENTS", 256)
        if not blocked:
            monkeypatch.setattr(kernels_blocked, "applies", lambda *tensors: False)
        x1 = x.clone().requires_grad_()
        clip = torch.tensor(1.3, requires_grad=True)
        p = probs.clone().requires_grad_()
        out = _MixedActivationQuant.apply(x1, clip, p, tops, True, 0.5)
        out.backward(grad)
        results.append((out.detach(), x1.grad, clip.grad, p.grad))
    for first, second in zip(*results):
        assert torch.allclose(first, second, rtol=1e-5, atol=1e-6)


def ste_reference(x, clip, probs, tops, signed):
    """The mixture in plain, twice-differentiable autograd: scale * round_ste(clamp(x / scale))."""
    effective = clip.abs() + 1e-8
    out = 0
    for p, top in zip(probs, tops):
        scale = effective / top
        v = (x / scale).clamp(-top if signed else 0, top)
        out = out + p * scale * (v + (v.round() - v).detach())
    return out


@pytest.mark.parametrize("signed", [False, True])
def test_activation_double_backward_matches_plain_autograd(signed):
    """Grad-CAM through a quantized head differentiates the backward pass (create_graph)."""
    x = activations(signed, seed=8, shape=(4, 12)).requires_grad_()
    weight = torch.randn(3, 12, generator=generator(9)).requires_grad_()
    quantizer = ActivationQuantizer(init_clip=1.3)
    quantizer.signed.fill_(signed)
    logits = torch.nn.functional.linear(quantizer(x, (4,)), weight)
    (grad,) = torch.autograd.grad(logits.pow(2).sum(), x, create_graph=True)
    second = torch.autograd.grad(grad.pow(2).sum(), [x, weight])

    x2 = x.detach().clone().requires_grad_()
    weight2 = weight.detach().clone().requires_grad_()
    tops = levels_of((4,), signed)
    logits2 = torch.nn.functional.linear(ste_reference(x2, torch.tensor(1.3), [1.0], tops, signed), weight2)
    (grad2,) = torch.autograd.grad(logits2.pow(2).sum(), x2, create_graph=True)
    second2 = torch.autograd.grad(grad2.pow(2).sum(), [x2, weight2])
    assert torch.allclose(grad, grad2, atol=1e-5)
    for first, reference in zip(second, second2):
        assert torch.allclose(first, reference, rtol=1e-5, atol=1e-5)


def test_signed_flag_is_reread_after_in_place_writes_and_state_dict_loads():
    quantizer = ActivationQuantizer(init_clip=1.0)
    x = torch.linspace(-2, 2, 41)
    with torch.no_grad():
        assert float(quantizer(x, (4,)).min()) == 0.0
        quantizer.signed.fill_(True)
        assert float(quantizer(x, (4,)).min()) == -1.0
    other = ActivationQuantizer(init_clip=1.0)
    other.load_state_dict({"clip": torch.tensor(1.0), "signed": torch.tensor(False)})
    assert other.is_signed() is False
    other.load_state_dict(quantizer.state_dict())
    assert other.is_signed() is True


# --- weights ----------------------------------------------------------------------------------


def weights(seed: int = 0, shape=(6, 8, 3, 3)) -> torch.Tensor:
    return torch.randn(shape, generator=generator(seed)) * 0.1


def fake_quant_weight(w, bits):
    levels = signed_levels(bits)
    scale = weight_scale(w, bits)
    zero_point = torch.zeros(scale.shape, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, -levels, levels)


def test_weight_scale_matches_std_and_max_abs():
    w = weights(shape=(16, 64, 3, 3)) + 0.01
    flat = w.flatten(1)
    for bits in (2, 3, 4, 6, 8):
        clip = torch.minimum(flat.abs().amax(1), grid._GAUSSIAN_CLIP[bits] * flat.std(1))
        assert torch.allclose(weight_scale(w, bits), clip / signed_levels(bits), rtol=1e-6)
    assert torch.equal(weight_scale(w, 12), flat.abs().amax(1) / signed_levels(12))


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("shape", [(6, 8, 3, 3), (10, 7), (5, 1)])
def test_single_bitwidth_weight_equals_fake_quantize_per_channel(path, bits, shape):
    w = weights(bits, shape)
    w1 = w.clone().requires_grad_()
    w2 = w.clone().requires_grad_()
    grad = torch.randn(shape, generator=generator(1))
    out1, out2 = quantize_weight(w1, bits), fake_quant_weight(w2, bits)
    assert torch.equal(out1, out2)
    out1.backward(grad)
    out2.backward(grad)
    assert torch.equal(w1.grad, w2.grad)  # the fake-quantize straight-through mask


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("bits", [(2, 3, 4, 6), (2, 8), (4, 32)])
def test_weight_mixture_values_and_gradients(path, bits):
    w = weights(3, (9, 16, 3, 3))
    grad = torch.randn(w.shape, generator=generator(4))
    probs0 = torch.linspace(-0.5, 0.5, len(bits)).softmax(0)

    w1 = w.clone().requires_grad_()
    probs1 = probs0.clone().requires_grad_()
    out1 = mix_weights(w1, bits, probs1)
    out1.backward(grad)

    # Plain autograd over fake_quantize_per_channel_affine branches (the scales are constants).
    w2 = w.clone().requires_grad_()
    probs2 = probs0.clone().requires_grad_()
    branches = [w2 if b >= 32 else fake_quant_weight(w2, b) for b in bits]
    out2 = sum(p * branch for p, branch in zip(probs2, branches))
    out2.backward(grad)

    assert torch.allclose(out1, out2, atol=1e-7)
    assert torch.allclose(w1.grad, w2.grad, atol=1e-6)
    assert torch.allclose(probs1.grad, probs2.grad, rtol=1e-5, atol=1e-6)


def test_blocked_and_whole_weight_kernels_agree(monkeypatch):
    w = weights(5, (40, 24, 3, 3))
    grad = torch.randn(w.shape, generator=generator(6))
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    results = []
    for blocked in (True, False):
        monkeypatch.setattr(kernels_blocked, "CPU_BLOCK_ELEMENTS", 256)
        if not blocked:
            monkeypatch.setattr(kernels_blocked, "applies", lambda *tensors: False)
        w1 = w.clone().requires_grad_()
        p = probs.clone().requires_grad_()
        out = mix_weights(w1, (2, 3, 4, 6), p)
        out.backward(grad)
        results.append((out.detach(), w1.grad, p.grad))
    for first, second in zip(*results):
        assert torch.allclose(first, second, rtol=1e-5, atol=1e-7)


def test_weight_quantizer_keeps_no_branch_copies_for_backward():
    w = weights(7, (32, 16, 3, 3)).requires_grad_()
    probs = torch.full((4,), 0.25, requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mix_weights(w, (2, 3, 4, 6), probs)
    elements = sum(t.numel() for t in saved if t is not w and t is not probs)
    assert elements <= 4 * w.shape[0]  # the (K, C) scales only
    assert math.isclose(sum(t.numel() for t in saved if t is w), w.numel())


# --- the opt-in compiled kernels ---------------------------------------------------------------


def compiled_and_eager(monkeypatch, x_shape, w_shape, bits, single_bits=None):
    """Values and gradients of one activation mixture and one weight mixture (and, with
    ``single_bits``, one single-bitwidth weight), from the eager kernels, then from the compiled
    ones (compiled afresh in this process; the test fails if they fell back to eager)."""
    x = activations(False, seed=10, shape=x_shape)
    grad = torch.randn(x.shape, generator=generator(11))
    w = weights(12, w_shape)
    grad_w = torch.randn(w.shape, generator=generator(13))
    tops = levels_of(bits, False)
    probs = torch.linspace(1.0, 2.0, len(bits))
    probs = probs / probs.sum()

    def step():
        x1 = x.clone().requires_grad_()
        clip = torch.tensor(1.3, requires_grad=True)
        p = probs.clone().requires_grad_()
        out = _MixedActivationQuant.apply(x1, clip, p, tops, False, 0.5)
        out.backward(grad)
        w1 = w.clone().requires_grad_()
        pw = probs.flip(0).clone().requires_grad_()
        out_w = mix_weights(w1, bits, pw)
        out_w.backward(grad_w)
        values = [out.detach(), x1.grad, clip.grad, p.grad, out_w.detach(), w1.grad, pw.grad]
        if single_bits is not None:
            w2 = w.clone().requires_grad_()
            single = quantize_weight(w2, single_bits)
            single.backward(grad_w)
            values += [single.detach(), w2.grad]
        return values

    eager = step()
    # One compile thread: starting inductor's pool of compile workers costs more than it saves here.
    monkeypatch.setattr(inductor_config, "compile_threads", 1)
    monkeypatch.setattr(kernels_compiled, "_compiled", {})
    monkeypatch.setattr(kernels_compiled, "_compiled_once", {})
    kernels_compiled.use_compiled_kernels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a failed compile would fall back silently
            compiled = step()
        assert kernels_compiled.compiled_kernels_enabled()
    finally:
        kernels_compiled.use_compiled_kernels(False)
    return eager, compiled


@pytest.mark.skipif(not kernels_compiled.compiler_available("cpu"), reason="no C++ compiler for torch.compile")
def test_compiled_kernels_match_the_eager_ones_at_a_small_shape(monkeypatch):
    """The four compiled kernels (activation and weight, forward and backward), each compiled
    once, in one compile thread: about 40 s with a cold inductor cache on two busy CPU cores
    (8 s from the cache), the price of running them in CI."""
    assert [b.name for b in backends.BACKENDS] == ["compiled", "blocked", "whole"]
    eager, compiled = compiled_and_eager(monkeypatch, (2, 3, 4, 4), (4, 3, 3, 3), (2, 4))
    for first, second in zip(eager, compiled):
        assert torch.allclose(first, second, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(
    not os.environ.get("GMPQ_TEST_COMPILE"), reason="compiles with torch.compile (about a minute); set GMPQ_TEST_COMPILE=1"
)
def test_compiled_kernels_match_the_eager_ones(monkeypatch):
    eager, compiled = compiled_and_eager(monkeypatch, (4, 8, 9, 9), (24, 8, 3, 3), (2, 3, 4, 6), single_bits=4)
    assert torch.equal(compiled[7], eager[7]) and torch.equal(compiled[8], eager[8])  # one bitwidth: exact
    for first, second in zip(eager, compiled):
        assert torch.allclose(first, second, rtol=1e-5, atol=1e-6)


def test_a_failing_compiled_kernel_falls_back_to_the_eager_ones(monkeypatch):
    """No C++ compiler or Triton: one warning, then the eager kernels' values and gradients."""
    x = activations(False, seed=20, shape=(2, 4, 5, 5))
    w = weights(21, (6, 4, 3, 3))
    tops = levels_of((2, 3), False)

    def step():
        x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
        clip = torch.tensor(1.3, requires_grad=True)
        p = torch.tensor([0.3, 0.7], requires_grad=True)
        out = _MixedActivationQuant.apply(x1, clip, p, tops, False, 0.5).sum() + mix_weights(w1, (2, 3), p).pow(2).sum()
        out.backward()
        return [out.detach(), x1.grad, clip.grad, p.grad, w1.grad]

    eager = step()

    def broken(*args, **kwargs):
        raise RuntimeError("no working C++ compiler")

    monkeypatch.setattr(kernels_compiled, "_compiled", dict.fromkeys(kernels_compiled._KERNELS, broken))
    assert kernels_compiled.compiled_kernels_enabled()
    with pytest.warns(RuntimeWarning, match="compiled quantizer kernels failed .*no working C\\+\\+ compiler"):
        fallback = step()
    assert not kernels_compiled.compiled_kernels_enabled()
    for first, second in zip(eager, fallback):
        assert torch.equal(first, second)
