"""Policies: JSON round trip, validation errors that name the field, applying one to a model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import LayerBits, Policy, check_bits
from gmpq_ray.core.quant.convert import apply_policy, searched_layers
from gmpq_ray.core.quant.layers import QuantConv2d, QuantLinear

DIGITS_SEARCHED = [f"features.{i}.conv" for i in range(1, 7)]
DIGITS_FIXED = ["features.0.conv", "fc"]


def digits_policy() -> Policy:
    bits = [(2, 3), (4, 4), (3, 2), (2, 2), (4, 3), (3, 4)]
    return Policy(
        model="digits_cnn",
        layers={name: LayerBits(w, a) for name, (w, a) in zip(DIGITS_SEARCHED, bits)},
        fixed_layers={"features.0.conv": LayerBits(8, 6), "fc": LayerBits(6, 8)},
        input_size=16,
        bops={"searched_g": 0.021, "total_g": 0.0233},
    )


def valid_dict() -> dict:
    return {"model": "digits_cnn", "layers": {"features.1.conv": {"w_bits": 4, "a_bits": 3}}}


def test_json_round_trip():
    policy = digits_policy()
    text = policy.to_json()
    data = json.loads(text)
    assert data["format"] == "gmpq-policy/1"
    assert data["fixed_layers"]["fc"] == {"w_bits": 6, "a_bits": 8}
    assert data["bops"] == {"searched_g": 0.021, "total_g": 0.0233}
    assert list(data["layers"]) == DIGITS_SEARCHED  # order kept
    again = Policy.from_json(text)
    assert again == policy
    assert list(again.layers) == DIGITS_SEARCHED


def test_save_and_load(tmp_path):
    policy = digits_policy()
    path = tmp_path / "nested" / "policy.json"
    policy.save(path)
    assert Policy.load(path) == policy
    assert [p.name for p in path.parent.iterdir()] == ["policy.json"]  # no temp file left behind
    # Saving again replaces the file atomically.
    policy.layers["features.1.conv"] = LayerBits(8, 8)
    policy.save(path)
    assert Policy.load(path).layers["features.1.conv"] == LayerBits(8, 8)


def test_minimal_policy_defaults():
    policy = Policy.from_dict(valid_dict())
    assert policy.fixed_layers == {} and policy.bops == {} and policy.input_size is None
    assert "input_size" not in policy.to_dict() and "bops" not in policy.to_dict()
    assert policy.all_layers() == {"features.1.conv": LayerBits(4, 3)}
    assert policy.is_uniform()
    assert not digits_policy().is_uniform()


@pytest.mark.parametrize("bad", [1, 9, 33, 0, -4, "4", True, 4.0, None])
def test_bits_outside_the_range_are_rejected(bad):
    data = valid_dict()
    data["layers"]["features.1.conv"]["w_bits"] = bad
    with pytest.raises(UserInputError, match=r"layers\.features\.1\.conv\.w_bits"):
        Policy.from_dict(data)
    data = valid_dict()
    data["fixed_layers"] = {"fc": {"w_bits": 8, "a_bits": bad}}
    with pytest.raises(UserInputError, match=r"fixed_layers\.fc\.a_bits"):
        Policy.from_dict(data)


@pytest.mark.parametrize("good", [2, 5, 8, 32])
def test_check_bits_accepts(good):
    assert check_bits(good, "x") == good


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(extra=1), r"unknown key\(s\) \['extra'\]"),
        (lambda d: d["layers"]["features.1.conv"].update(g_bits=2), r"layers\.features\.1\.conv: unknown key\(s\) \['g_bits'\]"),
        (lambda d: d["layers"]["features.1.conv"].pop("a_bits"), r"layers\.features\.1\.conv: missing a_bits"),
        (lambda d: d["layers"].update({"features.2.conv": [4, 4]}), r"layers\.features\.2\.conv: expected a mapping"),
        (lambda d: d.pop("model"), r"'model'"),
        (lambda d: d.update(model=""), r"'model'"),
        (lambda d: d.update(layers={}), r"'layers'"),
        (lambda d: d.update(layers=[1]), r"'layers'"),
        (lambda d: d.update(fixed_layers=[]), r"'fixed_layers'"),
        (lambda d: d.update(input_size=-3), r"'input_size'"),
        (lambda d: d.update(input_size="224"), r"'input_size'"),
        (lambda d: d.update(bops=[1.0]), r"'bops'"),
        (lambda d: d.update(format="gmpq-policy/2"), r"format"),
    ],
)
def test_invalid_policies_name_the_field(mutate, message):
    data = valid_dict()
    mutate(data)
    with pytest.raises(UserInputError, match=message):
        Policy.from_dict(data, source="my.json")
    with pytest.raises(UserInputError, match="^my.json"):
        Policy.from_dict(data, source="my.json")


@pytest.mark.parametrize("value", ["fast", None])
def test_non_numeric_bops_value_is_a_user_error(value):
    """``bops`` values are user data like the rest: a bad one must be a UserInputError, not a crash."""
    data = valid_dict()
    data["bops"] = {"searched_g": value}
    with pytest.raises(UserInputError, match="bops"):
        Policy.from_dict(data, source="my.json")


def test_not_an_object():
    with pytest.raises(UserInputError, match="JSON object"):
        Policy.from_dict([1, 2])


def test_bad_json_and_missing_file(tmp_path):
    with pytest.raises(UserInputError, match="not valid JSON"):
        Policy.from_json('{"model": "digits_cnn", "layers": {', source="p.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UserInputError, match=r"broken\.json: not valid JSON"):
        Policy.load(broken)
    with pytest.raises(UserInputError, match=r"missing\.json does not exist"):
        Policy.load(tmp_path / "missing.json")
    with pytest.raises(UserInputError, match="does not exist"):
        Policy.load(tmp_path)  # a folder is not a policy file


def test_validate_layers():
    policy = digits_policy()
    policy.validate_layers(DIGITS_SEARCHED, DIGITS_FIXED)
    policy.validate_layers(DIGITS_SEARCHED, DIGITS_FIXED, [2, 3, 4], [2, 3, 4])
    with pytest.raises(UserInputError, match=r"unknown layer\(s\) \['features\.6\.conv'\]"):
        policy.validate_layers(DIGITS_SEARCHED[:-1], DIGITS_FIXED)
    with pytest.raises(UserInputError, match=r"missing layer\(s\) \['features\.7\.conv'\]"):
        policy.validate_layers(DIGITS_SEARCHED + ["features.7.conv"], DIGITS_FIXED)
    with pytest.raises(UserInputError, match=r"unknown fixed layer\(s\) \['fc'\]"):
        policy.validate_layers(DIGITS_SEARCHED, ["features.0.conv"])
    with pytest.raises(UserInputError, match=r"layers\.features\.2\.conv\.w_bits=4 is not in the search space's candidates \[2, 3\]"):
        policy.validate_layers(DIGITS_SEARCHED, DIGITS_FIXED, [2, 3], [2, 3, 4])
    with pytest.raises(UserInputError, match=r"a_bits=2 is not in"):
        policy.validate_layers(DIGITS_SEARCHED, DIGITS_FIXED, None, [3, 4])


# --- apply_policy -------------------------------------------------------------------------------


def test_apply_policy_swaps_layers_with_the_given_bits(digits_fp):
    fp_weights = {n: p.detach().clone() for n, p in digits_fp.named_parameters()}
    policy = digits_policy()
    model = apply_policy(digits_fp, policy)
    for name, bits in policy.layers.items():
        layer = model.get_submodule(name)
        assert type(layer) is QuantConv2d
        assert (layer.w_bits, layer.a_bits) == (bits.w_bits, bits.a_bits)
    stem, fc = model.get_submodule("features.0.conv"), model.fc
    assert type(stem) is QuantConv2d and (stem.w_bits, stem.a_bits) == (8, 6)
    assert type(fc) is QuantLinear and (fc.w_bits, fc.a_bits) == (6, 8)
    # Parameter names and values are kept; only quantizer clips and sign buffers are new.
    assert {n: p for n, p in model.named_parameters() if "act_quant" not in n}.keys() == fp_weights.keys()
    for name, value in fp_weights.items():
        assert torch.equal(model.get_parameter(name), value)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_apply_policy_without_fixed_layers_uses_fixed_bits(digits_fp):
    policy = digits_policy()
    policy.fixed_layers = {}
    model = apply_policy(digits_fp, policy, fixed_bits=LayerBits(6, 5))
    for name in DIGITS_FIXED:
        layer = model.get_submodule(name)
        assert isinstance(layer, (QuantConv2d, QuantLinear)) and (layer.w_bits, layer.a_bits) == (6, 5)


def test_apply_policy_with_a_partial_fixed_list_leaves_no_layer_in_full_precision(digits_fp):
    """``apply_policy`` documents that a policy listing fixed layers must list all of them.

    A policy that lists only the stem must be refused (or at least quantize the classifier,
    which ``CostModel.policy_bops`` counts at the fixed bits) rather than leave ``fc`` in FP32.
    """
    policy = digits_policy()
    policy.fixed_layers = {"features.0.conv": LayerBits(8, 8)}
    try:
        model = apply_policy(digits_fp, policy)
    except UserInputError:
        return
    assert isinstance(model.fc, QuantLinear), "the classifier was silently left in full precision"


def test_apply_policy_rejects_another_models_policy(digits_fp):
    resnet = create_model("resnet18", num_classes=10, device="meta")
    foreign = Policy("resnet18", {name: LayerBits(4, 4) for name in searched_layers(resnet)})
    with pytest.raises(UserInputError, match=r"unknown layer\(s\) \['layer1\.0\.conv1'"):
        apply_policy(copy.deepcopy(digits_fp), foreign)
    partial = Policy("digits_cnn", {name: LayerBits(4, 4) for name in DIGITS_SEARCHED[:3]})
    with pytest.raises(UserInputError, match=r"missing layer\(s\) \['features\.4\.conv'"):
        apply_policy(copy.deepcopy(digits_fp), partial)
    bad_fixed = digits_policy()
    bad_fixed.fixed_layers = {"classifier": LayerBits(8, 8)}
    with pytest.raises(UserInputError, match="fixed_layers"):
        apply_policy(copy.deepcopy(digits_fp), bad_fixed)
    # The model is untouched by a refused policy.
    assert not any(isinstance(m, QuantConv2d) for m in digits_fp.modules())


def test_apply_policy_refuses_a_quantized_model(digits_fp):
    model = apply_policy(digits_fp, digits_policy())
    with pytest.raises(ValueError, match="full-precision"):
        apply_policy(model, digits_policy())
