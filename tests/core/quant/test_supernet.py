"""The supernet: mixed-precision layers, model conversion, pinning a policy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.quant.convert import (
    apply_policy,
    argmax_policy,
    default_fixed_layers,
    fixed_quant_layers,
    pinned_policy,
    quantizable_layers,
    searched_layers,
    supernet_layers,
    to_supernet,
)
from gmpq_ray.core.quant.functions import quantize_weight
from gmpq_ray.core.quant.layers import MixedPrecisionConv2d, QuantConv2d, QuantLinear

DIGITS_SEARCHED = [f"features.{i}.conv" for i in range(1, 7)]


# --- layers -------------------------------------------------------------------------------------


def mixed_conv(w_candidates=(2, 3, 4), a_candidates=(2, 4)) -> tuple[nn.Conv2d, MixedPrecisionConv2d]:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    layer = MixedPrecisionConv2d.from_float(conv, w_candidates, a_candidates)
    with torch.no_grad():
        layer.act_quant.clip.fill_(2.0)
    return conv, layer


def test_mixed_conv_shares_parameters_and_has_uniform_alphas():
    conv, layer = mixed_conv()
    assert layer.weight is conv.weight and layer.bias is conv.bias
    assert layer.alpha_w.shape == (3,) and layer.alpha_a.shape == (2,)
    p_w, p_a = layer.probs()
    assert torch.allclose(p_w, torch.full((3,), 1 / 3)) and torch.allclose(p_a, torch.full((2,), 0.5))
    e_w, e_a = layer.expected_bits()
    assert e_w.item() == pytest.approx(3.0) and e_a.item() == pytest.approx(3.0)
    # w_bit_values / a_bit_values are derived, not saved.
    assert set(layer.state_dict()) == {"weight", "bias", "alpha_w", "alpha_a", "act_quant.clip", "act_quant.signed"}


def test_mixed_conv_argmax_and_chosen_forward():
    _, layer = mixed_conv()
    with torch.no_grad():
        layer.alpha_w.copy_(torch.tensor([0.0, 2.0, 1.0]))
        layer.alpha_a.copy_(torch.tensor([3.0, 0.0]))
    assert layer.argmax_bits() == LayerBits(3, 2)
    x = torch.rand(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
    layer.chosen = LayerBits(3, 2)
    pinned = layer(x)
    expected = nn.functional.conv2d(layer.act_quant(x, (2,)), quantize_weight(layer.weight, 3), layer.bias, padding=1)
    assert torch.allclose(pinned, expected, atol=1e-6)
    # With (nearly) one-hot alphas the mixture is the pinned branch.
    layer.chosen = None
    with torch.no_grad():
        layer.alpha_w.copy_(torch.tensor([-50.0, 50.0, -50.0]))
        layer.alpha_a.copy_(torch.tensor([50.0, -50.0]))
    assert torch.allclose(layer(x), pinned, atol=1e-5)


def test_mixed_conv_forward_is_the_mixture_of_mixtures():
    _, layer = mixed_conv()
    with torch.no_grad():
        layer.alpha_w.copy_(torch.tensor([0.3, -0.1, 0.5]))
        layer.alpha_a.copy_(torch.tensor([0.2, -0.4]))
    x = torch.rand(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 3
    p_w, p_a = layer.probs()
    mixed_x = sum(p * layer.act_quant(x, (b,)) for p, b in zip(p_a, (2, 4)))
    mixed_w = sum(p * quantize_weight(layer.weight, b) for p, b in zip(p_w, (2, 3, 4)))
    expected = nn.functional.conv2d(mixed_x, mixed_w, layer.bias, padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    layer(x).sum().backward()
    for grad in (layer.alpha_w.grad, layer.alpha_a.grad, layer.weight.grad, layer.act_quant.clip.grad):
        assert grad is not None and float(grad.abs().sum()) > 0


# --- conversion -----------------------------------------------------------------------------------


def test_to_supernet_swaps_searched_and_fixed_layers(digits_fp):
    supernet = to_supernet(digits_fp, [2, 3, 4], [2, 3, 4])
    assert list(supernet_layers(supernet)) == DIGITS_SEARCHED
    fixed = fixed_quant_layers(supernet)
    assert list(fixed) == ["features.0.conv", "fc"]
    assert all((m.w_bits, m.a_bits) == (8, 8) for m in fixed.values())
    assert isinstance(fixed["features.0.conv"], QuantConv2d) and isinstance(fixed["fc"], QuantLinear)
    # The swapped layers are still Conv2d/Linear, so names and layer lists are unchanged.
    assert default_fixed_layers(supernet) == ["features.0.conv", "fc"]
    assert searched_layers(supernet) == DIGITS_SEARCHED
    assert supernet(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_to_supernet_with_custom_fixed_layers(digits_fp):
    supernet = to_supernet(digits_fp, [2, 4], [4], fixed_layers=["features.0.conv", "features.1.conv", "fc"], fixed_bits=LayerBits(6, 5))
    assert list(supernet_layers(supernet)) == DIGITS_SEARCHED[1:]
    assert (supernet.features[1].conv.w_bits, supernet.features[1].conv.a_bits) == (6, 5)
    assert supernet.features[2].conv.w_candidates == (2, 4) and supernet.features[2].conv.a_candidates == (4,)


def test_to_supernet_rejects_unknown_fixed_layers(digits_fp):
    with pytest.raises(UserInputError, match=r"fixed_layers: \['features\.0'\]"):
        to_supernet(digits_fp, [2, 4], [2, 4], fixed_layers=["features.0", "fc"])


def test_to_supernet_keeps_parameter_names_so_fp_state_dicts_load(digits_fp):
    fp_state = digits_fp.state_dict()
    torch.manual_seed(99)
    supernet = to_supernet(create_model("digits_cnn", num_classes=10, in_channels=1), [2, 3, 4], [2, 3, 4])
    result = supernet.load_state_dict(fp_state, strict=False)
    assert result.unexpected_keys == []
    expected_missing = {f"{name}.{key}" for name in DIGITS_SEARCHED for key in ("alpha_w", "alpha_a")}
    expected_missing |= {f"{name}.act_quant.{key}" for name in quantizable_layers(supernet) for key in ("clip", "signed")}
    assert set(result.missing_keys) == expected_missing
    for key, value in fp_state.items():
        assert torch.equal(supernet.state_dict()[key], value)
    # And the other way: a supernet checkpoint's weights load into the FP model.
    back = create_model("digits_cnn", num_classes=10, in_channels=1).load_state_dict(supernet.state_dict(), strict=False)
    assert back.missing_keys == [] and set(back.unexpected_keys) == expected_missing


def test_argmax_policy(digits_fp, batch, make_supernet):
    supernet = make_supernet(digits_fp, *batch)
    policy = argmax_policy(supernet, "digits_cnn", input_size=16)
    assert policy.model == "digits_cnn" and policy.input_size == 16
    assert list(policy.layers) == DIGITS_SEARCHED
    for name, layer in supernet_layers(supernet).items():
        assert policy.layers[name] == LayerBits((2, 3, 4)[int(layer.alpha_w.argmax())], (2, 3, 4)[int(layer.alpha_a.argmax())])
    assert policy.fixed_layers == {"features.0.conv": LayerBits(8, 8), "fc": LayerBits(8, 8)}
    assert not policy.is_uniform()  # random alphas


# --- pinning a policy -----------------------------------------------------------------------------


def mixed_policy(fixed: dict[str, LayerBits]) -> Policy:
    bits = [(2, 4), (4, 2), (3, 3), (2, 2), (4, 4), (3, 2)]
    return Policy("digits_cnn", {n: LayerBits(w, a) for n, (w, a) in zip(DIGITS_SEARCHED, bits)}, fixed)


def fixed_model_like(digits_fp: nn.Module, supernet: nn.Module, policy: Policy) -> nn.Module:
    """``apply_policy`` on the FP model, with the supernet's weights and calibrated clips."""
    model = apply_policy(copy.deepcopy(digits_fp), policy).eval()
    result = model.load_state_dict(supernet.state_dict(), strict=False)
    assert result.missing_keys == []
    assert set(result.unexpected_keys) == {f"{n}.{k}" for n in DIGITS_SEARCHED for k in ("alpha_w", "alpha_a")}
    return model


