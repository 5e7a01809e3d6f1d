"""The supernet: mixed-precision layers, model conversion, pinning a policy, the GMPQ objective."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.data.bundle import make_synthetic
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.objective.complexity_term import BudgetMultiplier, ReferenceComplexity
from gmpq_ray.core.objective.loss import GMPQObjective
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.quant.calibration import calibrate
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
from gmpq_ray.core.train.loop import run_epoch

DIGITS_SEARCHED = [f"features.{i}.conv" for i in range(1, 7)]
DIGITS_COST = CostModel.for_model("digits_cnn", 16, 10, 1)


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


def test_pinned_policy_honours_or_refuses_the_policys_fixed_bits(digits_fp, batch, make_supernet):
    """A policy whose fixed layers differ from the supernet's (here 4/4 against 8/8) must not be
    evaluated silently as a different network: either run its bits or refuse it."""
    images, labels = batch
    supernet = make_supernet(digits_fp, images, labels)
    policy = mixed_policy({"features.0.conv": LayerBits(4, 4), "fc": LayerBits(4, 4)})
    fixed_model = fixed_model_like(digits_fp, supernet, policy)
    try:
        with torch.no_grad(), pinned_policy(supernet, policy):
            pinned = supernet(images)
    except UserInputError:
        return
    with torch.no_grad():
        expected = fixed_model(images)
    assert torch.allclose(pinned, expected, atol=1e-6), "pinned_policy ignored the policy's fixed_layers bits"


# --- the GMPQ objective ---------------------------------------------------------------------------


def objective_step(supernet, teacher, images, labels, attribution, **kwargs):
    # An fp32 teacher: the two paths are the same math, and bf16 rounding would differ between them.
    kwargs.setdefault("teacher_precision", "fp32")
    objective = GMPQObjective(supernet, teacher, "digits_cnn", DIGITS_COST, 33e6, lambda_attr=40.0, lambda_c=0.5,
                              attribution=attribution, **kwargs)
    supernet.train()
    loss, logits = objective(supernet, images, labels)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in supernet.named_parameters() if p.grad is not None}
    return float(loss.detach()), {k: float(v) for k, v in objective.last_terms.items()}, grads


def assert_same_step(first, second):
    (loss_a, terms_a, grads_a), (loss_b, terms_b, grads_b) = first, second
    assert terms_a == pytest.approx(terms_b, rel=1e-5, abs=1e-8), f"loss terms: {terms_a} vs {terms_b}"
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys()
    # Float32 noise: an alpha's gradient is a softmax-weighted difference of large dot products,
    # so allow 0.2% of each parameter's largest gradient. A real disagreement is 5-30%.
    mismatched = {}
    for name, grad in grads_a.items():
        scale = float(grad.abs().max())
        error = float((grad - grads_b[name]).abs().max())
        if error > 2e-3 * scale + 1e-7:
            mismatched[name] = f"{error / max(scale, 1e-12):.2g}"
    assert mismatched == {}, f"gradients differ (max error / max |grad|): {mismatched}"


def test_objective_closed_form_and_autograd_agree(digits_fp, batch, make_supernet):
    """Same loss and same gradients for every supernet parameter, with the default 8-bit classifier."""
    images, labels = batch
    supernet = make_supernet(digits_fp, images, labels)
    teacher = copy.deepcopy(digits_fp)
    closed = objective_step(copy.deepcopy(supernet), copy.deepcopy(teacher), images, labels, "closed_form")
    autograd = objective_step(copy.deepcopy(supernet), copy.deepcopy(teacher), images, labels, "autograd")
    assert {n for n in closed[2] if n.endswith(("alpha_w", "alpha_a"))} == {f"{n}.{k}" for n in DIGITS_SEARCHED for k in ("alpha_w", "alpha_a")}
    assert_same_step(closed, autograd)


def test_objective_paths_agree_with_an_unquantized_classifier_input(digits_fp, batch, make_supernet):
    """With the classifier's input left in full precision the head is exactly GAP + linear."""
    images, labels = batch
    supernet = make_supernet(digits_fp, images, labels, fixed_bits=LayerBits(8, 32))
    teacher = copy.deepcopy(digits_fp)
    closed = objective_step(copy.deepcopy(supernet), copy.deepcopy(teacher), images, labels, "closed_form")
    autograd = objective_step(copy.deepcopy(supernet), copy.deepcopy(teacher), images, labels, "autograd")
    assert closed[1]["attr"] > 0 and closed[1]["complexity"] != 0
    assert_same_step(closed, autograd)


