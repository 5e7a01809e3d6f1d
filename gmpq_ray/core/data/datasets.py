"""Image data sets read from a local root: the paper's small sets, ImageNet and any ImageFolder tree.

Pure torch/torchvision. Nothing is downloaded unless ``download=True`` is asked for (then
torchvision's own downloader runs; ImageNet and ImageFolder trees are never downloaded).

=================  ===========================================  ===================  ==========
name               torchvision class                            train / val / test   resolution
=================  ===========================================  ===================  ==========
``cifar10``        ``CIFAR10``                                  train / test / -     32
``stanford_cars``  ``StanfordCars``                             train / test / -     224
``flowers102``     ``Flowers102``                               train / val / test   224
``fgvc_aircraft``  ``FGVCAircraft`` (100 variants)              train / val / test   224
``oxford_pets``    ``OxfordIIITPet``                            trainval / test / -  224
``food101``        ``Food101``                                  train / test / -     224
``imagenet``       ``ImageFolder`` on ``ROOT/train``, ``/val``  train / val / test   224
``imagefolder``    same, any number of classes                  train / val / test   224
=================  ===========================================  ===================  ==========

Held-out test split (the ``val`` column is what searches select on, the ``test`` one what
``gmpq compare`` and ``gmpq ablate`` report on where there is one):

* Flowers-102 and FGVC-Aircraft ship distinct validation and test splits: both are used.
  Aircraft trained on its ``trainval`` split until this change; it now trains on ``train``
  and selects on ``val``, so that ``test`` is seen by no selection.
* ImageFolder trees (``imagefolder``, ``imagenet``): ``ROOT/test/``, where it exists (the same
  class folders as ``ROOT/train/``), is the test split. ImageNet's public ``val`` is usually
  ``ROOT/val/``: give a ``ROOT/test/`` (e.g. the official val) and a ``ROOT/val/`` carved from
  the training images to report on a split no search saw.
* CIFAR-10, Cars, Pets and Food ship only a training and a test split: their ``val`` stays the
  official test split and they have no held-out split (reports on them fall back to ``val``
  and say so). Carving a validation share out of their training split would shrink the data the
  finetunes train on and change every number measured on them so far; the official test
  split is also what the literature reports on.

Train transforms: RandomResizedCrop and horizontal flip at 224 (random crop with padding and
flip for CIFAR); eval transforms: Resize to size/0.875 then CenterCrop (CIFAR: as is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torchvision
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T

from gmpq_ray.core.config import short_repr
from gmpq_ray.core.errors import UserInputError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class DatasetSpec:
    """What a data set is called, how it is laid out under its root, and how to build a split."""

    name: str
    layout: str
    image_size: int
    num_classes: int | None  # None: the number of class folders
    build: Callable[[Path, str, Callable, bool], Dataset]  # (root, "train" | "val" | "test", transform, download)
    cifar_style: bool = False
    held_out: bool = False  # ships a test split distinct from its validation split

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (CIFAR_MEAN, CIFAR_STD) if self.cifar_style else (IMAGENET_MEAN, IMAGENET_STD)


def _split(train_split: str, eval_split: str, factory, test_split: str | None = None) -> Callable[[Path, str, Callable, bool], Dataset]:
    """Builder of a torchvision data set whose splits are named: ``train_split`` for training,
    ``eval_split`` for validation and ``test_split`` (where there is one) for the test split."""
    names = {"train": train_split, "val": eval_split, "test": test_split}

    def build(root: Path, split: str, transform: Callable, download: bool) -> Dataset:
        return factory(root, split=names[split], transform=transform, download=download)

    build.splits = names  # which of the data set's own splits each of ours is (tests read it)
    return build


def _cifar10(root: Path, split: str, transform: Callable, download: bool) -> Dataset:
    return torchvision.datasets.CIFAR10(root, train=split == "train", transform=transform, download=download)


def load_image(path: str) -> Image.Image:
    """An RGB image from ``path``; a corrupt, truncated or non-image file is a :class:`UserInputError` naming it."""
    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, UnidentifiedImageError):
            reason = "cannot identify image file"
        else:
            reason = short_repr(str(err).splitlines()[0] if str(err).strip() else type(err).__name__)[1:-1]
        raise UserInputError(f"{path}: not a readable image ({reason})") from None


def _image_folder(root: Path, split: str, transform: Callable, download: bool) -> Dataset:
    return torchvision.datasets.ImageFolder(str(root / split), transform=transform, loader=load_image)


_FOLDER_LAYOUT = ("expected ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg (the same class folders in both; "
                  "an optional ROOT/test/<class>/*.jpg with the same classes is the held-out test split)")

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("cifar10", "expected ROOT/cifar-10-batches-py/ (the python version of CIFAR-10)", 32, 10, _cifar10,
                    cifar_style=True),
        DatasetSpec("stanford_cars", "expected ROOT/stanford_cars/ with devkit/, cars_train/, cars_test/ and "
                    "cars_test_annos_withlabels.mat", 224, 196, _split("train", "test", torchvision.datasets.StanfordCars)),
        DatasetSpec("flowers102", "expected ROOT/flowers-102/ with jpg/, imagelabels.mat and setid.mat", 224, 102,
                    _split("train", "val", torchvision.datasets.Flowers102, "test"), held_out=True),
        DatasetSpec("fgvc_aircraft", "expected ROOT/fgvc-aircraft-2013b/data/ (images/ and the variant lists)", 224, 100,
                    _split("train", "val", torchvision.datasets.FGVCAircraft, "test"), held_out=True),
        DatasetSpec("oxford_pets", "expected ROOT/oxford-iiit-pet/ with images/ and annotations/", 224, 37,
                    _split("trainval", "test", torchvision.datasets.OxfordIIITPet)),
        DatasetSpec("food101", "expected ROOT/food-101/ with images/ and meta/", 224, 101,
                    _split("train", "test", torchvision.datasets.Food101)),
        DatasetSpec("imagenet", _FOLDER_LAYOUT, 224, None, _image_folder),
        DatasetSpec("imagefolder", _FOLDER_LAYOUT, 224, None, _image_folder),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of ``name``; raises a :class:`UserInputError` naming the choices."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UserInputError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}") from None


def train_transform(spec: DatasetSpec, image_size: int) -> Callable:
    """Augmentation for training: crop and flip, then normalize."""
    mean, std = spec.mean_std
    if spec.cifar_style:
        crop = [T.Resize(image_size)] if image_size != spec.image_size else []
        crop.append(T.RandomCrop(image_size, padding=max(1, image_size // 8)))
    else:
        crop = [T.RandomResizedCrop(image_size)]
    return T.Compose([*crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(spec: DatasetSpec, image_size: int) -> Callable:
    """Deterministic evaluation transform: resize and center crop, then normalize."""
    mean, std = spec.mean_std
    if spec.cifar_style:
        resize = [T.Resize(image_size)] if image_size != spec.image_size else []
    else:
        # The usual 0.875 crop ratio: 256 -> 224.
        resize = [T.Resize(int(round(image_size / 0.875))), T.CenterCrop(image_size)]
    return T.Compose([*resize, T.ToTensor(), T.Normalize(mean, std)])


def check_image_folder(root: Path) -> list[str]:
    """Class names of an ImageFolder tree; raises naming the expected layout if it is malformed.

    ``ROOT/train/`` and ``ROOT/val/`` must hold the same class folders, each with images; a
    ``ROOT/test/`` (optional, the held-out test split) is checked the same way, against
    ``ROOT/train/``'s classes, and a mismatch names its path.
    """
    problems = []
    classes: dict[str, list[str]] = {}
    splits = ("train", "val", "test") if (root / "test").is_dir() else ("train", "val")
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            problems.append(f"no {split}/ folder")
            continue
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not names:
            problems.append(f"{split}/ holds no class folders")
        empty = [n for n in names if not any(f.suffix.lower() in _IMAGE_SUFFIXES for f in (folder / n).iterdir())]
        if empty:
            problems.append(f"{split}/ class folder(s) without images: {empty[:3]}")
        classes[split] = names
    if not problems and classes["train"] != classes["val"]:
        only = sorted(set(classes["train"]) ^ set(classes["val"]))
        problems.append(f"train/ and val/ have different class folders (e.g. {only[:3]})")
    if not problems and "test" in classes and classes["test"] != classes["train"]:
        only = sorted(set(classes["train"]) ^ set(classes["test"]))
        problems.append(f"the test split {root / 'test'} has different class folders than train/ (e.g. {only[:3]})")
    if problems:
        raise UserInputError(f"data.root {root}: {'; '.join(problems)}; {_FOLDER_LAYOUT}")
    return classes["train"]


def has_test_split(name: str, root: str | Path | None) -> bool:
    """Whether data set ``name`` under ``root`` has a held-out test split (see the module doc):
    Flowers-102 and Aircraft always, an ImageFolder tree where ``ROOT/test/`` exists, the others
    never. Reads no image."""
    spec = dataset_spec(name)
    if spec.build is _image_folder:
        return root is not None and (Path(root).expanduser() / "test").is_dir()
    return spec.held_out


def build_split(name: str, root: str | Path, train: bool | str, image_size: int | None = None, download: bool = False) -> Dataset:
    """One split of data set ``name`` under ``root`` with its usual transform.

    ``train``: ``True`` or ``"train"`` for the training split (train transform), ``False`` or
    ``"val"`` for the validation split, ``"test"`` for the held-out test split (eval transform;
    only where :func:`has_test_split`).

    Raises:
        UserInputError: the root is missing or not laid out as the data set expects, or a test
            split is asked of a data set without one.

    Example::

        val = build_split("imagenet", "/data/imagenet", train=False)   # ROOT/val/<class>/*.JPEG
    """
    spec = dataset_spec(name)
    split = train if isinstance(train, str) else ("train" if train else "val")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    root = Path(root).expanduser()
    size = image_size or spec.image_size
    if not download and not root.is_dir():
        raise UserInputError(f"data.root {root} does not exist; {spec.layout}")
    if spec.build is _image_folder:
        check_image_folder(root)
    if split == "test" and not has_test_split(name, root):
        raise UserInputError(f"data.root {root}: {name} has no held-out test split here")
    transform = train_transform(spec, size) if split == "train" else eval_transform(spec, size)
    try:
        return spec.build(root, split, transform, download)
    except (RuntimeError, FileNotFoundError, OSError, KeyError, ValueError) as err:
        # torchvision's own hint names its download=True argument; ours names the job's key.
        reason = str(err).splitlines()[0].replace(" You can use download=True to download it", "").rstrip(". ")
        hint = "" if download else "; download: true in the job fetches it where the network allows"
        raise UserInputError(f"data.root {root}: {name} not found or incomplete ({reason}); {spec.layout}{hint}") from None


def num_classes_of(name: str, root: str | Path) -> int:
    """Number of classes of data set ``name`` (class folders for ImageFolder trees)."""
    spec = dataset_spec(name)
    if spec.num_classes is not None:
        return spec.num_classes
    return len(check_image_folder(Path(root).expanduser()))
