"""The GMPQ search loss: both attribution paths, its terms, and search steps that move α."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.data.bundle import make_synthetic
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.objective.complexity_term import BudgetMultiplier, ReferenceComplexity
from gmpq_ray.core.objective.loss import GMPQObjective
from gmpq_ray.core.policy import LayerBits
from gmpq_ray.core.quant.calibration import calibrate
from gmpq_ray.core.quant.convert import supernet_layers, to_supernet
from gmpq_ray.core.train.loop import run_epoch

DIGITS_SEARCHED = [f"features.{i}.conv" for i in range(1, 7)]
DIGITS_COST = CostModel.for_model("digits_cnn", 16, 10, 1)


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
