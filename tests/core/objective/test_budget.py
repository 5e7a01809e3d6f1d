"""The complexity terms: the reference's linear push and the budget multiplier that aims at the limit."""

from __future__ import annotations

import pytest
import torch

from gmpq_ray.core.objective.complexity_term import BudgetMultiplier, ReferenceComplexity, make_complexity


def test_reference_term_is_cd_times_expected_bops_over_first_layer_macs():
    term = ReferenceComplexity(3e-4, first_layer_macs=2e6)
    expected = torch.tensor(5e7, requires_grad=True)
    value = term(expected, torch.tensor(0.0))
    assert float(value.detach()) == pytest.approx(3e-4 * 25)
    value.backward()
    assert float(expected.grad) == pytest.approx(3e-4 / 2e6)


def test_multiplier_rises_over_the_limit_falls_under_the_band_and_holds_inside():
    term = BudgetMultiplier(100.0, initial=0.0, step=0.5, low=0.9, high=1.0)
    term(torch.tensor(100.0), torch.tensor(130.0))
    term(torch.tensor(100.0), torch.tensor(130.0))
    assert float(term.multiplier) == pytest.approx(0.5 * 1.1 + 0.5)  # two steps up while over, the second harder
    term(torch.tensor(100.0), torch.tensor(95.0))
    # Inside the band the ramped push is dropped: what is left is proportional to the height in the band.
    assert float(term.multiplier) == pytest.approx(0.5 * 0.5)
    term(torch.tensor(100.0), torch.tensor(50.0))
    # Under the band, on the other side than the last excursion: the step halves, the push is upwards.
    assert float(term.multiplier) == pytest.approx(-0.25)
    assert float(term.step) == pytest.approx(0.25)


def test_inside_the_band_a_small_push_grows_towards_the_limit_and_never_builds_up():
    """At the band's bottom no push, at its top the current step: the drift towards more bits
    that carried the argmax over the limit in the last epoch is resisted, and holding there
    does not accumulate (mu stays at the step, it does not ramp)."""
    term = BudgetMultiplier(100.0, initial=0.0, step=0.4, low=0.9, high=1.0)
    pushes = []
    for argmax in (90.0, 93.0, 96.0, 99.0, 100.0):
        term(torch.tensor(100.0), torch.tensor(argmax))
        pushes.append(float(term.multiplier))
    assert pushes == pytest.approx([0.0, 0.12, 0.24, 0.36, 0.4], abs=1e-6)
    for _ in range(50):
        term(torch.tensor(100.0), torch.tensor(99.0))
    assert float(term.multiplier) == pytest.approx(0.36, abs=1e-6) and float(term.step) == pytest.approx(0.4)
    # Over the limit from there: the ramp continues from the in-band push, not from zero.
    term(torch.tensor(100.0), torch.tensor(104.0))
    assert float(term.multiplier) == pytest.approx(0.36 * 1.1 + 0.4, abs=1e-6)
    # Back inside after the excursion: the ramp is dropped (no windup carried into the band).
    term(torch.tensor(100.0), torch.tensor(91.0))
    assert float(term.multiplier) == pytest.approx(0.04, abs=1e-6)


def test_the_band_is_the_targets_bottom_and_tops_out_under_the_limit():
    """By default the band is [0.85, 0.95] x limit: the ramp down starts above 0.95, not above the
    limit, so the drift of a bit step or two (2-4 % of the limit on the digits) left at the end of
    a search lands under the limit; and an argmax at 0.87 x limit, on target, is not pulled up."""
    term = BudgetMultiplier(100.0, initial=0.0, step=0.5)
    assert (term.low, term.high) == (0.85, 0.95)
    term(torch.tensor(100.0), torch.tensor(87.0))  # on target: the push is the (small) height in the band
    assert float(term.multiplier) == pytest.approx(0.5 * (0.87 - 0.85) / 0.1)
    term(torch.tensor(100.0), torch.tensor(96.0))  # under the limit, over the band: the ramp starts
    assert float(term.multiplier) == pytest.approx(0.5 * (0.87 - 0.85) / 0.1 * 1.1 + 0.5)
    term(torch.tensor(100.0), torch.tensor(95.0))  # the band's top: the full step, no ramp
    assert float(term.multiplier) == pytest.approx(0.5)


