"""Strict YAML-to-dataclass parsing: unknown keys, wrong types and missing fields name the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from gmpq_ray.core.config import load_yaml, parse, require, to_dict
from gmpq_ray.core.errors import UserInputError


@dataclass
class Inner:
    low: float
    high: float = 1.0

    def validate(self, where: str) -> None:
        require(self.low <= self.high, f"{where}.low", f"must not exceed high ({self.high})")


@dataclass
class Outer:
    name: str
    epochs: int = 3
    method: Literal["supernet", "sampled"] = "supernet"
    enabled: bool = True
    bits: list[int] = field(default_factory=lambda: [2, 4])
    params: dict[str, Inner] = field(default_factory=dict)
    limit: float | str | None = None
    extra: Any = None


def test_parse_full_mapping():
    data = {
        "name": "run", "epochs": 5, "method": "sampled", "enabled": False, "bits": [3, 5],
        "params": {"lr": {"low": 0.1, "high": 0.5}}, "limit": "15G", "extra": {"anything": [1]},
    }
    obj = parse(Outer, data, "job")
    assert obj == Outer("run", 5, "sampled", False, [3, 5], {"lr": Inner(0.1, 0.5)}, "15G", {"anything": [1]})
    assert parse(Outer, to_dict(obj), "job") == obj  # round trip through plain data


def test_defaults_and_coercions():
    obj = parse(Outer, {"name": "x", "limit": 3, "params": {"a": {"low": 1}}}, "job")
    assert obj.epochs == 3 and obj.bits == [2, 4] and obj.method == "supernet"
    assert obj.limit == 3.0 and isinstance(obj.limit, float)  # int accepted where float is expected
    assert obj.params["a"] == Inner(1.0, 1.0)
    assert parse(Outer, {"name": "x", "limit": None}, "job").limit is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "epoch": 3}, r"^job: unknown key\(s\) \['epoch'\]"),
        ({}, r"^job: missing required key 'name'"),
        ({"name": 3}, r"^job\.name: expected a string"),
        ({"name": "x", "epochs": 2.5}, r"^job\.epochs: expected an integer"),
        ({"name": "x", "epochs": True}, r"^job\.epochs: expected an integer"),
        ({"name": "x", "enabled": "yes"}, r"^job\.enabled: expected true or false"),
        ({"name": "x", "method": "random"}, r"^job\.method: 'random' is not one of \['supernet', 'sampled'\]"),
        ({"name": "x", "bits": [2, "4"]}, r"^job\.bits\[1\]: expected an integer"),
        ({"name": "x", "bits": 4}, r"^job\.bits: expected a list"),
        ({"name": "x", "params": [1]}, r"^job\.params: expected a mapping"),
        ({"name": "x", "params": {"lr": {"low": 2.0, "high": 1.0}}}, r"^job\.params\.lr\.low: must not exceed high"),
        ({"name": "x", "params": {"lr": {"lo": 2.0}}}, r"^job\.params\.lr: unknown key\(s\) \['lo'\]"),
        ({"name": "x", "limit": [1]}, r"^job\.limit"),
        ("text", r"^job: expected a mapping, got str"),
    ],
)
def test_errors_name_the_field(data, message):
    with pytest.raises(UserInputError, match=message):
        parse(Outer, data, "job")


def test_none_is_an_empty_mapping():
    with pytest.raises(UserInputError, match="missing required key 'name'"):
        parse(Outer, None, "job")
    assert parse(Inner, {"low": 0}, "x") == Inner(0.0)


def test_load_yaml(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("a: 1\nb: [x, y]\n")
    assert load_yaml(good) == {"a": 1, "b": ["x", "y"]}
    with pytest.raises(UserInputError, match=r"missing\.yaml: file not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [x, y\nc: 2\n")
    with pytest.raises(UserInputError, match=r"bad\.yaml: not valid YAML at line \d+, column \d+"):
        load_yaml(bad)


def test_require():
    require(True, "x", "never raised")
    with pytest.raises(UserInputError, match=r"^job\.x: is wrong$"):
        require(False, "job.x", "is wrong")
