"""The shared train/evaluate loop."""

from __future__ import annotations

import pytest
import torch

from gmpq_ray.core.data.bundle import make_synthetic
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.train.loop import NonFiniteLossError, cross_entropy, evaluate, run_epoch, train_classifier


def synthetic_loaders(seed: int = 0):
    data = make_synthetic(num_train=256, num_val=128, num_classes=4, image_size=16, in_channels=1, seed=seed)
    return data.loaders(32, seed=seed)


def test_run_epoch_trains_digits_cnn_on_synthetic_data():
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=4, in_channels=1)
    train_loader, val_loader = synthetic_loaders()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = evaluate(model, val_loader)
    results = [run_epoch(model, train_loader, cross_entropy, [optimizer]) for _ in range(3)]
    after = evaluate(model, val_loader)
    assert all(r.samples == 256 for r in results)
    assert results[-1].loss < results[0].loss
    assert after.accuracy > 0.9 and after.accuracy > before.accuracy
    assert after.samples == 128 and after.seconds >= 0


def test_evaluation_does_not_train():
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=4, in_channels=1)
    _, val_loader = synthetic_loaders()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def loss_fn(m, images, labels):
        seen.append((m.training, torch.is_grad_enabled()))
        return cross_entropy(m, images, labels)

    first = run_epoch(model, val_loader, loss_fn)
    assert seen == [(False, False)]
    # Evaluation leaves weights and BN statistics alone and is repeatable.
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert run_epoch(model, val_loader, loss_fn).loss == first.loss
    manual = torch.nn.functional.cross_entropy(model.eval()(val_loader.dataset.tensors[0]), val_loader.dataset.tensors[1])
    assert first.loss == pytest.approx(float(manual.detach()), rel=1e-5)


def test_nan_loss_raises():
    model = create_model("digits_cnn", num_classes=4, in_channels=1)
    train_loader, val_loader = synthetic_loaders()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def nan_loss(m, images, labels):
        logits = m(images)
        return logits.sum() * float("nan"), logits

    with pytest.raises(NonFiniteLossError, match="search epoch 1: the loss became nan"):
        run_epoch(model, train_loader, nan_loss, [optimizer], desc="search epoch 1")
    with pytest.raises(NonFiniteLossError, match="epoch: the loss became"):
        run_epoch(model, val_loader, nan_loss)

    def inf_loss(m, images, labels):
        logits = m(images)
        return logits.sum() * 0 + float("inf"), logits

    with pytest.raises(NonFiniteLossError):
        run_epoch(model, val_loader, inf_loss)


def test_train_classifier_history():
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=4, in_channels=1)
    train_loader, val_loader = synthetic_loaders(1)
    lines: list[str] = []
    history = train_classifier(model, train_loader, val_loader, epochs=2, progress=False, log=lines.append)
    assert [h["epoch"] for h in history] == [1, 2]
    assert set(history[0]) == {"epoch", "train_loss", "train_accuracy", "val_accuracy"}
    assert history[-1]["val_accuracy"] > 0.5
    assert len(lines) == 2 and lines[0].startswith("teacher epoch 1/2")