def test_the_step_halves_at_each_crossing_but_not_below_a_quarter_of_the_first_step():
    """A step halved at every crossing fell to about 0.01 in the last epochs, and a late jump over
    the limit then outlasted the search: the floor keeps the answer to it (and the in-band push)."""
    term = BudgetMultiplier(100.0, initial=0.0, step=0.4)
    for argmax in (120.0, 50.0, 120.0, 50.0, 120.0):
        term(torch.tensor(100.0), torch.tensor(argmax))
    assert float(term.step) == pytest.approx(0.1)  # 0.4 halved twice, then held
    term(torch.tensor(100.0), torch.tensor(95.0))  # the band's top: the push is the floored step
    assert float(term.multiplier) == pytest.approx(0.1)
    other = BudgetMultiplier(100.0, initial=0.0, step=0.4)
    other.load_state_dict(term.state_dict())
    other(torch.tensor(100.0), torch.tensor(50.0))
    assert float(other.step) == pytest.approx(0.1)
    # Without the floor (the controller before it) the step keeps halving.
    unfloored = BudgetMultiplier(100.0, initial=0.0, step=0.4, min_step_fraction=0.0)
    for argmax in (120.0, 50.0, 120.0, 50.0, 120.0):
        unfloored(torch.tensor(100.0), torch.tensor(argmax))
    assert float(unfloored.step) == pytest.approx(0.4 / 16)


def test_multiplier_gradient_pushes_expected_bops_towards_the_band():
    term = BudgetMultiplier(100.0, initial=0.0, step=1.0)
    over = torch.tensor(150.0, requires_grad=True)
    term(over, torch.tensor(150.0)).backward()
    assert float(over.grad) > 0  # descending lowers the BOPs
    term = BudgetMultiplier(100.0, initial=0.0, step=1.0)
    under = torch.tensor(50.0, requires_grad=True)
    term(under, torch.tensor(50.0)).backward()
    assert float(under.grad) < 0  # far under the budget: descending raises the BOPs


def test_evaluation_passes_leave_the_multiplier_alone_and_state_round_trips():
    term = BudgetMultiplier(100.0, initial=2.0, step=1.0)
    term(torch.tensor(100.0), torch.tensor(500.0), update=False)
    assert float(term.multiplier) == 2.0
    term(torch.tensor(100.0), torch.tensor(500.0))
    other = BudgetMultiplier(100.0, initial=0.0, step=1.0)
    other.load_state_dict(term.state_dict())
    assert float(other.multiplier) == float(term.multiplier) == pytest.approx(2.0 * 1.1 + 1.0)


def test_make_complexity_refuses_an_unknown_form():
    assert isinstance(make_complexity("reference", 1e6, 1e4, 1.0, 0.05, 3e-4), ReferenceComplexity)
    with pytest.raises(ValueError, match="complexity must be one of"):
        make_complexity("linear", 1e6, 1e4, 1.0, 0.05, 3e-4)


def test_a_limit_near_the_floor_moves_the_band_up_where_the_argmax_can_reach_it():
    """At 27 M against a 26.1 M all-lowest floor (jobs/method_quality.yaml) the band [0.85, 0.95]
    is out of reach: it would push every layer to its lowest bits. It becomes [floor, midway to
    the limit] instead; a roomy limit keeps the default band."""
    tight = BudgetMultiplier(27.0, initial=0.0, step=0.5, floor_bops=26.1)
    assert tight.low == pytest.approx(26.1 / 27) and tight.high == pytest.approx((26.1 / 27 + 1) / 2)
    tight(torch.tensor(27.0), torch.tensor(26.5))  # between the floor and the midway: no ramp down
    assert 0 < float(tight.multiplier) <= 0.5
    roomy = BudgetMultiplier(100.0, initial=0.0, step=0.5, floor_bops=50.0)
    assert (roomy.low, roomy.high) == (0.85, 0.95)
    assert make_complexity("budget", 27.0, 1.0, 1.0, 0.05, 3e-4, floor_bops=26.1).low == pytest.approx(26.1 / 27)


def test_the_step_remembers_the_push_an_excursion_needed():
    """A network that needs a push of 1.5 (ResNet-18) took 3-4 epochs to build it again from the
    first step at every excursion; the step now keeps a tenth of the last excursion's push."""
    term = BudgetMultiplier(100.0, initial=0.0, step=0.05)
    for _ in range(30):  # a long excursion over the band: mu ramps up geometrically
        term(torch.tensor(100.0), torch.tensor(150.0))
    needed = float(term.multiplier)
    assert needed > 5.0
    term(torch.tensor(100.0), torch.tensor(90.0))  # back inside: the step remembers a tenth of the push
    assert float(term.step) == pytest.approx(0.1 * needed, rel=1e-5)
    steps_back = 0
    while float(term.multiplier) > -needed / 2:  # under the band now: the pull reaches half that push fast
        term(torch.tensor(100.0), torch.tensor(70.0))
        steps_back += 1
    assert steps_back <= 10  # from the first step (halved to 0.025) it would take about 39
    # A short excursion whose push stayed under ten steps leaves the step as it was.
    small = BudgetMultiplier(100.0, initial=0.0, step=0.05)
    small(torch.tensor(100.0), torch.tensor(150.0))
    small(torch.tensor(100.0), torch.tensor(90.0))
    assert float(small.step) == pytest.approx(0.05)