def test_pinned_policy_equals_the_fixed_policy_model(digits_fp, batch, make_supernet):
    images, labels = batch
    supernet = make_supernet(digits_fp, images, labels)
    policy = mixed_policy({"features.0.conv": LayerBits(8, 8), "fc": LayerBits(8, 8)})
    fixed_model = fixed_model_like(digits_fp, supernet, policy)
    with torch.no_grad():
        expected = fixed_model(images)
        mixture = supernet(images)
        with pinned_policy(supernet, policy):
            pinned = supernet(images)
            assert supernet.features[1].conv.chosen == LayerBits(2, 4)
        assert all(layer.chosen is None for layer in supernet_layers(supernet).values())
        after = supernet(images)
    assert torch.allclose(pinned, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(mixture, expected, rtol=0, atol=1e-5)  # the mixture is another network
    assert torch.equal(after, mixture)


def test_pinned_policy_rejects_a_policy_for_other_layers(digits_fp, batch, make_supernet):
    supernet = make_supernet(digits_fp, *batch)
    policy = mixed_policy({})
    policy.layers["layer1.0.conv1"] = LayerBits(2, 2)
    with pytest.raises(UserInputError, match="unknown layer"):
        pinned_policy(supernet, policy)


def test_pinned_policy_runs_the_policys_fixed_bits(digits_fp, batch, make_supernet):
    """A policy whose fixed layers differ from the supernet's (here 4/4 against 8/8) runs at its
    own fixed bits while pinned, and the supernet's come back afterwards: the test fails if
    pinning left the fixed layers (or any searched layer) as they were."""
    images, labels = batch
    supernet = make_supernet(digits_fp, images, labels)
    policy = mixed_policy({"features.0.conv": LayerBits(4, 4), "fc": LayerBits(4, 4)})
    at_eight = mixed_policy({"features.0.conv": LayerBits(8, 8), "fc": LayerBits(8, 8)})
    with torch.no_grad():
        expected = fixed_model_like(digits_fp, supernet, policy)(images)
        expected_at_eight = fixed_model_like(digits_fp, supernet, at_eight)(images)
        with pinned_policy(supernet, policy):
            pinned = supernet(images)
            assert (supernet.features[0].conv.w_bits, supernet.fc.a_bits) == (4, 4)
        assert (supernet.features[0].conv.w_bits, supernet.fc.a_bits) == (8, 8)
    assert not torch.allclose(expected, expected_at_eight, rtol=0, atol=1e-4)  # the fixed bits matter here
    assert torch.allclose(pinned, expected, rtol=0, atol=1e-6)
