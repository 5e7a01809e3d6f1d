"""Small in-memory data sets: the embedded digits default and a synthetic set for tests.

Nothing here touches the network: scikit-learn ships the digits (1,797 real 8x8 images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from gmpq_ray.core.config import require
from gmpq_ray.core.errors import UserInputError


@dataclass
class DataBundle:
    """Train and validation splits with what a model needs to know about them."""

    train: TensorDataset
    val: TensorDataset
    num_classes: int
    in_channels: int
    image_size: int

    def loaders(self, batch_size: int, seed: int = 0, drop_last: bool = False) -> tuple[DataLoader, DataLoader]:
        """Shuffled train loader (seeded) and ordered validation loader."""
        generator = torch.Generator().manual_seed(seed)
        train = DataLoader(self.train, batch_size=batch_size, shuffle=True, generator=generator, drop_last=drop_last)
        val = DataLoader(self.val, batch_size=max(batch_size, 256), shuffle=False)
        return train, val


def load_digits(
    image_size: int = 16,
    val_fraction: float = 0.2,
    classes: Sequence[int] | None = None,
    split_seed: int = 0,
) -> DataBundle:
    """scikit-learn's digits, upsampled to ``image_size`` and standardized, with a fixed split.

    Args:
        image_size: side of the (bilinearly upsampled) images.
        val_fraction: share of each class held out for validation.
        classes: keep only these digits (labels are remapped to 0..k-1), e.g. (0, 1, 2, 3, 4)
            for a "small" data set against all ten.
        split_seed: the split is stratified and fixed by this seed.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise UserInputError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    if image_size < 8:
        raise UserInputError(f"data.image_size must be at least 8 for the digits, got {image_size}")
    digits = sklearn_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    if classes is not None:
        keep = sorted(set(int(c) for c in classes))
        if not keep or any(c < 0 or c > 9 for c in keep):
            raise UserInputError(f"data.classes must be digits 0-9, got {list(classes)}")
        mask = np.isin(labels, keep)
        images, labels = images[mask], np.searchsorted(keep, labels[mask])
    train_x, val_x, train_y, val_y = train_test_split(
        images, labels, test_size=val_fraction, stratify=labels, random_state=split_seed
    )

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)[:, None]
        return F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)

    train_t, val_t = to_tensor(train_x), to_tensor(val_x)
    mean, std = train_t.mean(), train_t.std()
    return DataBundle(
        train=TensorDataset((train_t - mean) / std, torch.from_numpy(train_y)),
        val=TensorDataset((val_t - mean) / std, torch.from_numpy(val_y)),
        num_classes=int(labels.max()) + 1,
        in_channels=1,
        image_size=image_size,
    )


def make_synthetic(
    num_train: int = 256,
    num_val: int = 128,
    num_classes: int = 4,
    image_size: int = 16,
    in_channels: int = 3,
    seed: int = 0,
) -> DataBundle:
    """Class templates plus noise: learnable in a few steps, for tests and benchmarks."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, in_channels, image_size, image_size, generator=generator)

    def split(n: int) -> TensorDataset:
        labels = torch.randint(0, num_classes, (n,), generator=generator)
        noise = torch.randn(n, in_channels, image_size, image_size, generator=generator)
        return TensorDataset(templates[labels] + 0.8 * noise, labels)

    return DataBundle(split(num_train), split(num_val), num_classes, in_channels, image_size)


@dataclass
class DataConfig:
    """The small data set the search trains on."""

    name: Literal["digits", "synthetic"] = "digits"
    image_size: int = 16
    batch_size: int = 64
    val_fraction: float = 0.2
    classes: list[int] | None = None
    num_train: int = 256
    num_val: int = 128
    num_classes: int = 4
    in_channels: int = 3
    seed: int = 0

    def validate(self, where: str) -> None:
        require(self.batch_size >= 1, f"{where}.batch_size", "must be at least 1")
        require(self.image_size >= 8, f"{where}.image_size", "must be at least 8")
        require(0 < self.val_fraction < 1, f"{where}.val_fraction", "must be between 0 and 1")
        require(self.num_train >= 1 and self.num_val >= 1, f"{where}", "num_train and num_val must be positive")

    def load(self) -> DataBundle:
        """Build the data set (offline: the digits ship with scikit-learn)."""
        if self.name == "digits":
            return load_digits(self.image_size, self.val_fraction, self.classes, self.seed)
        return make_synthetic(self.num_train, self.num_val, self.num_classes, self.image_size, self.in_channels, self.seed)
