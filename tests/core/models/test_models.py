"""The model registry: names, stems, attribution heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.registry import create_model, list_models, model_entry, register_model
from gmpq_ray.core.quant.convert import default_fixed_layers, searched_layers


def test_registry_lists_the_shipped_models():
    assert {"digits_cnn", "resnet18", "resnet50", "mobilenet_v2"} <= set(list_models())
    assert list_models() == sorted(list_models())


def test_unknown_model_names_the_choices():
    with pytest.raises(UserInputError, match=r"unknown model 'vgg16'; available: .*resnet18"):
        create_model("vgg16")


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_cifar_stem_keeps_searched_layer_names(name):
    imagenet = create_model(name, num_classes=1000, device="meta")
    cifar = create_model(name, num_classes=10, cifar_stem=True, device="meta")
    assert searched_layers(cifar) == searched_layers(imagenet)
    assert default_fixed_layers(cifar) == default_fixed_layers(imagenet)
    stem = cifar.get_submodule(default_fixed_layers(cifar)[0])
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    head = cifar.get_submodule(model_entry(name).classifier)
    assert isinstance(head, nn.Linear) and head.out_features == 10


def test_resnet_cifar_stem_drops_the_max_pool():
    assert isinstance(create_model("resnet18", cifar_stem=True, device="meta").maxpool, nn.Identity)
    assert isinstance(create_model("resnet18", device="meta").maxpool, nn.MaxPool2d)


def test_in_channels_changes_only_the_stem():
    model = create_model("resnet18", num_classes=10, in_channels=1, device="meta")
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert create_model("mobilenet_v2", in_channels=1, device="meta").features[0][0].in_channels == 1


def test_meta_device_builds_no_storage():
    model = create_model("resnet50", device="meta")
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name", ["digits_cnn", "resnet18", "mobilenet_v2"])
def test_feature_module_output_feeds_the_classifier(name):
    entry = model_entry(name)
    channels, size = (1, 16) if name == "digits_cnn" else (3, 32)
    model = create_model(name, num_classes=10, in_channels=channels, cifar_stem=True, device="meta").eval()
    seen = {}
    model.get_submodule(entry.feature_module).register_forward_hook(lambda m, a, out: seen.update(features=out))
    logits = model(torch.empty(2, channels, size, size, device="meta"))
    classifier = model.get_submodule(entry.classifier)
    assert seen["features"].dim() == 4 and seen["features"].shape[1] == classifier.in_features
    assert logits.shape == (2, 10)


def test_digits_cnn_layout():
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    assert default_fixed_layers(model) == ["features.0.conv", "fc"]
    assert searched_layers(model) == [f"features.{i}.conv" for i in range(1, 7)]
    assert model(torch.randn(3, 1, 16, 16)).shape == (3, 10)


def test_register_model():
    @register_model("tiny_test_net", feature_module="body", classifier="head")
    def tiny(num_classes: int = 10, in_channels: int = 3, cifar_stem: bool = False) -> nn.Module:
        return nn.Sequential()

    try:
        assert "tiny_test_net" in list_models()
        assert model_entry("tiny_test_net").feature_module == "body"
        assert isinstance(create_model("tiny_test_net"), nn.Sequential)
    finally:
        from gmpq_ray.core.models import registry as models

        models._REGISTRY.pop("tiny_test_net")
