"""timm CNNs through the registry (``timm:<name>``): build, convert, count, search, attribute.

Small variants at 32x32 with few classes, built with ``pretrained=False``: nothing downloads.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.registry import create_model, model_entry
from gmpq_ray.core.objective.attribution import FeatureTap, class_activation_map, gradcam_map
from gmpq_ray.core.objective.loss import GMPQObjective
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.quant.calibration import calibrate
from gmpq_ray.core.quant.convert import apply_policy, argmax_policy, searched_layers, supernet_layers, to_supernet
from gmpq_ray.core.train.evaluation import evaluate_with_arc
from gmpq_ray.core.train.teacher import fold_batch_norms, inference_teacher

pytest.importorskip("timm")

# One small member of each family the issue names; mobilenetv3 has a conv after the pool (no closed form).
TIMM_MODELS = ["timm:resnet10t", "timm:mobilenetv3_small_050", "timm:efficientnet_lite0", "timm:regnetx_002"]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_model_builds_converts_counts_and_searches(name):
    torch.manual_seed(0)
    entry = model_entry(name)
    teacher = create_model(name, num_classes=4, cifar_stem=True).eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    assert teacher(images).shape == (4, 4)
    grouped = [n for n, m in teacher.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert grouped or "resnet" in name  # depthwise (MobileNetV3, EfficientNet) or grouped (RegNetX) convs

    cost = CostModel.for_model(name, 224, 1000)
    assert set(cost.searched) == set(searched_layers(create_model(name, device="meta")))
    assert all(cost.macs[n] > 0 for n in cost.searched)
    uniform = cost.uniform_policy(name, 4, 4, LayerBits(8, 8))
    searched, total = cost.policy_bops(uniform)
    assert searched == cost.searched_macs() * 16 and total > searched

    supernet = to_supernet(copy.deepcopy(teacher), [2, 4], [2, 4])
    assert set(supernet_layers(supernet)) == set(cost.searched)
    assert {n: m.groups for n, m in supernet_layers(supernet).items()} == {
        n: m.groups for n, m in teacher.named_modules() if n in cost.searched}
    calibrate(supernet, [(images, labels)], num_batches=1)
    objective = GMPQObjective(supernet, teacher, name, cost, cost.searched_macs() * 9, 40.0, 1.0, teacher_precision="fp32")
    assert objective.attribution == ("closed_form" if entry.cam_head else "autograd")
    supernet.train()
    loss, logits = objective(supernet, images, labels)
    loss.backward()
    assert torch.isfinite(loss) and logits.shape == (4, 4)
    layer = next(iter(supernet_layers(supernet).values()))
    assert layer.alpha_w.grad is not None and layer.alpha_w.grad.abs().sum() > 0
    policy = argmax_policy(supernet, name)
    assert set(policy.layers) == set(cost.searched)


@pytest.mark.parametrize("name", ["timm:mobilenetv3_small_050", "timm:regnetx_002"])
def test_policy_at_32_bits_keeps_the_network_and_evaluates(name):
    """The module swap keeps stride, padding and groups of every conv: at 32 bits it is the FP net."""
    torch.manual_seed(0)
    teacher = create_model(name, num_classes=3, cifar_stem=True).eval()
    cost = CostModel.for_model(name, 32, 3)
    full = LayerBits(32, 32)
    policy = Policy(model=name, layers={n: full for n in cost.searched}, fixed_layers={n: full for n in cost.fixed_layers})
    student = apply_policy(copy.deepcopy(teacher), policy).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(student(images), teacher(images), rtol=1e-4, atol=1e-5)
    batches = [(images, torch.tensor([0, 1, 2]))]
    # Random weights give some all-zero maps (Spearman 0), so compare with the teacher against itself.
    assert evaluate_with_arc(student, teacher, name, batches).arc == pytest.approx(evaluate_with_arc(copy.deepcopy(teacher), teacher, name, batches).arc)


def test_entries_read_timm_interface():
    assert model_entry("timm:resnet10t").feature_module == "layer4"
    assert model_entry("timm:resnet10t").classifier == "fc" and model_entry("timm:resnet10t").cam_head
    assert model_entry("timm:efficientnet_lite0").feature_module == "bn2"
    assert (model_entry("timm:regnetx_002").classifier, model_entry("timm:regnetx_002").cam_head) == ("head.fc", True)
    assert not model_entry("timm:mobilenetv3_small_050").cam_head  # conv_head after the pool


def test_closed_form_matches_gradcam_on_a_timm_head():
    torch.manual_seed(0)
    model = create_model("timm:regnetx_002", num_classes=5, cifar_stem=True).eval()
    tap = FeatureTap(model, "timm:regnetx_002", leaf=True)
    labels = torch.tensor([0, 4])
    logits = model(torch.randn(2, 3, 32, 32))
    closed = class_activation_map(tap.features, tap.classifier_weight(), labels)
    autograd = gradcam_map(tap.features, logits, labels, create_graph=False)
    assert tap.features.shape[-2:] == (2, 2)
    torch.testing.assert_close(autograd, closed, rtol=1e-4, atol=1e-5)  # the reference's spatial sum: same scale


def test_teacher_folds_timm_batchnorm_act():
    torch.manual_seed(0)
    model = create_model("timm:efficientnet_lite0", num_classes=4, cifar_stem=True).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    images = torch.randn(2, 3, 32, 32)
    folded = inference_teacher(model, "fp32")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), rtol=1e-4, atol=1e-5)
    assert fold_batch_norms(copy.deepcopy(model)) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("timm:vit_tiny_patch16_224", r"has no convolution to search"),
        ("timm:tf_efficientnet_b0", r"Conv2dSame"),
        ("timm:resnet18x", r"unknown timm model 'resnet18x'; close names: .*resnet18"),
    ],
)
def test_timm_models_that_cannot_be_searched_say_why(name, message):
    with pytest.raises(UserInputError, match=message):
        model_entry(name)
