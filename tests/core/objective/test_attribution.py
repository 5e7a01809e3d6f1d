"""Attribution maps (closed form vs autograd), the imitation loss, Spearman and ARC."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.objective.attribution import (
    FeatureTap,
    attribution_rank_consistency,
    average_ranks,
    capacity_exponent,
    class_activation_map,
    gradcam_map,
    imitation_loss,
    normalize_maps,
    spearman,
)
from gmpq_ray.core.policy import LayerBits
from gmpq_ray.core.quant.layers import QuantLinear


def assert_maps_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max())
    assert scale > 0
    worst = float((actual - expected).abs().max()) / scale
    assert torch.allclose(actual, expected, rtol=rel, atol=rel * scale), f"maps differ by up to {worst:.3g} of their maximum"


def cam_and_gradcam(model: torch.nn.Module, name: str, images: torch.Tensor, labels: torch.Tensor):
    tap = FeatureTap(model, name)
    try:
        logits = model(images)
        cam = class_activation_map(tap.features, tap.classifier_weight(), labels)
        gradcam = gradcam_map(tap.features, logits, labels, create_graph=False)
    finally:
        tap.remove()
    return cam, gradcam, tap


def test_closed_form_matches_gradcam_on_fp_digits_cnn(digits_fp, batch):
    images, labels = batch
    cam, gradcam, tap = cam_and_gradcam(digits_fp, "digits_cnn", images, labels)
    assert cam.shape == (32, 4, 4)  # 16x16 input, two stride-2 convs
    assert_maps_close(cam, gradcam)
    assert float(cam.detach().min()) >= 0
    # The class matters: another target gives another map.
    other = class_activation_map(tap.features, tap.classifier_weight(), (labels + 1) % 10)
    assert not torch.allclose(other, cam)


def test_closed_form_matches_gradcam_on_resnet18_cifar_stem():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, cifar_stem=True).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([3, 7])
    cam, gradcam, _ = cam_and_gradcam(model, "resnet18", images, labels)
    assert cam.shape == (2, 4, 4)
    assert_maps_close(cam, gradcam)


def test_leaf_tap_gives_gradcam_of_a_frozen_model(digits_fp, batch):
    images, labels = batch
    frozen = digits_fp.requires_grad_(False)
    tap = FeatureTap(frozen, "digits_cnn", leaf=True)
    with torch.enable_grad():
        logits = frozen(images)
        gradcam = gradcam_map(tap.features, logits, labels, create_graph=False)
    assert tap.features.is_leaf and tap.features.requires_grad
    assert_maps_close(class_activation_map(tap.features.detach(), tap.classifier_weight(), labels), gradcam)
    tap.remove()
    # Without the leaf copy the frozen features carry no graph to differentiate.
    plain = FeatureTap(frozen, "digits_cnn")
    logits = frozen(images)
    assert not plain.features.requires_grad
    with pytest.raises(RuntimeError):
        gradcam_map(plain.features, logits, labels)


def test_feature_tap_remove_stops_recording(digits_fp, batch):
    images, _ = batch
    tap = FeatureTap(digits_fp, "digits_cnn")
    digits_fp(images[:2])
    first = tap.features
    tap.remove()
    digits_fp(images[:4])
    assert tap.features is first and first.shape[0] == 2


def test_classifier_weight_of_a_quantized_classifier_is_quantized(digits_fp):
    digits_fp.fc = QuantLinear.from_float(digits_fp.fc, LayerBits(2, 8))
    tap = FeatureTap(digits_fp, "digits_cnn")
    weight = tap.classifier_weight()
    assert not torch.equal(weight, digits_fp.fc.weight)
    assert all(row.unique().numel() <= 3 for row in weight)


def test_closed_form_matches_gradcam_on_a_supernet_with_fp_classifier_input(digits_fp, batch, make_supernet):
    """Quantized weights everywhere (the classifier's too), the classifier's input left unclipped:
    the head is exactly GAP + linear, so the closed form is Grad-CAM with W_q.

    (With the default 8-bit classifier input the two differ; see test_supernet.py's
    test_objective_closed_form_and_autograd_agree and test_evaluation.py.)
    """
    images, labels = batch
    supernet = make_supernet(digits_fp, images, labels, fixed_bits=LayerBits(4, 32))
    cam, gradcam, tap = cam_and_gradcam(supernet, "digits_cnn", images, labels)
    assert isinstance(tap.classifier, QuantLinear)
    assert not torch.equal(tap.classifier_weight(), tap.classifier.weight)
    assert_maps_close(cam, gradcam)


# --- imitation loss, capacity exponent ----------------------------------------------------------


def random_maps(seed: int = 0, shape=(4, 5, 5)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_imitation_loss_zero_for_identical_maps():
    maps = random_maps()
    assert float(imitation_loss(maps, maps, 1.0)) == pytest.approx(0.0, abs=1e-10)
    # Normalization removes scale; the exponent sharpens the teacher before comparison.
    assert float(imitation_loss(3.0 * maps, maps, 1.0)) == pytest.approx(0.0, abs=1e-10)
    assert float(imitation_loss(maps**3, maps, 3.0)) == pytest.approx(0.0, abs=1e-10)
    assert float(imitation_loss(maps, maps, 3.0)) > 1e-3


def test_imitation_loss_value_and_gradient():
    student = random_maps(1).requires_grad_()
    teacher = random_maps(2).requires_grad_()
    loss = imitation_loss(student, teacher, 2.0)
    s = normalize_maps(student.detach())
    t = normalize_maps(teacher.detach() ** 2)
    # Averaged over batch and pixels, as the reference's cal_l2loss (.pow(2).mean()).
    assert loss.item() == pytest.approx(float((s - t).pow(2).mean()), rel=1e-6)
    assert loss.item() == pytest.approx(float((s - t).pow(2).sum(1).mean()) / 25, rel=1e-6)
    assert 0 < loss.item() <= 2.0 / 25  # unit vectors with non-negative entries, 5x5 pixels
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher.grad is None  # the teacher is a target, never trained through this loss


def test_normalize_maps_unit_norm():
    flat = normalize_maps(random_maps())
    assert flat.shape == (4, 25)
    assert torch.allclose(flat.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.equal(normalize_maps(torch.zeros(2, 3, 3)), torch.zeros(2, 9))  # eps: no NaN


def test_capacity_exponent():
    bits = [(torch.tensor(2.0), torch.tensor(2.0)), (torch.tensor(4.0), torch.tensor(4.0))]
    assert float(capacity_exponent(bits)) == pytest.approx(24 * (1 / 4 + 1 / 16) / 2)
    assert float(capacity_exponent(bits, kappa=8.0)) == pytest.approx(8 * (1 / 4 + 1 / 16) / 2)
    w = torch.tensor(3.0, requires_grad=True)
    p = capacity_exponent([(w, w)])
    assert not p.requires_grad
    # Lower bits, higher exponent.
    assert float(capacity_exponent([(torch.tensor(2.0), torch.tensor(2.0))])) > float(p)


# --- ranks, Spearman, ARC -----------------------------------------------------------------------


def test_average_ranks_with_ties():
    ranks = average_ranks(torch.tensor([[0.0, 0.0, 5.0, 1.0, 0.0]]))
    assert ranks.tolist() == [[2.0, 2.0, 5.0, 4.0, 2.0]]


def test_spearman_identical_reversed_constant():
    a = torch.rand(3, 20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(spearman(a, a), torch.ones(3))
    assert torch.allclose(spearman(a, 2 * a + 1), torch.ones(3))  # monotone transforms keep ranks
    assert torch.allclose(spearman(a, -a), -torch.ones(3))
    constant = torch.zeros(3, 20)
    assert torch.equal(spearman(a, constant), torch.zeros(3))


def test_spearman_matches_scipy_with_ties():
    generator = torch.Generator().manual_seed(3)
    a = torch.randint(0, 4, (6, 30), generator=generator).float()  # many ties, like ReLU maps
    b = torch.randint(0, 5, (6, 30), generator=generator).float()
    b[0] = a[0] * 2  # one identical ranking, one perfectly reversed
    b[1] = -a[1]
    ours = spearman(a, b)
    for row in range(6):
        expected = stats.spearmanr(a[row].numpy(), b[row].numpy()).statistic
        assert float(ours[row]) == pytest.approx(float(expected), abs=1e-5)
    assert float(ours[0]) == pytest.approx(1.0) and float(ours[1]) == pytest.approx(-1.0)


def test_attribution_rank_consistency_is_mean_spearman_over_images():
    student = random_maps(4)
    teacher = random_maps(5)
    arc = attribution_rank_consistency(student, teacher)
    per_image = spearman(student.flatten(1), teacher.flatten(1))
    assert float(arc) == pytest.approx(float(per_image.mean()))
    assert float(attribution_rank_consistency(teacher, teacher)) == pytest.approx(1.0)
    assert float(attribution_rank_consistency(-teacher, teacher)) == pytest.approx(-1.0)