def test_objective_terms(digits_fp, batch, make_supernet):
    images, labels = batch
    supernet = make_supernet(digits_fp, images, labels)
    first_macs = DIGITS_COST.macs[DIGITS_COST.searched[0]]
    objective = GMPQObjective(supernet, copy.deepcopy(digits_fp), "digits_cnn", DIGITS_COST, 33e6, 40.0, 0.5,
                              complexity=ReferenceComplexity(3e-4, first_macs))
    loss, logits = objective(supernet, images, labels)
    loss, logits = loss.detach(), logits.detach()
    terms = objective.last_terms
    assert logits.shape == (32, 10)
    expected_bops = DIGITS_COST.expected_bops(supernet)
    # The reference's complexity_loss: cd * E[BOPs] / MACs of the first searched layer.
    assert float(terms["complexity"]) == pytest.approx(3e-4 * float(expected_bops.detach()) / first_macs, rel=1e-5)
    assert float(terms["ce"]) == pytest.approx(float(nn.functional.cross_entropy(logits, labels)), rel=1e-5)
    assert float(loss) == pytest.approx(float(terms["ce"] + 40.0 * terms["attr"] + terms["complexity"]), rel=1e-5)
    assert objective.teacher.training is False
    assert not any(p.requires_grad for p in objective.teacher.parameters())
    with pytest.raises(ValueError, match="attribution"):
        GMPQObjective(supernet, copy.deepcopy(digits_fp), "digits_cnn", DIGITS_COST, 33e6, 1.0, 1.0, attribution="saliency")


def test_objective_exponent_fixed_or_capacity_aware(digits_fp, batch, make_supernet):
    images, labels = batch
    supernet = make_supernet(digits_fp, images, labels)
    fixed = GMPQObjective(supernet, copy.deepcopy(digits_fp), "digits_cnn", DIGITS_COST, 33e6, 40.0, 0.5, p=3.0)
    aware = GMPQObjective(supernet, copy.deepcopy(digits_fp), "digits_cnn", DIGITS_COST, 33e6, 40.0, 0.5, kappa=24.0)
    bits = aware.expected_bops()[1]
    assert fixed.exponent(bits) == 3.0
    # p = kappa * mean_l 1 / (E[b_w] E[b_a]): the reference's --product form.
    inverse = [1.0 / (float(w.detach()) * float(a.detach())) for w, a in bits]
    assert float(aware.exponent(bits)) == pytest.approx(24 * sum(inverse) / len(inverse), rel=1e-5)
    # The default complexity term aims at the limit with a multiplier starting at lambda_c.
    assert isinstance(fixed.complexity, BudgetMultiplier) and float(fixed.complexity.multiplier) == 0.5


@pytest.mark.parametrize("attribution", ["closed_form", "autograd"])
def test_objective_evaluates_without_grad(digits_fp, batch, make_supernet, attribution):
    """The objective is a ``loss_fn`` for ``run_epoch``, whose evaluation pass runs under no_grad."""
    images, labels = batch
    supernet = make_supernet(digits_fp, images, labels)
    objective = GMPQObjective(supernet, copy.deepcopy(digits_fp), "digits_cnn", DIGITS_COST, 33e6, 40.0, 0.5,
                              attribution=attribution)
    result = run_epoch(supernet, [(images, labels)], objective)
    with torch.enable_grad():
        reference, _ = objective(supernet.eval(), images, labels)
    assert result.samples == 32
    assert result.loss == pytest.approx(float(reference.detach()), rel=1e-5)


