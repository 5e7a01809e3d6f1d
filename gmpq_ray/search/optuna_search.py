"""Ray Tune's OptunaSearch, extended to keep the full record of each trial in the Optuna study.

Ray 2.60's ``OptunaSearch`` tells Optuna COMPLETE (with the last value) for a trial that a
scheduler stopped, and copies no other metric. This subclass, which the scheduler holds:

* records a trial stopped for its ARC as PRUNED, and one stopped for its BOPs as PRUNED with its
  constraint violation (``Trial.set_constraint``, Optuna 5's replacement for samplers'
  ``constraints_func``), and the reason as the user attribute ``stop_reason``;
* sets the ``bops_limit`` constraint (BOPs over the limit, <= 0 when feasible) of every trial
  and copies its last metrics into user attributes, so the study alone shows what was tried
  and how it ended (``optuna-dashboard sqlite:///DIR/study.db``).

It touches ``OptunaSearch``'s private ``_ot_trials``, ``_ot_study`` and ``_completed_trials``
(checked by tests/search/test_scheduler.py on the pinned Ray version).
"""

from __future__ import annotations

import math

import optuna
from ray.tune.search.optuna import OptunaSearch

from gmpq_ray.runtime.signals import stop_requested
from gmpq_ray.search.metrics import BUDGET_BOPS_G, DONE, ERROR, TRIAL_METRICS

CONSTRAINT_KEY = "bops_limit"


class RecordingOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records stop reasons, constraints and metrics in the study.

    Args:
        bops_limit_g: the searched-layer budget in G BOPs (for the constraint value).
        **kwargs: passed to ``OptunaSearch``.
    """

    def __init__(self, bops_limit_g: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bops_limit_g = bops_limit_g
        self.stop_reasons: dict[str, str] = {}

    def record_stop(self, trial_id: str, reason: str) -> None:
        """Called by the scheduler when it stops ``trial_id``; applied at completion."""
        self.stop_reasons[trial_id] = reason

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if stop_requested() and not (result or {}).get(DONE):
            # Tune stops the running trials of an interrupted search as if they had completed;
            # their Optuna trials stay open so that ``--resume`` can report to them.
            return None
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        result = result or {}
        bops = result.get(BUDGET_BOPS_G)
        if bops is not None and math.isfinite(bops):
            ot_trial.set_constraint(CONSTRAINT_KEY, bops - self.bops_limit_g)
        for name in TRIAL_METRICS:
            value = result.get(name)
            if isinstance(value, float) and math.isfinite(value):
                ot_trial.set_user_attr(name, value)
        if result.get(ERROR):
            ot_trial.set_user_attr(ERROR, str(result[ERROR])[:500])
        reason = self.stop_reasons.get(trial_id)
        if reason is None:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial.set_user_attr("stop_reason", reason)
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)
