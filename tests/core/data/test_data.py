"""The embedded digits and the synthetic data set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_digits

from gmpq_ray.core.data.bundle import load_digits, make_synthetic
from gmpq_ray.core.errors import UserInputError


def test_digits_split_sizes_and_shapes():
    data = load_digits()
    # 60 / 20 / 20 %: the test split is held out for the reports of compare and ablate.
    assert (len(data.train), len(data.val), len(data.test)) == (1079, 359, 359)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 16)
    images, labels = data.train.tensors
    assert images.shape == (1079, 1, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    # Standardized with the training split's statistics.
    assert float(images.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(images.std()) == pytest.approx(1.0, abs=1e-5)


def test_digits_split_is_deterministic_and_stratified():
    first, second = load_digits(), load_digits()
    for a, b in zip(first.train.tensors + first.val.tensors, second.train.tensors + second.val.tensors):
        assert torch.equal(a, b)
    other = load_digits(split_seed=1)
    assert not torch.equal(first.val.tensors[1], other.val.tensors[1])
    # Stratified: every class holds about 20% of its images out.
    counts = np.bincount(sklearn_digits().target)
    val_counts = torch.bincount(first.val.tensors[1], minlength=10).numpy()
    assert np.all(np.abs(val_counts - 0.2 * counts) <= 1)


def test_digits_class_subset_remaps_labels():
    small = load_digits(classes=(0, 1, 2, 3, 4))
    assert (len(small.train), len(small.val), len(small.test), small.num_classes) == (541, 180, 180, 5)
    assert set(small.train.tensors[1].tolist()) == set(range(5))
    pair = load_digits(classes=(7, 3))
    assert pair.num_classes == 2
    assert set(pair.train.tensors[1].tolist()) == {0, 1}
    # Labels follow the sorted digits: 3 -> 0, 7 -> 1. The number of images per digit tells them apart.
    target = sklearn_digits().target
    total = torch.bincount(torch.cat([pair.train.tensors[1], pair.val.tensors[1], pair.test.tensors[1]])).tolist()
    assert total == [int((target == 3).sum()), int((target == 7).sum())]


def test_digits_test_split_is_disjoint_and_stratified():
    data = load_digits()
    rows = {split: {tuple(x.flatten().tolist()) for x in getattr(data, split).tensors[0]} for split in ("train", "val", "test")}
    assert not rows["test"] & rows["train"] and not rows["test"] & rows["val"]
    counts = np.bincount(sklearn_digits().target)
    test_counts = torch.bincount(data.test.tensors[1], minlength=10).numpy()
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1)
    assert data.has_test and len(data.eval_loader("test", 64).dataset) == 359
    assert make_synthetic(num_test=16).test is not None


def test_digits_image_size():
    data = load_digits(image_size=8)
    assert data.train.tensors[0].shape[1:] == (1, 8, 8) and data.image_size == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 0.0001}, "empty test split"),
        ({"image_size": 4}, "image_size"),
        ({"classes": ()}, "classes"),
        ({"classes": (3, 10)}, "classes"),
        ({"classes": (-1, 2)}, "classes"),
    ],
)
def test_digits_invalid_arguments(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        load_digits(**kwargs)


def test_loaders():
    data = make_synthetic(num_train=100, num_val=40)
    train, val = data.loaders(32, seed=3)
    batches = [labels for _, labels in train]
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    assert sorted(torch.cat(batches).tolist()) == sorted(data.train.tensors[1].tolist())
    again = [labels for _, labels in data.loaders(32, seed=3)[0]]
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # seeded shuffle
    assert not all(torch.equal(a, b) for a, b in zip(batches, [labels for _, labels in data.loaders(32, seed=4)[0]]))
    assert [len(b) for _, b in data.loaders(32, drop_last=True)[0]] == [32, 32, 32]
    val_batches = list(val)
    assert len(val_batches) == 1 and torch.equal(val_batches[0][1], data.val.tensors[1])  # ordered, >= 256 per batch


def test_make_synthetic_is_deterministic_and_shaped():
    a = make_synthetic(num_train=20, num_val=10, num_classes=3, image_size=8, in_channels=2, seed=5)
    b = make_synthetic(num_train=20, num_val=10, num_classes=3, image_size=8, in_channels=2, seed=5)
    c = make_synthetic(num_train=20, num_val=10, num_classes=3, image_size=8, in_channels=2, seed=6)
    assert a.train.tensors[0].shape == (20, 2, 8, 8) and a.val.tensors[0].shape == (10, 2, 8, 8)
    assert (a.num_classes, a.in_channels, a.image_size) == (3, 2, 8)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(a.val.tensors[1], b.val.tensors[1])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert int(a.train.tensors[1].max()) < 3
