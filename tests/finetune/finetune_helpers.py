"""Builders for finetune tests: a tiny ImageFolder tree, FP weights, a policy and a job file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import LayerBits, Policy

CLASSES = ("circle", "square", "stripes")
IMAGE_SIZE = 16


def make_image_folder(root: Path, train_per_class: int = 6, val_per_class: int = 3, size: int = IMAGE_SIZE) -> Path:
    """ROOT/{train,val}/<class>/*.png: a colour per class plus noise, ``size`` x ``size`` pixels."""
    rng = np.random.default_rng(0)
    colours = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 230]])
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = colours[index] + rng.normal(0, 30, (size, size, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def save_fp_weights(path: Path, num_classes: int = len(CLASSES), in_channels: int = 3) -> Path:
    torch.manual_seed(0)
    torch.save(create_model("digits_cnn", num_classes=num_classes, in_channels=in_channels).state_dict(), path)
    return path


def mixed_policy(num_classes: int = len(CLASSES), in_channels: int = 3) -> Policy:
    """A non-uniform policy of the digits CNN (2 to 4 bits)."""
    cost = CostModel.for_model("digits_cnn", IMAGE_SIZE, num_classes, in_channels)
    bits = [LayerBits(2, 3), LayerBits(3, 2), LayerBits(4, 4), LayerBits(2, 2), LayerBits(3, 4), LayerBits(2, 3)]
    return Policy("digits_cnn", dict(zip(cost.searched, bits)), {name: LayerBits(8, 8) for name in cost.fixed_layers}, IMAGE_SIZE)


def write_finetune_job(folder: Path, data_root: Path | str, fp_state: Path | str, **overrides) -> Path:
    job = {
        "name": "tiny_finetune",
        "model": "digits_cnn",
        "data": {"name": "imagefolder", "root": str(data_root), "image_size": IMAGE_SIZE, "batch_size": 8},
        "fp_state_dict": str(fp_state),
        "epochs": 2,
        "lr": 0.01,
        "distill": True,
        "workers": 2,
        "calibration_batches": 1,
    }
    job.update(overrides)
    path = folder / "finetune.yaml"
    path.write_text(yaml.safe_dump(job))
    return path
