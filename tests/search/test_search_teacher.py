"""A search teacher from pretrained weights by name: what fits loads, the rest trains."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.search.job import load_job
from gmpq_ray.search.teacher import load_teacher_state
from tests.conftest import write_job

RESNET18_SPACE = {"model": "resnet18", "input_size": 224, "num_classes": 1000, "cifar_stem": True,
                  "w_bits": [2, 4], "a_bits": [2, 4], "bops_limit": "20G"}


@pytest.fixture
def cached_resnet18(tmp_path, monkeypatch):
    """IMAGENET1K_V1 in an otherwise empty TORCH_HOME (random numbers, the real file name); no downloads."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    state = create_model("resnet18").state_dict()
    torch.save(state, tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    return state


def test_pretrained_teacher_keeps_the_backbone_and_trains_the_rest(tmp_path, cached_resnet18):
    job = load_job(write_job(tmp_path, searchspace=RESNET18_SPACE, teacher__state_dict="torchvision:ResNet18_Weights.IMAGENET1K_V1"))
    assert job.teacher.state_dict == "torchvision:ResNet18_Weights.IMAGENET1K_V1"  # not resolved as a path
    state, needs_training = load_teacher_state(job, num_classes=10, in_channels=3)
    assert needs_training and state["fc.weight"].shape == (10, 512)
    torch.testing.assert_close(state["layer4.1.conv2.weight"], cached_resnet18["layer4.1.conv2.weight"])


def test_pretrained_teacher_that_needs_training_needs_epochs(tmp_path, cached_resnet18):
    job = load_job(write_job(tmp_path, searchspace=RESNET18_SPACE,
                             teacher={"epochs": 0, "state_dict": "torchvision:ResNet18_Weights.IMAGENET1K_V1"}))
    with pytest.raises(UserInputError, match=r"conv1\.weight, fc\.weight, fc\.bias do not fit resnet18 on this data; set teacher\.epochs >= 1"):
        load_teacher_state(job, num_classes=10, in_channels=3)
