"""Deterministic repair of a policy to a BOPs limit: within the limit, maximal, deterministic."""

from __future__ import annotations

import math

import pytest

from gmpq_ray.core.cost.bops import CostModel, searched_bops
from gmpq_ray.core.cost.repair import repair_policy
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.policy import LayerBits, Policy

DIGITS = CostModel.for_model("digits_cnn", 16, 10, 1)
RESNET18 = CostModel.for_model("resnet18", 224)
FIXED = {"features.0.conv": LayerBits(8, 8), "fc": LayerBits(8, 8)}


def uniform(cost: CostModel, model: str, w: int, a: int, fixed=None) -> Policy:
    return Policy(model, {n: LayerBits(w, a) for n in cost.searched}, dict(fixed or {}), input_size=16)


def assert_within_and_maximal(policy: Policy, cost: CostModel, limit: float, w_cands, a_cands) -> None:
    bops = searched_bops(policy.layers, cost.macs)
    assert bops <= limit
    assert bops == cost.policy_bops(policy)[0]
    candidates = {"w_bits": sorted(w_cands), "a_bits": sorted(a_cands)}
    for name, bits in policy.layers.items():
        assert bits.w_bits in candidates["w_bits"] and bits.a_bits in candidates["a_bits"]
        for kind, options in candidates.items():
            index = options.index(getattr(bits, kind))
            if index + 1 == len(options):
                continue
            raised = LayerBits(**{**bits.to_dict(), kind: options[index + 1]})
            delta = cost.macs[name] * (raised.w_bits * raised.a_bits - bits.w_bits * bits.a_bits)
            assert bops + delta > limit, f"{name}.{kind} could still be raised to {options[index + 1]}"


@pytest.mark.parametrize("start", [(4, 4), (2, 2), (3, 2)])
def test_digits_repair_within_limit_and_maximal(start):
    proposal = uniform(DIGITS, "digits_cnn", *start, fixed=FIXED)
    repaired = repair_policy(proposal, DIGITS.macs, 33e6, [2, 3, 4], [2, 3, 4])
    assert_within_and_maximal(repaired, DIGITS, 33e6, [2, 3, 4], [2, 3, 4])
    assert list(repaired.layers) == list(proposal.layers)
    assert repaired.fixed_layers == FIXED and repaired.model == "digits_cnn" and repaired.input_size == 16
    # The budget (33 M) lies between uniform 2-bit (26 M) and uniform 3-bit (58 M): mixed bits.
    assert not repaired.is_uniform()
    assert searched_bops(repaired.layers, DIGITS.macs) > 26e6


def test_repair_does_not_change_the_proposal():
    proposal = uniform(DIGITS, "digits_cnn", 4, 4, fixed=FIXED)
    before = proposal.to_json()
    repair_policy(proposal, DIGITS.macs, 33e6, [2, 3, 4], [2, 3, 4])
    assert proposal.to_json() == before


def test_resnet18_repair_within_limit_and_maximal():
    proposal = Policy("resnet18", {n: LayerBits(6, 6) for n in RESNET18.searched})
    repaired = repair_policy(proposal, RESNET18.macs, 15.3e9, [2, 3, 4, 6], [2, 3, 4, 6])
    assert_within_and_maximal(repaired, RESNET18, 15.3e9, [2, 3, 4, 6], [2, 3, 4, 6])
    assert searched_bops(repaired.layers, RESNET18.macs) > 0.9 * 15.3e9


def test_repair_is_deterministic():
    proposal = Policy("resnet18", {n: LayerBits(6, 4) for n in RESNET18.searched})
    results = [repair_policy(proposal, RESNET18.macs, 12e9, [6, 2, 4, 3], [2, 3, 4, 6]).to_json() for _ in range(3)]
    assert results[0] == results[1] == results[2]
    # The order the candidates are given in does not matter.
    assert repair_policy(proposal, RESNET18.macs, 12e9, [2, 3, 4, 6], [6, 4, 3, 2]).to_json() == results[0]


def test_repair_raises_when_the_limit_is_below_the_smallest_policy():
    proposal = uniform(DIGITS, "digits_cnn", 4, 4)
    floor = DIGITS.searched_macs() * 4
    assert repair_policy(proposal, DIGITS.macs, floor, [2, 3, 4], [2, 3, 4]).layers == uniform(DIGITS, "d", 2, 2).layers
    with pytest.raises(UserInputError, match=r"below the smallest policy's 0\.02595 G \(every layer at 2/2 bits\)"):
        repair_policy(proposal, DIGITS.macs, floor - 1, [2, 3, 4], [2, 3, 4])


def test_no_fill_keeps_a_policy_within_the_limit():
    proposal = uniform(DIGITS, "digits_cnn", 2, 2, fixed=FIXED)
    proposal.layers["features.4.conv"] = LayerBits(3, 2)
    kept = repair_policy(proposal, DIGITS.macs, 33e6, [2, 3, 4], [2, 3, 4], fill=False)
    assert kept.layers == proposal.layers and kept.fixed_layers == proposal.fixed_layers
    filled = repair_policy(proposal, DIGITS.macs, 33e6, [2, 3, 4], [2, 3, 4], fill=True)
    assert searched_bops(filled.layers, DIGITS.macs) > searched_bops(proposal.layers, DIGITS.macs)


def test_no_fill_still_meets_the_limit():
    proposal = uniform(DIGITS, "digits_cnn", 4, 4)
    repaired = repair_policy(proposal, DIGITS.macs, 33e6, [2, 3, 4], [2, 3, 4], fill=False)
    assert searched_bops(repaired.layers, DIGITS.macs) <= 33e6


def test_value_function_steers_which_bits_are_kept():
    favourite = "features.4.conv"  # the layer with the most MACs: the first to lose bits by default

    def value(layer: str, kind: str, bits: int) -> float:
        return (100.0 if layer == favourite and kind == "w_bits" else 1.0) * math.log2(bits)

    proposal = uniform(DIGITS, "digits_cnn", 4, 4)
    default = repair_policy(proposal, DIGITS.macs, 40e6, [2, 3, 4], [2, 3, 4])
    steered = repair_policy(proposal, DIGITS.macs, 40e6, [2, 3, 4], [2, 3, 4], value=value)
    assert default.layers[favourite].w_bits < 4
    assert steered.layers[favourite].w_bits == 4
    assert_within_and_maximal(steered, DIGITS, 40e6, [2, 3, 4], [2, 3, 4])
