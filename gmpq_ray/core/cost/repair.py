"""Deterministic repair of a policy to a BOPs limit, shared by both search methods.

Down phase: while the searched-layer BOPs exceed the limit, lower one layer's weight or
activation bits to the next candidate, choosing the step that loses the least *value* per BOP
saved. Fill phase: while some single step up still fits, raise the one that gains the most value
per BOP spent. The result is within the limit and *maximal*: no single layer's weight or
activation bits can be raised without breaking the limit.

The value of a (layer, kind, bits) choice defaults to ``log2(bits)`` (diminishing returns);
the differentiable search passes the log-probabilities of its α so that repair follows what the
supernet learned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from gmpq_ray.core.cost.bops import floor_bops, searched_bops
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.policy import LayerBits, Policy

ValueFn = Callable[[str, str, int], float]


def _default_value(layer: str, kind: str, bits: int) -> float:
    return math.log2(bits)


def repair_policy(
    policy: Policy,
    macs: Mapping[str, int],
    bops_limit: float,
    w_candidates: Sequence[int],
    a_candidates: Sequence[int],
    value: ValueFn | None = None,
    fill: bool = True,
    source: str = "argmax",
) -> Policy:
    """Return a copy of ``policy`` whose searched-layer BOPs are at most ``bops_limit``.

    The copy's ``provenance`` counts the single-layer bit steps the repair lowered
    (``repair_steps``) and the fill raised (``fill_steps``); its ``kind`` is ``filled`` if the fill
    raised any, else ``repaired`` if the repair lowered any, else ``source``.

    Args:
        policy: the proposal (its bits must be among the candidates).
        macs: MACs per searched layer at the deployment resolution.
        bops_limit: budget of the searched layers, in BOPs.
        w_candidates, a_candidates: the bit choices of the search space.
        value: how much a (layer, "w_bits"|"a_bits", bits) choice is worth; higher is better.
        fill: after meeting the limit, spend what is left of the budget (see module doc).
        source: the provenance kind of an untouched proposal (``argmax``, ``proposal``).

    Raises:
        UserInputError: even the lowest bits everywhere exceed the limit.
    """
    value = value or _default_value
    w_cands, a_cands = sorted(set(w_candidates)), sorted(set(a_candidates))
    candidates = {"w_bits": w_cands, "a_bits": a_cands}
    layers = {name: LayerBits(b.w_bits, b.a_bits) for name, b in policy.layers.items()}
    floor = floor_bops(layers, macs, w_cands, a_cands)
    if floor > bops_limit:
        raise UserInputError(
            f"BOPs limit {bops_limit / 1e9:.4g} G is below the smallest policy's "
            f"{floor / 1e9:.4g} G (every layer at {w_cands[0]}/{a_cands[0]} bits)"
        )
    current = searched_bops(layers, macs)
    repair_steps = fill_steps = 0

    def step(name: str, kind: str, direction: int) -> tuple[int, float, LayerBits] | None:
        bits = layers[name]
        options = candidates[kind]
        index = options.index(getattr(bits, kind)) + direction
        if not 0 <= index < len(options):
            return None
        new_bits = LayerBits(**{**bits.to_dict(), kind: options[index]})
        delta_bops = macs[name] * (new_bits.w_bits * new_bits.a_bits - bits.w_bits * bits.a_bits)
        delta_value = value(name, kind, options[index]) - value(name, kind, getattr(bits, kind))
        return delta_bops, delta_value, new_bits

    while current > bops_limit:
        best = None
        for name in layers:
            for kind in ("w_bits", "a_bits"):
                move = step(name, kind, -1)
                if move is None or move[0] >= 0:
                    continue
                loss_per_bop = -move[1] / -move[0]
                if best is None or loss_per_bop < best[0]:
                    best = (loss_per_bop, name, move)
        assert best is not None  # the floor check guarantees a move exists
        _, name, (delta_bops, _, new_bits) = best
        layers[name] = new_bits
        current += delta_bops
        repair_steps += 1

    while fill:
        best = None
        for name in layers:
            for kind in ("w_bits", "a_bits"):
                move = step(name, kind, +1)
                if move is None or current + move[0] > bops_limit:
                    continue
                gain_per_bop = move[1] / max(move[0], 1)
                if best is None or gain_per_bop > best[0]:
                    best = (gain_per_bop, name, move)
        if best is None:
            break
        _, name, (delta_bops, _, new_bits) = best
        layers[name] = new_bits
        current += delta_bops
        fill_steps += 1

    kind = "filled" if fill_steps else "repaired" if repair_steps else source
    provenance = {"kind": kind, "repair_steps": repair_steps, "fill_steps": fill_steps}
    return Policy(policy.model, layers, dict(policy.fixed_layers), policy.input_size, provenance=provenance)
