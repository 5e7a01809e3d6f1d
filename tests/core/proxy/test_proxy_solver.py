"""The proxy search's allocation: feasible, maximal, and optimal against brute force."""

from __future__ import annotations

import itertools
import random

import pytest

from gmpq_ray.core.cost.bops import CostModel, searched_bops
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.policy import LayerBits
from gmpq_ray.core.proxy.solver import monotone_damage, solve_allocation

W_BITS, A_BITS = [2, 3, 4], [2, 3, 4]


def _random_damage(layers, rng):
    # Decreasing in bits on average, with noise that sometimes breaks monotonicity.
    return {name: {LayerBits(w, a): rng.uniform(0.5, 2.0) * scale / (w * a) + rng.uniform(0, 0.05)
                   for w in W_BITS for a in A_BITS}
            for name, scale in ((n, rng.uniform(0.1, 10)) for n in layers)}


def _steps_up(bits):
    for kind, cands in (("w_bits", W_BITS), ("a_bits", A_BITS)):
        index = cands.index(getattr(bits, kind)) + 1
        if index < len(cands):
            yield LayerBits(**{**bits.to_dict(), kind: cands[index]})


@pytest.mark.parametrize("seed", range(6))
def test_solution_is_feasible_maximal_and_optimal_against_brute_force(seed):
    rng = random.Random(seed)
    cost = CostModel.for_model("digits_cnn", 16, 10, 1)
    layers = list(cost.searched)[:4]  # 9**4 = 6561 allocations, checked one by one
    macs = {n: cost.macs[n] for n in layers}
    floor = searched_bops({n: LayerBits(2, 2) for n in layers}, macs)
    top = searched_bops({n: LayerBits(4, 4) for n in layers}, macs)
    limit = floor + rng.uniform(0.1, 0.7) * (top - floor)
    damage = _random_damage(layers, rng)
    solution = solve_allocation(damage, macs, limit, W_BITS, A_BITS)

    # feasible, and the BOPs the cost model gives
    assert solution.bops == searched_bops(solution.layers, macs) <= limit
    # maximal: no single layer can go a step up
    for name, bits in solution.layers.items():
        for raised in _steps_up(bits):
            assert searched_bops({**solution.layers, name: raised}, macs) > limit, (name, raised)
    # optimal: no feasible allocation has less (monotone) damage
    smooth = {n: monotone_damage(damage[n], W_BITS, A_BITS) for n in layers}
    choices = [LayerBits(w, a) for w in W_BITS for a in A_BITS]
    best = min(sum(smooth[n][b] for n, b in zip(layers, combo))
               for combo in itertools.product(choices, repeat=len(layers))
               if searched_bops(dict(zip(layers, combo)), macs) <= limit)
    assert solution.damage == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_monotone_damage_never_rises_with_bits():
    damage = {LayerBits(w, a): float((w * 7 + a * 3) % 5) for w in W_BITS for a in A_BITS}
    smooth = monotone_damage(damage, W_BITS, A_BITS)
    for bits, value in smooth.items():
        assert value <= damage[bits]
        assert all(smooth[raised] <= value for raised in _steps_up(bits))


def test_a_limit_below_the_floor_is_refused():
    damage = {"a": {LayerBits(w, b): 1.0 for w in W_BITS for b in A_BITS}}
    with pytest.raises(UserInputError, match="below the smallest policy"):
        solve_allocation(damage, {"a": 100}, 399, W_BITS, A_BITS)


def test_resnet18_space_solves_fast():
    """19 layers x 16 candidates at 224: the exact solve takes well under a second."""
    import time

    cost = CostModel.for_model("resnet18", 224)
    bits = [2, 3, 4, 6]
    rng = random.Random(0)
    damage = {n: {LayerBits(w, a): rng.uniform(0.5, 2.0) / (w * a) for w in bits for a in bits} for n in cost.searched}
    start = time.perf_counter()
    solution = solve_allocation(damage, cost.macs, 15.3e9, bits, bits)
    assert time.perf_counter() - start < 5
    assert solution.bops <= 15.3e9
