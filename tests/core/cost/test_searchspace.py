"""Search spaces from YAML: the shipped files load; each kind of mistake names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gmpq_ray.core.cost.searchspace import SearchSpace, parse_bops
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.policy import LayerBits

SEARCHSPACES = sorted((Path(__file__).resolve().parents[3] / "searchspaces").glob("*.yaml"))

DIGITS = {
    "model": "digits_cnn", "input_size": 16, "num_classes": 10, "in_channels": 1,
    "w_bits": [2, 3, 4], "a_bits": [2, 3, 4], "fixed_bits": 8, "bops_limit": "33M",
}


def write(tmp_path: Path, **changes) -> Path:
    data = {**DIGITS, **changes}
    data = {k: v for k, v in data.items() if v is not ...}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_searchspaces_exist():
    assert {p.stem for p in SEARCHSPACES} >= {"digits_cnn", "resnet18", "resnet50", "mobilenet_v2"}


@pytest.mark.parametrize("path", SEARCHSPACES, ids=lambda p: p.stem)
def test_shipped_searchspaces_are_valid(path):
    if path.stem.startswith("timm_"):
        pytest.importorskip("timm")
    space = SearchSpace.load(path)
    assert space.model.replace(":", "_") == path.stem  # timm:<name> lives in timm_<name>.yaml
    cost = space.cost_model()
    assert space.floor_bops() <= space.bops_limit
    # The limit sits inside the space: the largest policy does not fit, the smallest does.
    largest = sum(cost.macs[n] for n in cost.searched) * space.w_bits[-1] * space.a_bits[-1]
    assert largest > space.bops_limit
    assert space.w_bits == sorted(space.w_bits) and space.fixed == LayerBits(space.fixed_bits, space.fixed_bits)


def test_resnet18_searchspace_values():
    space = SearchSpace.load(next(p for p in SEARCHSPACES if p.stem == "resnet18"))
    assert space.bops_limit == pytest.approx(15.3e9)
    assert space.w_bits == [2, 3, 4, 6] and space.input_size == 224 and space.num_classes == 1000
    assert space.cost_model().fixed_layers == ("conv1", "fc")


def test_digits_searchspace_loads_and_sorts(tmp_path):
    space = SearchSpace.load(write(tmp_path, w_bits=[4, 2, 3]))
    assert space.w_bits == [2, 3, 4]
    assert space.bops_limit == 33e6
    assert space.floor_bops() == space.cost_model().searched_macs() * 4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bits": [2, 3]}, r"space\.yaml: unknown key\(s\) \['bits'\]"),
        ({"w_bits": [2, 9]}, r"space\.yaml: w_bits\[1\]: bits must be between 2 and 8, got 9"),
        ({"a_bits": [1, 2]}, r"space\.yaml: a_bits\[0\]: bits must be between 2 and 8"),
        ({"a_bits": [32]}, r"space\.yaml: a_bits\[0\]"),
        ({"w_bits": [2, 3, 3]}, r"space\.yaml: w_bits: repeats a candidate"),
        ({"w_bits": []}, r"space\.yaml: w_bits: needs at least one candidate"),
        ({"w_bits": ["4"]}, r"space\.yaml: w_bits\[0\]: expected an integer"),
        ({"w_bits": 4}, r"space\.yaml: w_bits: expected a list"),
        ({"bops_limit": "1M"}, r"space\.yaml: bops_limit: 0\.001 G is below the smallest policy's 0\.02595 G"),
        ({"bops_limit": "lots"}, r"space\.yaml: bops_limit: expected a BOPs amount"),
        ({"bops_limit": 0}, r"space\.yaml: bops_limit: must be positive"),
        ({"bops_limit": True}, r"space\.yaml: bops_limit"),
        ({"model": "resnet1000"}, r"space\.yaml: model: unknown model 'resnet1000'"),
        ({"model": ...}, r"space\.yaml: missing required key 'model'"),
        ({"input_size": 4}, r"space\.yaml: input_size: must be at least 8"),
        ({"num_classes": 1}, r"space\.yaml: num_classes"),
        ({"fixed_bits": 9}, r"space\.yaml: fixed_bits"),
        ({"cifar_stem": "yes"}, r"space\.yaml: cifar_stem: expected true or false"),
        ({"fixed_layers": ["features.0.conv", "nope"]}, r"fixed_layers: \['nope'\]"),
    ],
)
def test_invalid_searchspaces_name_the_field(tmp_path, changes, message):
    with pytest.raises(UserInputError, match=message):
        SearchSpace.load(write(tmp_path, **changes))


def test_fixed_layers_that_leave_nothing_to_search(tmp_path):
    every_conv = ["features.0.conv"] + [f"features.{i}.conv" for i in range(1, 7)] + ["fc"]
    with pytest.raises(UserInputError, match=r"fixed_layers: leaves no layer to search"):
        SearchSpace.load(write(tmp_path, fixed_layers=every_conv))


def test_custom_fixed_layers_change_the_budget_base(tmp_path):
    space = SearchSpace.load(write(tmp_path, fixed_layers=["features.0.conv", "features.1.conv", "fc"]))
    cost = space.cost_model()
    assert "features.1.conv" not in cost.searched and "features.1.conv" in cost.fixed_layers
    assert space.floor_bops() == cost.searched_macs() * 4


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserInputError, match="file not found"):
        SearchSpace.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: digits_cnn\nw_bits: [2, 3\n")
    with pytest.raises(UserInputError, match=r"bad\.yaml: not valid YAML at line \d+"):
        SearchSpace.load(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("33M", 33e6), ("33m", 33e6), ("15.3G", 15.3e9), ("15.3", 15.3e9), (" 15.3 G ", 15.3e9),
        ("15.3 GBOPs", 15.3e9), ("2T", 2e12), ("500K", 5e5), (".5G", 0.5e9), ("1e3M", 1e9),
        (15.3, 15.3e9), (33, 33e9),
    ],
)
def test_parse_bops(value, expected):
    assert parse_bops(value, "x") == pytest.approx(expected)


@pytest.mark.parametrize("value", ["", "G", "-3G", "3 X", "three", "3GG", None, [3], True, 0, -1.5, "0M"])
def test_parse_bops_rejects(value):
    with pytest.raises(UserInputError, match="^limit"):
        parse_bops(value, "limit")


def test_the_shipped_search_spaces_are_all_checked():
    assert {p.stem for p in SEARCHSPACES} >= {"digits_cnn", "resnet18", "resnet50", "mobilenet_v2"}
