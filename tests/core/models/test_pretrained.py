"""FP weights by name (``torchvision:``, ``timm:``) or from a file; offline, nothing downloads.

Every test points the caches at an empty temporary folder and makes the download itself fail,
so the result does not depend on the machine's network or caches.
"""

from __future__ import annotations

import urllib.error

import pytest
import torch

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.pretrained import is_weights_name, load_matching, read_state_dict
from gmpq_ray.core.models.registry import create_model

RESNET18_V1 = "torchvision:ResNet18_Weights.IMAGENET1K_V1"


@pytest.fixture
def offline_torch_hub(tmp_path, monkeypatch):
    """An empty TORCH_HOME and a download that fails as without a network; returns the hub folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution (test: offline)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub"


def test_names_and_paths():
    assert is_weights_name(RESNET18_V1) and is_weights_name("timm:resnet18.a1_in1k")
    assert not is_weights_name("/models/resnet18.pt") and not is_weights_name(None)


def test_offline_torchvision_weights_say_how_to_pass_a_file(offline_torch_hub):
    with pytest.raises(UserInputError) as error:
        read_state_dict(RESNET18_V1, "fp_state_dict")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"fp_state_dict {RESNET18_V1}: the weights are not in the cache")
    assert "offline?" in message and str(offline_torch_hub / "checkpoints") in message
    assert "give its path as fp_state_dict" in message
    assert not any(p.is_file() for p in offline_torch_hub.parent.rglob("*"))  # nothing written


def test_cached_torchvision_weights_load_without_a_download(offline_torch_hub):
    checkpoints = offline_torch_hub / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    saved = create_model("resnet18").state_dict()
    torch.save(saved, checkpoints / "resnet18-f37072fd.pth")  # the file name of IMAGENET1K_V1's URL
    state = read_state_dict("torchvision:ResNet18_Weights.DEFAULT", "teacher.state_dict")
    torch.testing.assert_close(state["fc.weight"], saved["fc.weight"])
    create_model("resnet18").load_state_dict(state)


def test_local_file(tmp_path):
    saved = create_model("digits_cnn", num_classes=10, in_channels=1).state_dict()
    torch.save(saved, tmp_path / "fp.pt")
    state = read_state_dict(tmp_path / "fp.pt", "fp_state_dict")
    assert state.keys() == saved.keys()
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UserInputError, match=r"fp_state_dict .*list\.pt: holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt", "fp_state_dict")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="not a loadable PyTorch state dict"):
        read_state_dict(tmp_path / "bad.pt", "fp_state_dict")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("torchvision:ResNet18_Weights.IMAGENET1K_V9", r"choose ResNet18_Weights\.<one of IMAGENET1K_V1, DEFAULT>"),
        ("torchvision:Resnet18_Weights.DEFAULT", r"no weights 'Resnet18_Weights'; close names: ResNet18_Weights"),
    ],
)
def test_unknown_torchvision_weights_list_the_choices(offline_torch_hub, name, message):
    with pytest.raises(UserInputError, match=message):
        read_state_dict(name, "fp_state_dict")


def test_load_matching_keeps_what_does_not_fit():
    imagenet = create_model("resnet18", num_classes=1000).state_dict()
    cifar = create_model("resnet18", num_classes=10, cifar_stem=True)
    fresh = load_matching(cifar, imagenet)
    assert fresh == ["conv1.weight", "fc.weight", "fc.bias"]
    torch.testing.assert_close(cifar.state_dict()["layer1.0.conv1.weight"], imagenet["layer1.0.conv1.weight"])


@pytest.fixture
def offline_hf_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache in offline mode: hf_hub_download raises at once, no network."""
    pytest.importorskip("timm")
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_offline_timm_weights_say_how_to_pass_a_file(offline_hf_hub):
    with pytest.raises(UserInputError) as error:
        read_state_dict("timm:resnet10t.c3_in1k", "teacher.state_dict")
    message = str(error.value)
    assert "\n" not in message and "the weights are not in the cache" in message and "offline?" in message
    assert "give its path as teacher.state_dict" in message
    assert not any(p.is_file() for p in offline_hf_hub.rglob("*"))


def test_unknown_timm_weights_list_the_tags(offline_hf_hub):
    with pytest.raises(UserInputError, match=r"no pretrained weights 'resnet18\.nope'; choose one of .*resnet18\.a1_in1k"):
        read_state_dict("timm:resnet18.nope", "fp_state_dict")
