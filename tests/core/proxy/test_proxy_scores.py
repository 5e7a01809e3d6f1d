"""Zero-cost proxies: one layer quantized at a time, downstream re-run only, damages that make sense."""

from __future__ import annotations

import pytest
import torch

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.data.bundle import make_synthetic
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import LayerBits
from gmpq_ray.core.proxy import PROXIES, LayerProbe, calibrated_probe_model, get_proxy, score_layers
from gmpq_ray.core.train.loop import train_classifier

CANDIDATES = [LayerBits(w, a) for w in (2, 4) for a in (2, 4)]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = make_synthetic(num_train=64, num_val=16, num_classes=10, image_size=16, in_channels=1)
    teacher = create_model("digits_cnn", 10, 1)
    train_loader, val_loader = data.loaders(16)
    train_classifier(teacher, train_loader, val_loader, 3, 0.05, 5e-4, "cpu", progress=False, log=lambda line: None)
    teacher.eval()
    layers = list(CostModel.for_model("digits_cnn", 16, 10, 1).searched)
    batches = [(x, y) for x, y in zip(data.train.tensors[0].split(16), data.train.tensors[1].split(16))][:2]
    return teacher, layers, batches, calibrated_probe_model(teacher, layers, batches)


def test_downstream_rerun_equals_a_full_run(setup):
    teacher, layers, batches, model = setup
    probe = LayerProbe(model, "digits_cnn", layers)
    images = batches[0][0]
    reference, env = probe.reference(images)
    with torch.no_grad():
        assert torch.allclose(reference.logits, teacher(images), atol=1e-5)
    for layer in (layers[0], layers[3]):
        quantized = probe.quantized(images, env, layer, LayerBits(2, 3))
        module = model.get_submodule(layer)
        module.w_bits, module.a_bits = 2, 3
        with torch.no_grad():
            full = model(images)
        module.w_bits = module.a_bits = 32
        assert torch.allclose(quantized.logits, full, atol=1e-5)
        assert (quantized.logits - reference.logits).abs().max() > 1e-6
    # the probe leaves the model in full precision
    assert all(model.get_submodule(n).w_bits == 32 for n in layers)


@pytest.mark.parametrize("name", sorted(PROXIES))
def test_every_proxy_scores_every_choice_and_2_bits_hurt_more_than_4(name, setup):
    _, layers, batches, model = setup
    scores = score_layers(name, model, "digits_cnn", batches, layers[:2], CANDIDATES)
    assert set(scores) == set(layers[:2])
    for row in scores.values():
        assert set(row) == set(CANDIDATES)
        assert all(value >= -1e-9 for value in row.values())
        assert row[LayerBits(2, 2)] > row[LayerBits(4, 4)]


def test_unknown_proxy_and_labels_missing_are_user_errors(setup):
    _, layers, batches, model = setup
    with pytest.raises(UserInputError, match="search.proxy: unknown proxy 'snip'"):
        get_proxy("snip")
    unlabeled = [(images, None) for images, _ in batches]
    with pytest.raises(UserInputError, match="'fit' needs labels"):
        score_layers("fit", model, "digits_cnn", unlabeled, layers[:1], CANDIDATES)
    assert score_layers("kl", model, "digits_cnn", unlabeled, layers[:1], CANDIDATES)  # label-free


def test_bf16_probe_agrees_with_fp32_on_what_matters(setup):
    _, layers, batches, model = setup
    fp32 = score_layers("kl", model, "digits_cnn", batches, layers[:2], CANDIDATES)
    bf16 = score_layers("kl", model, "digits_cnn", batches, layers[:2], CANDIDATES, precision="bf16")
    for layer in layers[:2]:
        assert bf16[layer][LayerBits(2, 2)] == pytest.approx(fp32[layer][LayerBits(2, 2)], rel=0.3)
        assert bf16[layer][LayerBits(2, 2)] > bf16[layer][LayerBits(4, 4)]
