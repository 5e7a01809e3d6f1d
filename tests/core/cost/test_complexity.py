"""MACs and BOPs: a hand-computed network, the paper's ResNet figures, depthwise convs, expected BOPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gmpq_ray.core.cost.bops import CostModel, format_bops, module_macs
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.quant.convert import supernet_layers, to_supernet


class Tiny(nn.Module):
    """Three convs (one strided, one grouped, one with bias) and a linear head on 3x12x12 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # -> 8x12x12
        self.body = nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=True),  # -> 16x6x6
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False),  # -> 16x6x6, grouped
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.body(self.conv1(x))), 1))


def conv_macs(out_channels: int, in_channels: int, groups: int, kernel: int, h_out: int, w_out: int) -> int:
    return out_channels * in_channels // groups * kernel * kernel * h_out * w_out


HAND_MACS = {
    "conv1": conv_macs(8, 3, 1, 3, 12, 12),  # 31,104
    "body.0": conv_macs(16, 8, 1, 3, 6, 6),  # 41,472 (the bias adds no MACs)
    "body.2": conv_macs(16, 16, 4, 3, 6, 6),  # 20,736
    "fc": 16 * 5,
}


def test_module_macs_match_hand_count():
    assert module_macs(Tiny(), (3, 12, 12)) == HAND_MACS
    assert HAND_MACS["conv1"] == 31_104 and HAND_MACS["body.2"] == 20_736


def test_module_macs_on_meta_device():
    with torch.device("meta"):
        model = Tiny()
    assert module_macs(model, (3, 12, 12)) == HAND_MACS


def test_cost_model_for_module_splits_fixed_and_searched():
    cost = CostModel.for_module(Tiny(), (3, 12, 12))
    assert dict(cost.macs) == HAND_MACS
    assert cost.fixed_layers == ("conv1", "fc")
    assert cost.searched == ("body.0", "body.2")
    assert cost.searched_macs() == HAND_MACS["body.0"] + HAND_MACS["body.2"]


def test_policy_bops_hand_policy_with_fixed_layers():
    cost = CostModel.for_module(Tiny(), (3, 12, 12))
    policy = Policy(
        "tiny",
        layers={"body.0": LayerBits(4, 3), "body.2": LayerBits(2, 5)},
        fixed_layers={"conv1": LayerBits(8, 6)},  # fc is not listed: it takes fixed_bits
    )
    searched = 41_472 * 4 * 3 + 20_736 * 2 * 5
    fixed_default = 31_104 * 8 * 6 + 80 * 8 * 8
    assert cost.policy_bops(policy) == (searched, searched + fixed_default)
    fixed_four = 31_104 * 8 * 6 + 80 * 4 * 4
    assert cost.policy_bops(policy, fixed_bits=LayerBits(4, 4)) == (searched, searched + fixed_four)


def test_uniform_policy_and_uniform_bops():
    cost = CostModel.for_module(Tiny(), (3, 12, 12))
    policy = cost.uniform_policy("tiny", 3, 2, fixed_bits=LayerBits(8, 8))
    assert set(policy.layers) == {"body.0", "body.2"} and set(policy.fixed_layers) == {"conv1", "fc"}
    assert all(b == LayerBits(3, 2) for b in policy.layers.values())
    assert all(b == LayerBits(8, 8) for b in policy.fixed_layers.values())
    assert cost.uniform_bops(32, 32) == sum(HAND_MACS.values()) * 1024
    # uniform_policy without fixed bits puts the fixed layers at the same bits: total == uniform_bops
    same = cost.uniform_policy("tiny", 4, 4)
    assert cost.policy_bops(same)[1] == cost.uniform_bops(4, 4)


