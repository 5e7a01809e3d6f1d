"""The bit allocation of a proxy search, solved exactly: a multiple-choice knapsack.

Each searched layer takes exactly one (w_bits, a_bits) choice; a choice has a cost (its BOPs,
from the project's one cost model, :func:`gmpq_ray.core.cost.bops.searched_bops`) and a
*damage* (what a proxy measured when that layer alone was quantized so). The allocation
minimizes the summed damage with the searched-layer BOPs at most the limit.

The solver is the Nemhauser-Ullmann dynamic program (Nemhauser & Ullmann, "Discrete dynamic
programming and capital allocation", Management Science 1969): layer by layer it keeps the
Pareto set of partial allocations (no other one is both cheaper and less damaging), pruning
those that cannot fit even with every remaining layer at its cheapest choice. BOPs stay exact
integers (no discretization), so the optimum is exact, not within a grid step.

Two rules make the answer *maximal* (no single layer's weight or activation bits can go up a
step without breaking the limit), as :func:`gmpq_ray.core.cost.repair.repair_policy` promises:

* a layer's damage at (w, a) is taken as the least damage among its choices with no more bits
  (more bits never hurt; a few batches of measurement noise would otherwise make the solver
  leave budget unspent to dodge a noisy score);
* after the optimum is found, steps up that still fit are taken (they cannot add damage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gmpq_ray.core.cost.bops import searched_bops
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.policy import LayerBits

Damage = Mapping[str, Mapping[LayerBits, float]]


@dataclass(frozen=True)
class Allocation:
    """The solved per-layer bits, their summed (monotone) damage and searched-layer BOPs."""

    layers: dict[str, LayerBits]
    damage: float
    bops: int


def monotone_damage(damage: Mapping[LayerBits, float], w_candidates: Sequence[int], a_candidates: Sequence[int]) -> dict[LayerBits, float]:
    """Each choice's damage replaced by the least damage among choices with no more bits."""
    out = {}
    for w in w_candidates:
        for a in a_candidates:
            out[LayerBits(w, a)] = min(damage[LayerBits(w2, a2)] for w2 in w_candidates if w2 <= w
                                       for a2 in a_candidates if a2 <= a)
    return out


def choice_bops(layer: str, bits: LayerBits, macs: Mapping[str, int]) -> int:
    """BOPs of one layer at ``bits`` (the cost model's own sum, over one layer)."""
    return int(searched_bops({layer: bits}, macs))


def solve_allocation(
    damage: Damage,
    macs: Mapping[str, int],
    bops_limit: float,
    w_candidates: Sequence[int],
    a_candidates: Sequence[int],
) -> Allocation:
    """Minimize the summed damage over one choice per layer, searched-layer BOPs <= ``bops_limit``.

    Args:
        damage: per layer, the damage of every (w_bits, a_bits) candidate (lower is better).
        macs: MACs of every searched layer at the deployment resolution.
        bops_limit: the budget of the searched layers, in BOPs.
        w_candidates, a_candidates: the search space's bit choices.

    Returns:
        The optimal allocation, made maximal (see the module docstring).

    Raises:
        UserInputError: even the lowest bits everywhere exceed the limit.

    Example:
        >>> damage = {"a": {LayerBits(w, b): 1.0 / (w * b) for w in (2, 4) for b in (2, 4)},
        ...           "b": {LayerBits(w, b): 4.0 / (w * b) for w in (2, 4) for b in (2, 4)}}
        >>> solve_allocation(damage, {"a": 10, "b": 10}, 240, [2, 4], [2, 4]).layers["b"]
        LayerBits(w_bits=4, a_bits=4)
    """
    w_cands, a_cands = sorted(set(w_candidates)), sorted(set(a_candidates))
    names = list(damage)
    smooth = {name: monotone_damage(damage[name], w_cands, a_cands) for name in names}
    options = {}
    for name in names:
        # Per layer, only its own Pareto choices can be part of an optimum.
        ranked = sorted(smooth[name].items(), key=lambda item: (choice_bops(name, item[0], macs), item[1]))
        front, best = [], float("inf")
        for bits, value in ranked:
            if value < best:
                front.append((bits, choice_bops(name, bits, macs), value))
                best = value
        options[name] = front
    cheapest = [min(cost for _, cost, _ in options[name]) for name in names]
    floor = sum(cheapest)
    if floor > bops_limit:
        raise UserInputError(f"BOPs limit {bops_limit / 1e9:.4g} G is below the smallest policy's {floor / 1e9:.4g} G "
                             f"(every layer at {w_cands[0]}/{a_cands[0]} bits)")
    rest = np.cumsum([0] + cheapest[::-1])[::-1][1:]  # rest[i]: cheapest BOPs of the layers after i

    costs, damages = np.zeros(1, dtype=np.int64), np.zeros(1)
    parents, picks = [], []
    for i, name in enumerate(names):
        option_costs = np.array([cost for _, cost, _ in options[name]], dtype=np.int64)
        option_damage = np.array([value for _, _, value in options[name]])
        new_costs = (costs[:, None] + option_costs[None, :]).ravel()
        new_damage = (damages[:, None] + option_damage[None, :]).ravel()
        parent = np.repeat(np.arange(len(costs)), len(option_costs))
        pick = np.tile(np.arange(len(option_costs)), len(costs))
        fits = new_costs + rest[i] <= bops_limit
        new_costs, new_damage, parent, pick = new_costs[fits], new_damage[fits], parent[fits], pick[fits]
        order = np.lexsort((new_damage, new_costs))
        new_costs, new_damage, parent, pick = new_costs[order], new_damage[order], parent[order], pick[order]
        # Pareto set: each kept state is strictly less damaging than every cheaper one.
        best_before = np.concatenate(([np.inf], np.minimum.accumulate(new_damage)[:-1]))
        keep = new_damage < best_before
        costs, damages = new_costs[keep], new_damage[keep]
        parents.append(parent[keep])
        picks.append(pick[keep])

    state = int(np.argmin(damages))  # the last Pareto state: the least damage
    chosen: dict[str, LayerBits] = {}
    for i in range(len(names) - 1, -1, -1):
        chosen[names[i]] = options[names[i]][int(picks[i][state])][0]
        state = int(parents[i][state])
    layers = {name: chosen[name] for name in names}
    layers = _fill(layers, macs, bops_limit, w_cands, a_cands)
    return Allocation(layers, float(sum(smooth[n][b] for n, b in layers.items())), int(searched_bops(layers, macs)))


def _fill(layers: dict[str, LayerBits], macs: Mapping[str, int], bops_limit: float,
          w_cands: list[int], a_cands: list[int]) -> dict[str, LayerBits]:
    """Take steps up that fit, first layer and weights first, until none does (damage is
    non-increasing in bits, so the allocation stays optimal)."""
    layers = dict(layers)
    current = searched_bops(layers, macs)
    moved = True
    while moved:
        moved = False
        for name, bits in layers.items():
            for kind, cands in (("w_bits", w_cands), ("a_bits", a_cands)):
                index = cands.index(getattr(bits, kind)) + 1
                if index == len(cands):
                    continue
                raised = LayerBits(**{**bits.to_dict(), kind: cands[index]})
                delta = choice_bops(name, raised, macs) - choice_bops(name, bits, macs)
                if current + delta <= bops_limit:
                    layers[name], current, moved = raised, current + delta, True
                    break
            if moved:
                break
    return layers
