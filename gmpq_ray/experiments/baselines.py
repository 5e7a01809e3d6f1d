"""Baseline policies a comparison evaluates beside the searched ones."""

from __future__ import annotations

import random

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.cost.repair import repair_policy
from gmpq_ray.core.cost.searchspace import SearchSpace
from gmpq_ray.core.policy import LayerBits, Policy


def best_uniform_policy(space: SearchSpace) -> Policy:
    """The uniform-precision policy with the most BOPs that fits the limit.

    Ties go to more activation bits (the appendix: activations are the more sensitive).
    """
    cost = space.cost_model()
    fitting = []
    for w in space.w_bits:
        for a in space.a_bits:
            policy = _with_bops(cost.uniform_policy(space.model, w, a, space.fixed), cost, space)
            if policy.bops["searched_g"] * 1e9 <= space.bops_limit:
                fitting.append((policy.bops["searched_g"], a, w, policy))
    # The search space's own validation guarantees the all-minimum policy fits.
    return max(fitting, key=lambda item: item[:3])[3]


def random_feasible_policies(space: SearchSpace, count: int, seed: int = 0) -> list[Policy]:
    """``count`` random per-layer proposals, each repaired into the limit (and filled up to it)."""
    cost = space.cost_model()
    rng = random.Random(seed)
    policies = []
    for _ in range(count):
        proposal = Policy(
            space.model,
            {name: LayerBits(rng.choice(space.w_bits), rng.choice(space.a_bits)) for name in cost.searched},
            {name: space.fixed for name in cost.fixed_layers},
            space.input_size,
        )
        policy = repair_policy(proposal, cost.macs, space.bops_limit, space.w_bits, space.a_bits, source="proposal")
        policies.append(_with_bops(policy, cost, space))
    return policies


def _with_bops(policy: Policy, cost: CostModel, space: SearchSpace) -> Policy:
    policy.input_size = space.input_size
    policy.bops = cost.policy_bops(policy, space.fixed).to_dict(space.bops_limit)
    return policy
