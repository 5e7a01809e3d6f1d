"""BOPs of a supernet (expected and argmax) and a policy's BOPs record."""

from __future__ import annotations

import pytest
import torch

from gmpq_ray.core.cost.bops import CostModel, PolicyBops, floor_bops, searched_bops
from gmpq_ray.core.cost.expected import SupernetBops
from gmpq_ray.core.policy import LayerBits
from gmpq_ray.core.quant.convert import argmax_policy, supernet_layers

COST = CostModel.for_model("digits_cnn", 16, 10, 1)


def test_expected_bops_is_the_sum_of_macs_times_expected_bits(digits_fp, batch, make_supernet):
    supernet = make_supernet(digits_fp, *batch)
    expected, bits = SupernetBops(COST, supernet).expected()
    layers = supernet_layers(supernet)
    by_hand = 0.0
    candidates = torch.tensor([2.0, 3.0, 4.0])
    for (name, layer), (e_w, e_a) in zip(layers.items(), bits):
        p_w, p_a = layer.alpha_w.detach().softmax(0), layer.alpha_a.detach().softmax(0)
        assert float(e_w.detach()) == pytest.approx(float((p_w * candidates).sum()), rel=1e-6)
        assert float(e_a.detach()) == pytest.approx(float((p_a * candidates).sum()), rel=1e-6)
        by_hand += COST.macs[name] * float(e_w.detach()) * float(e_a.detach())
    assert float(expected.detach()) == pytest.approx(by_hand, rel=1e-6)
    assert torch.equal(COST.expected_bops(supernet), expected)  # one implementation
    expected.backward()
    assert all(layer.alpha_w.grad is not None and layer.alpha_w.grad.abs().sum() > 0 for layer in layers.values())


def test_argmax_bops_are_the_argmax_policys_searched_bops(digits_fp, batch, make_supernet):
    supernet = make_supernet(digits_fp, *batch)
    argmax = SupernetBops(COST, supernet).argmax()
    assert not argmax.requires_grad
    assert float(argmax) == COST.policy_bops(argmax_policy(supernet, "digits_cnn")).searched


def test_searched_floor_and_total_bops():
    lowest = {name: LayerBits(2, 3) for name in COST.searched}
    assert COST.floor_bops([4, 2, 3], [3, 4]) == floor_bops(COST.searched, COST.macs, [2, 4], [3]) == searched_bops(lowest, COST.macs)
    assert COST.floor_bops([2], [3]) == COST.searched_macs() * 6
    policy = COST.uniform_policy("digits_cnn", 2, 3, fixed_bits=LayerBits(8, 8))
    record = COST.policy_bops(policy)
    fixed = sum(COST.macs[n] for n in COST.fixed_layers) * 64
    assert record == PolicyBops(COST.searched_macs() * 6, COST.searched_macs() * 6 + fixed)
    searched, total = record
    assert (searched, total) == (record.searched, record.total)


def test_policy_bops_record_writes_the_policy_files_keys():
    record = PolicyBops(searched=25_952_256, total=28_352_512)
    assert record.to_dict() == {"searched_g": 25_952_256 / 1e9, "total_g": 28_352_512 / 1e9}
    assert list(record.to_dict(33e6)) == ["searched_g", "total_g", "limit_g"]
    assert record.to_dict(33e6)["limit_g"] == 33e6 / 1e9
