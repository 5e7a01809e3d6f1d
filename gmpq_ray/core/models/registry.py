"""Model registry: one way to build every network the engine searches.

Each entry builds a torchvision (or small built-in) FP network and says where its attribution
comes from: the module whose output is the last feature map ``F`` before global pooling, and
the classifier ``Linear`` whose weights give the closed-form class activation map.

CIFAR-stem variants replace only the stem (a 3x3 stride-1 first conv, no max-pool), so every
searched layer keeps its name and a policy found on the small model applies to the large one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from gmpq_ray.core.config import short_repr
from gmpq_ray.core.errors import UserInputError


@dataclass(frozen=True)
class ModelEntry:
    """How to build a model and where its attribution head is."""

    name: str
    build: Callable[..., nn.Module]
    feature_module: str
    classifier: str
    # Whether the head is global average pooling then the classifier only: then the
    # closed-form class activation map is the attribution; otherwise Grad-CAM by autograd.
    cam_head: bool = True


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, feature_module: str, classifier: str):
    """Decorator that registers ``build(num_classes, in_channels, cifar_stem)`` under ``name``."""

    def wrap(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelEntry(name, build, feature_module, classifier)
        return build

    return wrap


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; raises a :class:`UserInputError` naming the choices.

    ``timm:<name>`` (``timm:efficientnet_b0``) is any timm CNN, read through timm's own
    interface (:mod:`gmpq_ray.core.models.timm_models`; timm is imported only then).
    """
    if name.startswith("timm:"):
        from gmpq_ray.core.models.timm_models import timm_entry

        return timm_entry(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserInputError(f"unknown model {short_repr(name)}; available: {', '.join(list_models())}, or timm:<name>") from None


def create_model(
    name: str,
    num_classes: int = 1000,
    in_channels: int = 3,
    cifar_stem: bool = False,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Build a full-precision model with freshly initialized weights (nothing is downloaded).

    Example:
        >>> model = create_model("resnet18", num_classes=10, cifar_stem=True)
        >>> type(model.layer1[0].conv1).__name__
        'Conv2d'
    """
    entry = model_entry(name)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return entry.build(num_classes=num_classes, in_channels=in_channels, cifar_stem=cifar_stem)


def _stem_conv(in_channels: int, out_channels: int, cifar_stem: bool, imagenet_kernel: int, imagenet_stride: int) -> nn.Conv2d:
    if cifar_stem:
        return nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
    return nn.Conv2d(in_channels, out_channels, imagenet_kernel, stride=imagenet_stride, padding=imagenet_kernel // 2, bias=False)


def _resnet(factory, num_classes: int, in_channels: int, cifar_stem: bool) -> nn.Module:
    model = factory(weights=None, num_classes=num_classes)
    if cifar_stem or in_channels != 3:
        model.conv1 = _stem_conv(in_channels, 64, cifar_stem, 7, 2)
    if cifar_stem:
        model.maxpool = nn.Identity()
    return model


@register_model("resnet18", feature_module="layer4", classifier="fc")
def resnet18(num_classes: int = 1000, in_channels: int = 3, cifar_stem: bool = False) -> nn.Module:
    """torchvision ResNet-18."""
    return _resnet(torchvision.models.resnet18, num_classes, in_channels, cifar_stem)


@register_model("resnet50", feature_module="layer4", classifier="fc")
def resnet50(num_classes: int = 1000, in_channels: int = 3, cifar_stem: bool = False) -> nn.Module:
    """torchvision ResNet-50."""
    return _resnet(torchvision.models.resnet50, num_classes, in_channels, cifar_stem)


@register_model("mobilenet_v2", feature_module="features", classifier="classifier.1")
def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3, cifar_stem: bool = False) -> nn.Module:
    """torchvision MobileNetV2; the CIFAR stem keeps its 3x3 conv at stride 1."""
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    if cifar_stem or in_channels != 3:
        model.features[0][0] = _stem_conv(in_channels, 32, cifar_stem, 3, 2)
    return model


class ConvBNReLU(nn.Sequential):
    """conv, batch norm, ReLU, named ``conv``, ``bn``, ``relu``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)


class DigitsCNN(nn.Module):
    """A 7-conv network for the embedded digits (16x16 inputs): stem, six searched convs, GAP, fc."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        plan = [(in_channels, w, 1), (w, 2 * w, 1), (2 * w, 2 * w, 2), (2 * w, 4 * w, 1),
                (4 * w, 4 * w, 1), (4 * w, 4 * w, 2), (4 * w, 4 * w, 1)]
        self.features = nn.Sequential(*[ConvBNReLU(i, o, s) for i, o, s in plan])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model("digits_cnn", feature_module="features", classifier="fc")
def digits_cnn(num_classes: int = 10, in_channels: int = 1, cifar_stem: bool = False) -> nn.Module:
    """The small CNN of the embedded default (``cifar_stem`` has no effect)."""
    return DigitsCNN(num_classes=num_classes, in_channels=in_channels)
