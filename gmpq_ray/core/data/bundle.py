"""The data a job names: the embedded digits, a synthetic set for tests, and image data sets.

:class:`DataConfig` is the ``data:`` section of search and finetune jobs. The digits and the
synthetic set live in memory (scikit-learn ships the digits: 1,797 real 8x8 images, nothing is
downloaded); image data sets (CIFAR-10, Cars, Flowers, Aircraft, Pets, Food, ImageNet, any
ImageFolder tree) are read from a local ``root`` by :mod:`gmpq_ray.core.data.datasets`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

if TYPE_CHECKING:
    import numpy as np
from gmpq_ray.core.config import MAX_CLASSES, MAX_IMAGE_SIZE, MAX_IN_CHANNELS, key_path, require, require_seed, short_repr
from gmpq_ray.core.data.datasets import DATASETS, build_split, has_test_split, num_classes_of
from gmpq_ray.core.errors import UserInputError


@dataclass
class DataBundle:
    """Train, validation and (where the data set has one) held-out test splits, with what a
    model needs to know about them.

    Searches train on ``train`` and select on ``val``; ``gmpq compare`` and ``gmpq ablate``
    report the candidates they select between on ``test``, which no selection has seen. The
    splits are tensors in memory (digits, synthetic) or image data sets decoded on the fly by
    ``num_workers`` loader processes.
    """

    train: Dataset
    val: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    num_workers: int = 0
    test: Dataset | None = None

    def loaders(self, batch_size: int, seed: int = 0, drop_last: bool = False) -> tuple[DataLoader, DataLoader]:
        """Shuffled train loader (seeded) and ordered validation loader."""
        generator = torch.Generator().manual_seed(seed)
        workers = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        train = DataLoader(self.train, batch_size=batch_size, shuffle=True, generator=generator, drop_last=drop_last, **workers)
        val = DataLoader(self.val, batch_size=max(batch_size, 256), shuffle=False, **workers)
        return train, val

    def eval_loader(self, split: str, batch_size: int) -> DataLoader:
        """Ordered loader of the ``val`` or ``test`` split; ``test`` falls back to ``val`` where
        the data set has no held-out split (see :attr:`has_test`)."""
        dataset = self.test if split == "test" and self.test is not None else self.val
        return DataLoader(dataset, batch_size=max(batch_size, 256), shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    @property
    def has_test(self) -> bool:
        return self.test is not None


def load_digits(
    image_size: int = 16,
    val_fraction: float = 0.2,
    classes: Sequence[int] | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.2,
) -> DataBundle:
    """scikit-learn's digits, upsampled to ``image_size`` and standardized, with a fixed
    train / val / test split (60 / 20 / 20 % by default).

    Args:
        image_size: side of the (bilinearly upsampled) images.
        val_fraction: share of each class held out for validation (selection).
        test_fraction: share of each class held out for the final test (never selected on).
        classes: keep only these digits (labels are remapped to 0..k-1), e.g. (0, 1, 2, 3, 4)
            for a "small" data set against all ten.
        split_seed: the split is stratified and fixed by this seed.
    """
    # Imported here: the rest of core (and benchmarks/gpu_check.py) needs PyTorch only.
    import numpy as np
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise UserInputError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    if not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise UserInputError(f"data.test_fraction must be above 0 and leave training data beside val_fraction, got {test_fraction}")
    if image_size < 8:
        raise UserInputError(f"data.image_size must be at least 8 for the digits, got {image_size}")
    digits = sklearn_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    if classes is not None:
        check_digit_classes(classes, "data.classes")
        keep = sorted(set(int(c) for c in classes))
        mask = np.isin(labels, keep)
        images, labels = images[mask], np.searchsorted(keep, labels[mask])
    test_count = int(round(test_fraction * len(labels)))
    if test_count < 1:
        raise UserInputError(f"data.test_fraction {test_fraction} leaves an empty test split ({len(labels)} images)")
    check_split(labels, val_fraction, "data.val_fraction")
    check_split(labels, test_fraction, "data.test_fraction", held_out="test")
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, labels, test_size=test_count, stratify=labels, random_state=split_seed + 1
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=int(round(val_fraction * len(labels))), stratify=rest_y, random_state=split_seed
    )

    def to_tensor(x: np.ndarray) -> torch.Tensor:  # noqa: F821 - annotations are not evaluated
        t = torch.from_numpy(x)[:, None]
        return F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)

    train_t, val_t, test_t = to_tensor(train_x), to_tensor(val_x), to_tensor(test_x)
    mean, std = train_t.mean(), train_t.std()
    return DataBundle(
        train=TensorDataset((train_t - mean) / std, torch.from_numpy(train_y)),
        val=TensorDataset((val_t - mean) / std, torch.from_numpy(val_y)),
        num_classes=int(labels.max()) + 1,
        in_channels=1,
        image_size=image_size,
        test=TensorDataset((test_t - mean) / std, torch.from_numpy(test_y)),
    )


def check_digit_classes(classes: Sequence[int], where: str) -> None:
    """Digits kept by ``data.classes``: at least two different ones, each 0-9, none repeated."""
    require(all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 9 for c in classes), where,
            f"must be digits 0-9, got {short_repr(list(classes))}")
    require(len(set(classes)) == len(classes), where, f"repeats a digit: {short_repr(list(classes))}")
    require(len(classes) >= 2, where, f"needs at least 2 classes to tell apart, got {short_repr(list(classes))}")


def check_split(labels: np.ndarray, val_fraction: float, where: str, held_out: str = "validation") -> None:
    """A stratified split by ``val_fraction`` must leave each split at least one sample per class.

    The counts are those of ``sklearn.model_selection.train_test_split`` (validation: the
    fraction rounded up).
    """
    import numpy as np  # here: the rest of core needs PyTorch only

    total, classes = len(labels), len(np.unique(labels))
    num_val = math.ceil(val_fraction * total)
    num_train = total - num_val
    require(num_val >= classes and num_train >= classes, where,
            f"{val_fraction} of {total} samples leaves {num_train} for training and {num_val} for {held_out}; "
            f"each split needs at least one sample of each of the {classes} classes")


def _digit_labels(classes: Sequence[int] | None) -> np.ndarray:
    import numpy as np
    from sklearn.datasets import load_digits as sklearn_digits

    labels = sklearn_digits().target
    return labels if classes is None else labels[np.isin(labels, list(classes))]


def make_synthetic(
    num_train: int = 256,
    num_val: int = 128,
    num_classes: int = 4,
    image_size: int = 16,
    in_channels: int = 3,
    seed: int = 0,
    num_test: int = 128,
) -> DataBundle:
    """Class templates plus noise: learnable in a few steps, for tests and benchmarks."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, in_channels, image_size, image_size, generator=generator)

    def split(n: int) -> TensorDataset:
        labels = torch.randint(0, num_classes, (n,), generator=generator)
        noise = torch.randn(n, in_channels, image_size, image_size, generator=generator)
        return TensorDataset(templates[labels] + 0.8 * noise, labels)

    train, val = split(num_train), split(num_val)
    return DataBundle(train, val, num_classes, in_channels, image_size, test=split(num_test))


