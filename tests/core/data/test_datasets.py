"""Image data sets from a local root (never downloaded here) and the ``data:`` section that names them."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from gmpq_ray.core.config import parse
from gmpq_ray.core.data.bundle import DataConfig, load_digits
from gmpq_ray.core.data.datasets import DATASETS, build_split, dataset_spec, eval_transform, num_classes_of, train_transform
from gmpq_ray.core.data.sharding import eval_shard_loader, train_shard_loader
from gmpq_ray.core.errors import UserInputError
from tests.finetune.finetune_helpers import CLASSES, make_image_folder


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("tree"), train_per_class=4, val_per_class=2, size=32)


def test_image_folder_tree_loads_as_a_bundle(tree):
    data = parse(DataConfig, {"name": "imagefolder", "root": str(tree), "image_size": 16, "batch_size": 4}, "data")
    bundle = data.load()
    assert (len(bundle.train), len(bundle.val), bundle.num_classes, bundle.in_channels, bundle.image_size) == (12, 6, 3, 3, 16)
    assert data.num_classes_and_channels() == (3, 3)
    train, val = bundle.loaders(4, seed=0)
    images, labels = next(iter(train))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert sorted(torch.cat([y for _, y in val]).tolist()) == [0, 0, 1, 1, 2, 2]
    # ImageNet is the same layout under another name; its default resolution is 224.
    assert build_split("imagenet", tree, train=False)[0][0].shape == (3, 224, 224)
    assert num_classes_of("imagenet", tree) == len(CLASSES)


def test_transforms_follow_the_usual_recipes():
    image = Image.new("RGB", (300, 260), (120, 30, 200))
    spec = dataset_spec("flowers102")
    names = [type(t).__name__ for t in train_transform(spec, 224).transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    evaluation = eval_transform(spec, 224)
    assert [type(t).__name__ for t in evaluation.transforms][:2] == ["Resize", "CenterCrop"]
    assert evaluation.transforms[0].size == 256 and evaluation(image).shape == (3, 224, 224)
    cifar = dataset_spec("cifar10")
    crop = train_transform(cifar, 32).transforms[0]
    assert isinstance(crop, T.RandomCrop) and crop.padding == 4
    assert train_transform(cifar, 32)(Image.new("RGB", (32, 32))).shape == (3, 32, 32)
    assert eval_transform(cifar, 32)(Image.new("RGB", (32, 32))).shape == (3, 32, 32)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_missing_root_names_the_expected_layout(tmp_path, name):
    with pytest.raises(UserInputError, match="does not exist; expected ROOT/"):
        build_split(name, tmp_path / "absent", train=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="expected ROOT/") as raised:
        build_split(name, tmp_path / "empty", train=False)
    assert str(tmp_path / "empty") in str(raised.value)


def test_malformed_image_folder(tmp_path, tree):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "cat" / "a.png")
    with pytest.raises(UserInputError, match=r"no val/ folder; expected ROOT/train/<class>/\*\.jpg and ROOT/val/<class>/\*\.jpg"):
        build_split("imagefolder", tmp_path, train=True)
    (tmp_path / "val" / "dog").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "dog" / "a.png")
    with pytest.raises(UserInputError, match="different class folders"):
        num_classes_of("imagefolder", tmp_path)
    (tmp_path / "val" / "cat").mkdir()
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(UserInputError, match="without images"):
        build_split("imagefolder", tmp_path, train=False)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "cifar10"}, "data.root: cifar10 is read from a local folder"),
        ({"name": "digits", "root": "/data"}, "data.root: digits needs no root"),
        ({"name": "food101", "root": "/data", "classes": [1, 2]}, "data.classes"),
        ({"name": "mnist"}, "'mnist' is not one of"),
        ({"name": "digits", "train_fraction": 0.0}, "data.train_fraction"),
        ({"name": "digits", "num_workers": -1}, "data.num_workers"),
    ],
)
def test_data_config_errors_name_the_field(fields, message):
    with pytest.raises(UserInputError, match=message):
        parse(DataConfig, fields, "data")


def test_digits_behave_as_before_and_subsets_shrink_the_training_split():
    data = parse(DataConfig, {"name": "digits"}, "data")
    assert data.resolved_image_size == 16
    bundle, reference = data.load(), load_digits()
    for a, b in zip(bundle.train.tensors + bundle.val.tensors + bundle.test.tensors,
                    reference.train.tensors + reference.val.tensors + reference.test.tensors):
        assert torch.equal(a, b)
    small = parse(DataConfig, {"name": "digits", "classes": [0, 1, 2, 3, 4], "train_fraction": 0.25}, "data")
    subset = small.load()
    # 541 training images of the digits 0-4 (60 %), a quarter kept; val and test untouched.
    assert (len(subset.train), len(subset.val), len(subset.test), subset.num_classes) == (135, 180, 180, 5)
    assert small.num_classes_and_channels() == (5, 1)
    again = small.load()
    assert subset.train.indices == again.train.indices  # a fixed subset
    images, labels = next(iter(subset.loaders(32)[0]))
    assert images.shape == (32, 1, 16, 16) and int(labels.max()) < 5


def test_relative_root_is_resolved_against_the_job_folder(tmp_path):
    data = parse(DataConfig, {"name": "imagenet", "root": "data/imagenet"}, "data")
    data.resolve_paths(tmp_path)
    assert data.root == str(tmp_path / "data" / "imagenet")
    assert data.resolved_image_size == 224


def test_shards_split_training_and_cover_evaluation_exactly_once():
    dataset = torch.utils.data.TensorDataset(torch.arange(10).float()[:, None], torch.arange(10))
    shards = [train_shard_loader(dataset, batch_size=4, rank=r, world_size=2, seed=3) for r in range(2)]
    for shard in shards:
        shard.sampler.set_epoch(1)
    seen = [torch.cat([y for _, y in shard]).tolist() for shard in shards]
    assert sorted(seen[0] + seen[1]) == list(range(10)) and all(shard.batch_size == 2 for shard in shards)
    for shard in shards:
        shard.sampler.set_epoch(2)
    assert [torch.cat([y for _, y in shard]).tolist() for shard in shards] != seen  # reshuffled each epoch
    evaluation = [torch.cat([y for _, y in eval_shard_loader(dataset, 4, r, 3)]).tolist() for r in range(3)]
    assert sorted(sum(evaluation, [])) == list(range(10))


def _with_test_split(root, classes=CLASSES):
    """ROOT/test/<class>/*.png: a copy of val/'s images under ``classes``."""
    import shutil

    for name in classes:
        source = root / "val" / (name if name in CLASSES else CLASSES[0])
        shutil.copytree(source, root / "test" / name)
    return root


def test_image_folder_test_split_is_held_out_where_root_has_one(tmp_path):
    root = make_image_folder(tmp_path / "plain", train_per_class=2, val_per_class=1, size=16)
    data = parse(DataConfig, {"name": "imagefolder", "root": str(root), "image_size": 16}, "data")
    bundle = data.load()
    assert not data.has_test and not bundle.has_test and bundle.test is None
    assert bundle.eval_loader("test", 4).dataset is bundle.val  # no test/: reports fall back to val
    with pytest.raises(UserInputError, match="has no held-out test split"):
        build_split("imagefolder", root, "test")
    _with_test_split(root)
    bundle = data.load()
    assert data.has_test and bundle.has_test and len(bundle.test) == len(CLASSES)
    assert bundle.eval_loader("test", 4).dataset is bundle.test
    assert bundle.test.root == str(root / "test") and bundle.test.classes == list(CLASSES)
    # The eval transform: deterministic, the requested size.
    image, _ = bundle.test[0]
    assert image.shape == (3, 16, 16) and torch.equal(image, bundle.test[0][0])
    assert build_split("imagefolder", root, "val").root == str(root / "val")
    assert num_classes_of("imagefolder", root) == len(CLASSES)


def test_a_test_split_with_other_classes_names_its_path(tmp_path):
    root = _with_test_split(make_image_folder(tmp_path, train_per_class=2, val_per_class=1, size=16),
                            classes=(*CLASSES[:2], "triangle"))
    for call in (lambda: build_split("imagefolder", root, True), lambda: num_classes_of("imagefolder", root)):
        with pytest.raises(UserInputError, match="different class folders than train/") as raised:
            call()
        assert (f"the test split {root / 'test'} has different class folders than train/ (e.g. ['stripes', 'triangle'])"
                in str(raised.value))


def test_which_of_its_own_splits_each_data_set_uses():
    """Without the data (never downloaded here): train / val / test map onto the data set's own splits."""
    from gmpq_ray.core.data.datasets import has_test_split

    assert DATASETS["flowers102"].build.splits == {"train": "train", "val": "val", "test": "test"}
    assert DATASETS["fgvc_aircraft"].build.splits == {"train": "train", "val": "val", "test": "test"}  # no longer trainval
    for name in ("stanford_cars", "food101"):
        assert DATASETS[name].build.splits == {"train": "train", "val": "test", "test": None}
    assert DATASETS["oxford_pets"].build.splits == {"train": "trainval", "val": "test", "test": None}
    assert {name for name in DATASETS if has_test_split(name, "/absent")} == {"flowers102", "fgvc_aircraft"}
    assert parse(DataConfig, {"name": "flowers102", "root": "/absent"}, "data").has_test
    assert not parse(DataConfig, {"name": "cifar10", "root": "/absent"}, "data").has_test
    assert parse(DataConfig, {"name": "digits"}, "data").has_test