def test_search_steps_move_alpha_and_lower_expected_bops():
    torch.manual_seed(0)
    fp = create_model("digits_cnn", num_classes=4, in_channels=1).eval()
    data = make_synthetic(num_train=96, num_val=8, num_classes=4, image_size=16, in_channels=1, seed=1)
    train_loader, _ = data.loaders(32, seed=0)
    supernet = to_supernet(copy.deepcopy(fp), [2, 3, 4], [2, 3, 4])
    calibrate(supernet, train_loader)
    cost = CostModel.for_model("digits_cnn", 16, 4, 1)
    # The reference's linear push, as strong as 50 x E[BOPs] / limit.
    first_macs = cost.macs[cost.searched[0]]
    objective = GMPQObjective(supernet, copy.deepcopy(fp), "digits_cnn", cost, 33e6, lambda_attr=1.0, lambda_c=0.0,
                              complexity=ReferenceComplexity(50.0 * first_macs / 33e6, first_macs))
    alphas = [p for n, p in supernet.named_parameters() if n.endswith(("alpha_w", "alpha_a"))]
    weights = [p for n, p in supernet.named_parameters() if not n.endswith(("alpha_w", "alpha_a"))]
    alpha_opt = torch.optim.SGD(alphas, lr=0.05, momentum=0.9)
    weight_opt = torch.optim.SGD(weights, lr=0.01, momentum=0.9)
    before_alpha = [a.detach().clone() for a in alphas]
    before_bops = float(cost.expected_bops(supernet).detach())
    assert before_bops == pytest.approx(cost.searched_macs() * 9, rel=1e-6)  # uniform alphas: 3 x 3 bits
    result = run_epoch(supernet, train_loader, objective, [weight_opt, alpha_opt])
    after_bops = float(cost.expected_bops(supernet).detach())
    assert result.samples == 96
    assert all(not torch.equal(a, b) for a, b in zip(alphas, before_alpha))
    assert after_bops < 0.95 * before_bops
    # The pressure is towards fewer bits, strongest on the layer with the most MACs.
    largest = supernet_layers(supernet)[max(cost.searched, key=cost.macs.__getitem__)]
    assert largest.alpha_w[0] > largest.alpha_w[2] and largest.alpha_a[0] > largest.alpha_a[2]


def test_budget_multiplier_brings_an_argmax_over_the_limit_into_the_band():
    """An argmax that starts near 4/4 bits everywhere (2.5 x limit and more) ends inside [0.85, 1] x limit.

    α start with a per-layer random part: with identical α, layers of equal MACs get identical
    complexity gradients and flip together (CE on this synthetic set hardly tells them apart),
    which no real search sees."""
    torch.manual_seed(0)
    fp = create_model("digits_cnn", num_classes=4, in_channels=1).eval()
    data = make_synthetic(num_train=256, num_val=8, num_classes=4, image_size=16, in_channels=1, seed=1)
    train_loader, _ = data.loaders(32, seed=0)
    supernet = to_supernet(copy.deepcopy(fp), [2, 3, 4], [2, 3, 4])
    calibrate(supernet, train_loader)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in supernet_layers(supernet).values():
            layer.alpha_w.copy_(torch.tensor([0.0, 0.0, 0.5]) + 0.3 * torch.randn(3, generator=generator))
            layer.alpha_a.copy_(torch.tensor([0.0, 0.0, 0.5]) + 0.3 * torch.randn(3, generator=generator))
    cost = CostModel.for_model("digits_cnn", 16, 4, 1)
    objective = GMPQObjective(supernet, copy.deepcopy(fp), "digits_cnn", cost, 33e6, lambda_attr=1.0, lambda_c=0.0)
    assert float(objective.argmax_bops()) / 33e6 > 2.5
    alphas = [p for n, p in supernet.named_parameters() if n.endswith(("alpha_w", "alpha_a"))]
    weights = [p for n, p in supernet.named_parameters() if not n.endswith(("alpha_w", "alpha_a"))]
    optimizers = [torch.optim.SGD(weights, lr=0.01, momentum=0.9), torch.optim.SGD(alphas, lr=0.3, momentum=0.9)]
    ratios = []
    for _ in range(12):
        run_epoch(supernet, train_loader, objective, optimizers)
        ratios.append(float(objective.argmax_bops()) / 33e6)
    assert 0.85 <= ratios[-1] <= 1.0, ratios