def test_resnet18_at_224_matches_the_paper():
    cost = CostModel.for_model("resnet18", 224)
    fp32 = cost.uniform_bops(32, 32)
    assert fp32 == pytest.approx(1853.4e9, rel=0.01)  # DESIGN.md's FP32 figure
    assert fp32 == pytest.approx(1857.6e9, rel=1e-4)  # torchvision's ResNet-18 counted exactly
    assert cost.fixed_layers == ("conv1", "fc")
    assert len(cost.searched) == 19  # 16 block convs + 3 downsample convs
    assert cost.macs["conv1"] == 64 * 3 * 7 * 7 * 112 * 112
    assert cost.macs["fc"] == 512 * 1000
    assert cost.macs["layer1.0.conv1"] == 64 * 64 * 9 * 56 * 56
    assert cost.macs["layer2.0.downsample.0"] == 128 * 64 * 1 * 28 * 28
    searched_3bit, _ = cost.policy_bops(cost.uniform_policy("resnet18", 3, 3, LayerBits(8, 8)))
    assert searched_3bit == pytest.approx(15.26e9, rel=1e-3)
    assert searched_3bit == cost.searched_macs() * 9


def test_cifar_stem_keeps_searched_layer_names():
    imagenet = CostModel.for_model("resnet18", 224)
    cifar = CostModel.for_model("resnet18", 32, num_classes=10, cifar_stem=True)
    assert cifar.searched == imagenet.searched
    assert cifar.macs["conv1"] == 64 * 3 * 3 * 3 * 32 * 32  # 3x3 stride-1 stem, no max-pool
    assert cifar.macs["layer1.0.conv1"] == 64 * 64 * 9 * 32 * 32


def test_resnet50_searched_layers():
    cost = CostModel.for_model("resnet50", 224)
    assert sum(cost.macs.values()) == pytest.approx(4.09e9, rel=0.01)
    searched_2bit = cost.searched_macs() * 4
    assert searched_2bit == pytest.approx(15.9e9, rel=0.01)  # the figure in searchspaces/resnet50.yaml


def test_mobilenet_v2_depthwise_convs_count_groups():
    cost = CostModel.for_model("mobilenet_v2", 224)
    # features.1 is the first inverted residual (expansion 1): a 3x3 depthwise conv on 32x112x112.
    assert cost.macs["features.1.conv.0.0"] == 32 * 1 * 9 * 112 * 112
    # features.2: 1x1 expansion 16->96 at 112x112, then a stride-2 depthwise conv to 56x56.
    assert cost.macs["features.2.conv.0.0"] == 96 * 16 * 112 * 112
    assert cost.macs["features.2.conv.1.0"] == 96 * 1 * 9 * 56 * 56
    assert cost.fixed_layers == ("features.0.0", "classifier.1")
    assert sum(cost.macs.values()) == pytest.approx(300.8e6, rel=0.01)


def test_expected_bops_with_equal_alphas_and_gradient():
    model = Tiny()
    cost = CostModel.for_module(model, (3, 12, 12))
    supernet = to_supernet(model, [2, 4, 6], [3, 5], fixed_layers=list(cost.fixed_layers))
    expected = cost.expected_bops(supernet)
    mean_w, mean_a = (2 + 4 + 6) / 3, (3 + 5) / 2
    assert float(expected.detach()) == pytest.approx(cost.searched_macs() * mean_w * mean_a, rel=1e-6)

    expected.backward()
    layers = supernet_layers(supernet)
    assert set(layers) == set(cost.searched)
    for layer in layers.values():
        # d/dα_w of (p·bits) at uniform p is p_i (b_i - mean): negative for 2 bits, positive for 6.
        assert layer.alpha_w.grad is not None and layer.alpha_a.grad is not None
        assert layer.alpha_w.grad[0] < 0 < layer.alpha_w.grad[2]
        assert layer.alpha_a.grad[0] < 0 < layer.alpha_a.grad[1]
        assert float(layer.alpha_w.grad.sum()) == pytest.approx(0.0, abs=1e-3 * float(layer.alpha_w.grad.abs().max()))


def test_expected_bops_follow_alphas():
    model = Tiny()
    cost = CostModel.for_module(model, (3, 12, 12))
    supernet = to_supernet(model, [2, 4], [2, 4])
    with torch.no_grad():
        for layer in supernet_layers(supernet).values():
            layer.alpha_w.copy_(torch.tensor([50.0, 0.0]))
            layer.alpha_a.copy_(torch.tensor([0.0, 50.0]))
    assert float(cost.expected_bops(supernet).detach()) == pytest.approx(cost.searched_macs() * 2 * 4, rel=1e-5)


def test_format_bops():
    assert format_bops(15.306e9) == "15.31 G"
    assert format_bops(20.74e6) == "0.02074 G"
