"""The complexity term of the GMPQ search loss: what pushes a supernet's bits to the BOPs limit.

Two forms, chosen by a search job's ``complexity``:

* ``reference`` reproduces the GMPQ reference code (``search_attention.py`` and
  ``models/mixresnet.py`` of ZiweiWangTHU/GMPQ): ``cd * E[BOPs] / MACs(first searched layer)``
  with ``--cd 3e-4``. It is a linear push that never stops at a budget: too strong and every
  layer falls to the lowest bits, too weak and the argmax stays over the limit, which is why
  EdMIPS/GMPQ users re-tune ``cd`` for every budget.
* ``budget`` (the default here) aims *at* the limit. Its weight is a multiplier ``mu``
  adapted every step (:class:`BudgetMultiplier`): raised while the argmax policy's BOPs are
  over ``high`` x limit (0.95, one or two bit steps under the limit), lowered while they are
  under ``low`` x limit (0.85, the bottom of the target), and inside that band a small push
  proportional to how far up the band the argmax is (zero at its bottom). ``mu`` may go
  negative, so a supernet whose argmax sits far under the budget is pulled *up* to it instead
  of wasting it. The multiplier's step halves at each crossing (down to a floor) and remembers
  a tenth of the push the last excursion needed, so it learns the scale of push the network needs.
  The band is the target [0.85, 1.0] x limit less a margin at its top: the searches end where
  the controller leaves them plus a drift of a bit step or two (α's momentum, the pull of CE
  and imitation towards more bits). Its bottom is the target's: with the bottom at 0.9, an
  argmax at 0.876 x limit (on target) was pulled up by a multiplier that grew for a whole
  epoch, until several layers flipped at once (0.876 -> 1.82 x in one epoch, measured).
  The multiplier follows the argmax policy (the one that is deployed), not ``E[BOPs]``: the
  two differ by whole bit steps while softmax(α) is flat. The gradient still flows through
  ``E[BOPs]`` (the argmax has none). Measured on the digits (README, "The loss", with every
  run), this lands the argmax inside [0.85, 1.0] x limit with no repair and no fill at the end
  of most runs and after most epochs, which matters because the scheduler may stop a trial
  after any epoch.

Both are pure functions of tensors: no host sync per step.
"""

from __future__ import annotations

from typing import Literal

import torch

ComplexityForm = Literal["budget", "reference"]
COMPLEXITY_FORMS: tuple[str, ...] = ("budget", "reference")

# The reference's --cd of its README command (search_attention.py, models/mixresnet.py).
REFERENCE_CD = 3e-4
# The budget form's band: the controller keeps the argmax policy between BUDGET_LOW and BUDGET_HIGH
# of the limit. The bottom is the target's bottom (0.85 x limit); the top sits one or two bit
# steps (2-4 % of the limit on the digits CNN) under the limit, so that the drift left at the end
# of a search still ends inside the target [0.85, 1.0] x limit.
BUDGET_LOW = 0.85
BUDGET_HIGH = 0.95
# The multiplier stays within +-MULTIPLIER_BOUND (a bound keeps a long excursion from building
# up a windup that takes as long to unwind).
MULTIPLIER_BOUND = 20.0
# The multiplier's first step per training step (the job's ``dual_lr``), and the factor of the
# step at each excursion to the other side of the band than the last.
DEFAULT_DUAL_LR = 0.05
STEP_SHRINK = 0.5
# ... but never below this share of the first step: a step halved at every crossing fell to
# about 0.01 in the last epochs, the in-band push with it, and a late one-layer jump over the
# limit then took 10-15 steps to undo (often past the last epoch).
MIN_STEP_FRACTION = 0.25
# At the end of an excursion the step becomes at least this share of the push the excursion
# needed (|mu| when it ended): the next excursion then reaches that push in about 7 steps instead
# of ramping up from the first step again. How large a push moves the argmax depends on the
# network (mu about 0.1-0.3 on the digits CNN, 1.5 on ResNet-18), and without this memory
# ResNet-18 took 3-4 epochs of 8 steps to climb back from under the band (measured, README).
STEP_MEMORY = 0.1
# Per step outside the band |mu| also grows by this factor, so that an argmax stuck just over
# the limit late in a search (when the step has shrunk) is still brought back within an epoch
# or two: about 40 steps of the first step after 17 steps, 300 after 34.
EXCURSION_GROWTH = 1.1