IN_MEMORY = ("digits", "synthetic")
MAX_BATCH_SIZE = 65_536
MAX_LOADER_WORKERS = 256
# The synthetic set lives in memory as float32: at most 4 GB of it.
MAX_SYNTHETIC_VALUES = 10**9
DataName = Literal["digits", "synthetic", "cifar10", "stanford_cars", "flowers102", "fgvc_aircraft", "oxford_pets",
                   "food101", "imagenet", "imagefolder"]


@dataclass
class DataConfig:
    """The data set a job trains on: the embedded digits, a synthetic set, or an image data set.

    Image data sets read ``root`` (see :mod:`gmpq_ray.core.data.datasets` for each one's layout);
    ``image_size`` defaults to the data set's usual resolution (digits 16, CIFAR 32, others 224).
    ``classes`` keeps some digits only; ``train_fraction`` keeps a fixed random share of the
    training split (of any data set), e.g. to make a small data set out of a large one. The
    digits hold out ``test_fraction`` (and the synthetic set ``num_test`` images) as a test split.
    Image data sets have a test split where they hold one out (:func:`~gmpq_ray.core.data.datasets.has_test_split`):
    Flowers-102 and Aircraft (their own val and test splits), an ImageFolder tree with a
    ``ROOT/test/``; the others (CIFAR-10, Cars, Pets, Food) have train and val only, their
    ``val`` being the data set's official test split, kept so as not to change the numbers
    measured on them (see the module doc of :mod:`gmpq_ray.core.data.datasets`).
    """

    name: DataName = "digits"
    root: str | None = None
    download: bool = False
    image_size: int | None = None
    batch_size: int = 64
    num_workers: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    classes: list[int] | None = None
    train_fraction: float = 1.0
    num_train: int = 256
    num_val: int = 128
    num_test: int = 128
    num_classes: int = 4
    in_channels: int = 3
    seed: int = 0

    def validate(self, where: str) -> None:
        field = key_path(where)
        require(self.batch_size >= 1, f"{field}batch_size", "must be at least 1")
        require(self.batch_size <= MAX_BATCH_SIZE, f"{field}batch_size", f"must be at most {MAX_BATCH_SIZE}, got {self.batch_size}")
        require(self.image_size is None or self.image_size >= 8, f"{field}image_size", "must be at least 8")
        require(self.image_size is None or self.image_size <= MAX_IMAGE_SIZE, f"{field}image_size",
                f"must be at most {MAX_IMAGE_SIZE}, got {self.image_size}")
        require(0 < self.val_fraction < 1, f"{field}val_fraction", "must be between 0 and 1")
        require(0 < self.test_fraction < 1, f"{field}test_fraction",
                "must be between 0 and 1 (an empty test split leaves nothing to report on)")
        require(self.val_fraction + self.test_fraction < 1, f"{field}val_fraction",
                f"{self.val_fraction} with test_fraction {self.test_fraction} leaves no training data")
        require(self.num_test >= 1, f"{field}num_test", "must be at least 1 (an empty test split leaves nothing to report on)")
        require(0 < self.train_fraction <= 1, f"{field}train_fraction", "must be in (0, 1]")
        require(0 <= self.num_workers <= MAX_LOADER_WORKERS, f"{field}num_workers",
                f"must be between 0 and {MAX_LOADER_WORKERS}, got {self.num_workers}")
        require(self.num_train >= 1 and self.num_val >= 1, f"{where}", "num_train and num_val must be positive")
        require_seed(self.seed, f"{field}seed")
        require(self.classes is None or self.name == "digits", f"{field}classes", "only applies to the digits")
        if self.classes is not None:
            check_digit_classes(self.classes, f"{field}classes")
        if self.name == "synthetic":
            require(2 <= self.num_classes <= MAX_CLASSES, f"{field}num_classes",
                    f"must be between 2 and {MAX_CLASSES}, got {self.num_classes}")
            require(1 <= self.in_channels <= MAX_IN_CHANNELS, f"{field}in_channels",
                    f"must be between 1 and {MAX_IN_CHANNELS}, got {self.in_channels}")
            require(min(self.num_train, self.num_val) >= self.num_classes, where,
                    f"num_train ({self.num_train}) and num_val ({self.num_val}) must be at least num_classes ({self.num_classes})")
            values = (self.num_train + self.num_val) * self.in_channels * self.resolved_image_size ** 2
            require(values <= MAX_SYNTHETIC_VALUES, where,
                    f"the synthetic set would hold {values:.3g} numbers (at most {MAX_SYNTHETIC_VALUES:.0e}): "
                    "lower num_train, num_val, in_channels or image_size")
        if self.name in IN_MEMORY:
            require(self.root is None, f"{key_path(where)}root", f"{self.name} needs no root (it is built in memory)")
        else:
            require(self.root is not None, f"{key_path(where)}root", f"{self.name} is read from a local folder: give its root "
                    f"({DATASETS[self.name].layout})")

    @property
    def resolved_image_size(self) -> int:
        """``image_size``, or the data set's usual resolution."""
        if self.image_size is not None:
            return self.image_size
        return 16 if self.name in IN_MEMORY else DATASETS[self.name].image_size

    def resolve_paths(self, base: str | Path) -> None:
        """Make a relative ``root`` relative to ``base`` (the job file's folder)."""
        if self.root is not None:
            self.root = str((Path(base) / Path(self.root).expanduser()).resolve())

    @property
    def has_test(self) -> bool:
        """Whether :meth:`load` gives a held-out test split (reads no image), as :attr:`DataBundle.has_test`."""
        return self.name in IN_MEMORY or has_test_split(self.name, self.root)

    def load(self) -> DataBundle:
        """Build the data set (offline unless ``download: true``).

        Raises:
            UserInputError: an image data set's root is missing or malformed.
        """
        size = self.resolved_image_size
        if self.name == "digits":
            bundle = load_digits(size, self.val_fraction, self.classes, self.seed, self.test_fraction)
        elif self.name == "synthetic":
            bundle = make_synthetic(self.num_train, self.num_val, self.num_classes, size, self.in_channels, self.seed,
                                    self.num_test)
        else:
            bundle = DataBundle(
                train=build_split(self.name, self.root, True, size, self.download),
                val=build_split(self.name, self.root, False, size, self.download),
                num_classes=num_classes_of(self.name, self.root),
                in_channels=3,
                image_size=size,
                num_workers=self.num_workers,
                test=build_split(self.name, self.root, "test", size, self.download) if self.has_test else None,
            )
        if self.train_fraction < 1:
            total = len(bundle.train)
            bundle.train = _fixed_subset(bundle.train, self.train_fraction, self.seed)
            require(len(bundle.train) >= bundle.num_classes, "data.train_fraction",
                    f"{self.train_fraction} of {total} training samples keeps {len(bundle.train)}, "
                    f"fewer than the {bundle.num_classes} classes")
        return bundle

    def num_classes_and_channels(self) -> tuple[int, int]:
        """(classes, input channels) without loading any image; checks an image root's layout."""
        if self.name == "digits":
            check_split(_digit_labels(self.classes), self.val_fraction, "data.val_fraction")
            return (len(set(self.classes)) if self.classes else 10), 1
        if self.name == "synthetic":
            return self.num_classes, self.in_channels
        if not self.download and not Path(self.root).is_dir():
            raise UserInputError(f"data.root {self.root} does not exist; {DATASETS[self.name].layout}")
        return num_classes_of(self.name, self.root), 3


def _fixed_subset(dataset: Dataset, fraction: float, seed: int) -> Subset:
    """A fixed random share of ``dataset`` (at least one sample)."""
    count = max(1, int(round(len(dataset) * fraction)))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 7919))
    return Subset(dataset, sorted(order[:count].tolist()))