class ComplexityTerm:
    """``__call__(expected_bops, argmax_bops, update)`` -> the loss term of one step.

    Subclasses hold their state as tensors (``state_dict`` / ``load_state_dict`` for checkpoints).
    """

    def __call__(self, expected_bops: torch.Tensor, argmax_bops: torch.Tensor, update: bool = True) -> torch.Tensor:
        """The term for this step; ``update`` (a training step) lets an adaptive term adapt first."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


class ReferenceComplexity(ComplexityTerm):
    """``cd * E[BOPs] / MACs(first searched layer)``, the reference's ``complexity_loss``.

    Example:
        >>> term = ReferenceComplexity(3e-4, first_layer_macs=1e6)
        >>> round(float(term(torch.tensor(2e7), torch.tensor(0.0))), 6)
        0.006
    """

    def __init__(self, cd: float, first_layer_macs: float) -> None:
        self.cd, self.normalizer = float(cd), float(first_layer_macs)

    def __call__(self, expected_bops: torch.Tensor, argmax_bops: torch.Tensor, update: bool = True) -> torch.Tensor:
        return self.cd * expected_bops / self.normalizer


class BudgetMultiplier(ComplexityTerm):
    """``mu * E[BOPs] / limit`` with ``mu`` adapted to put the argmax policy in [low, high] x limit.

    Each training call first updates ``mu`` from the argmax policy's BOPs, then returns the term
    with the new ``mu``. Outside the band ``mu`` ramps by ``step`` per call towards it: up (push
    the bits down) while the argmax is over ``high`` x limit, down (negative: pull the bits up) while
    it is under ``low`` x limit. When the argmax crosses to the other side ``mu`` restarts from
    zero, and inside the band the ramped ``mu`` is dropped: the push that moved the argmax ends
    as soon as it has done its work, since α's momentum carries it on for several more steps
    and a multiplier that unwinds gradually overshoots again (a plain dual ascent circles the
    band: measured, README). Inside the band ``mu`` is instead ``step x (ratio - low) / (high - low)``:
    zero at the band's bottom, ``step`` at its top, a small push that does not build up and
    resists the drift of the other loss terms towards more bits, which otherwise carried the
    argmax one bit step over the limit in the last epoch (README, "The loss"). The band's top is
    under the limit (``high`` 0.97) for the same drift: what is left of it ends under the limit.
    A step proportional to the distance from the band (the textbook proportional-integral
    multiplier) was measured and dropped: with α's momentum it swung the argmax between the
    all-2-bit floor and 1.2-2.1 x the limit (README).
    Each excursion to the other side than the last halves ``step``, so the corrections shrink,
    down to a quarter of the first step (``min_step_fraction``), so that the in-band push and the answer
    to a late jump over the limit do not vanish. And each excursion's end raises ``step`` to at
    least a tenth of the push it needed (``STEP_MEMORY``), so that the controller learns the scale
    of push the network needs (about 0.2 on the digits CNN, 1.5 on ResNet-18) instead of ramping
    up from the first step at every excursion.

    Args:
        bops_limit: the searched-layer budget.
        initial: the multiplier's starting value (the job's ``lambda_c``).
        step: the multiplier's first step per call (the job's ``dual_lr``).
        low: the band's lower edge, as a share of the limit.
        high: the band's upper edge, as a share of the limit (the ramp down starts above it).
        min_step_fraction: the step never shrinks below this share of the first (0 lets it vanish,
            the controller before this floor).
        floor_bops: the searched layers' BOPs all at their lowest bits. Where a tight limit puts
            that floor over ``low`` x limit, the band becomes [floor, midway from the floor to the
            limit]: a band the argmax cannot reach would push every layer to its lowest bits.
        step_memory: at an excursion's end the step becomes at least this share of its push (0:
            no memory, the controller before it).

    Example:
        >>> term = BudgetMultiplier(100.0, initial=1.0, step=0.5)
        >>> round(float(term(torch.tensor(120.0), torch.tensor(150.0))), 4)  # over: mu 1 x 1.1 + 0.5 = 1.6
        1.92
        >>> round(float(term(torch.tensor(120.0), torch.tensor(150.0))), 4)  # still over: mu 1.6 x 1.1 + 0.5
        2.712
        >>> round(float(term(torch.tensor(80.0), torch.tensor(85.0))), 4)  # the band's bottom: no push
        0.0
        >>> round(float(term(torch.tensor(80.0), torch.tensor(90.0))), 4)  # half-way up: mu 0.25 x 0.8
        0.2
    """

    def __init__(self, bops_limit: float, initial: float, step: float, low: float = BUDGET_LOW,
                 high: float = BUDGET_HIGH, min_step_fraction: float = MIN_STEP_FRACTION, floor_bops: float = 0.0,
                 step_memory: float = STEP_MEMORY) -> None:
        self.limit = float(bops_limit)
        floor = float(floor_bops) / self.limit
        self.low, self.high = max(float(low), floor), max(float(high), (floor + 1.0) / 2)
        self.multiplier = torch.tensor(float(initial))
        self.step = torch.tensor(float(step))
        self.min_step = float(step) * float(min_step_fraction)
        self.step_memory = float(step_memory)
        self.direction = torch.tensor(0.0)

    def __call__(self, expected_bops: torch.Tensor, argmax_bops: torch.Tensor, update: bool = True) -> torch.Tensor:
        device = expected_bops.device
        mu = self.multiplier.to(device)
        if update:
            ratio = argmax_bops.to(device) / self.limit
            direction = (ratio > self.high).float() - (ratio < self.low).float()
            previous, step = self.direction.to(device), self.step.to(device)
            # An excursion ends (back inside the band, or across it): the step remembers its push.
            ending = (previous != 0) & (mu * previous > 0) & ((direction == 0) | (direction * mu < 0))
            step = torch.where(ending, torch.maximum(step, self.step_memory * mu.abs()), step)
            # An excursion to the other side than the last one: the step halves.
            step = torch.where(direction * previous < 0, (step * STEP_SHRINK).clamp(min=self.min_step), step)
            # Inside the band, or just crossed to the other side: the push starts again from zero.
            mu = torch.where((direction == 0) | (direction * mu < 0), torch.zeros_like(mu), mu)
            # A long excursion is pushed ever harder: |mu| also grows geometrically.
            mu = (mu * EXCURSION_GROWTH + step * direction).clamp(-MULTIPLIER_BOUND, MULTIPLIER_BOUND)
            # Inside the band: a push proportional to the height in the band, at most the current step.
            mu = torch.where(direction == 0, step * (ratio - self.low) / (self.high - self.low), mu)
            self.multiplier, self.step = mu.detach(), step.detach()
            # Inside the band the last side is kept, so that leaving it on the other side halves the step.
            self.direction = torch.where(direction != 0, direction, previous)
        return mu * expected_bops / self.limit

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"multiplier": self.multiplier.detach().cpu(), "step": self.step.cpu(), "direction": self.direction.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.multiplier, self.step, self.direction = (state[key].clone() for key in ("multiplier", "step", "direction"))


def make_complexity(form: str, bops_limit: float, first_layer_macs: float, lambda_c: float, dual_lr: float,
                    cd: float, floor_bops: float = 0.0) -> ComplexityTerm:
    """The complexity term a job's ``complexity`` names (see module doc); ``floor_bops`` (the
    searched layers all at their lowest bits) lets the budget form keep its band reachable."""
    if form == "reference":
        return ReferenceComplexity(cd, first_layer_macs)
    if form == "budget":
        return BudgetMultiplier(bops_limit, lambda_c, dual_lr, floor_bops=floor_bops)
    raise ValueError(f"complexity must be one of {list(COMPLEXITY_FORMS)}, got {form!r}")
