"""The pruning scheduler both search methods share.

A Ray Tune ``TrialScheduler`` with two rules, checked on every reported result:

* **BOPs limit**: a trial whose ``budget_bops_g`` exceeds the limit is stopped at once, from
  ``bops_warmup_epochs`` on (0 for sampled policies: they report their BOPs before building the
  network; a supernet's argmax BOPs get half its epochs by default to come down, and a
  relative ``bops_tolerance``, as its derived policy is repaired anyway). Reason ``bops_limit``.
* **ARC degradation**: each epoch's ``arc`` is reported to an Optuna pruner (median, percentile
  or successive halving) that compares it with the other trials' ARC at the same epoch; when
  it says prune, the trial stops. Reason ``arc``.

The pruner decides on its own in-memory Optuna study with one objective (ARC, maximized), so
it works whatever the search's objective is (NSGA-II's multi-objective studies cannot prune).
The search's own study records the outcome through :class:`RecordingOptunaSearch`, which the
scheduler holds: it must be the very searcher given to ``TuneConfig``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from gmpq_ray.core.policy import write_text_atomic
from gmpq_ray.search.job import PrunerConfig
from gmpq_ray.search.metrics import ARC, BUDGET_BOPS_G, EPOCH, STOP_ARC, STOP_BOPS_LIMIT
from gmpq_ray.search.optuna_search import RecordingOptunaSearch

STOP_REASONS_FILE = "stop_reasons.json"


def read_stop_reasons(path: Path) -> dict[str, str]:
    """``{trial_id: reason}`` of the trials a scheduler stopped (empty if none)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def make_pruner(config: PrunerConfig) -> optuna.pruners.BasePruner | None:
    """The Optuna pruner a job names (None for ``type: none``)."""
    if config.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_steps)
    if config.type == "percentile":
        return optuna.pruners.PercentilePruner(config.percentile, n_startup_trials=config.n_startup_trials,
                                               n_warmup_steps=config.n_warmup_steps)
    if config.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=config.min_resource, reduction_factor=config.reduction_factor)
    return None


class BudgetAndARCScheduler(FIFOScheduler):
    """Stops trials that break the BOPs limit or whose ARC degrades; records why.

    Args:
        searcher: the search algorithm given to ``TuneConfig`` (records stops in the study).
        bops_limit_g: the searched-layer budget, G BOPs.
        bops_warmup_epochs: epochs before the BOPs rule applies.
        bops_tolerance: relative slack over the limit before the BOPs rule stops a trial.
        pruner: an Optuna pruner for the ARC rule, or None to keep only the BOPs rule.
        record_path: a JSON file that keeps ``{trial_id: reason}`` of every stopped trial
            (written atomically at each stop, so it survives a driver crash and a resume).
    """

    def __init__(
        self,
        searcher: RecordingOptunaSearch | None,
        bops_limit_g: float,
        bops_warmup_epochs: int = 0,
        bops_tolerance: float = 0.0,
        pruner: optuna.pruners.BasePruner | None = None,
        record_path: Path | None = None,
    ) -> None:
        super().__init__()
        self.searcher = searcher
        self.bops_limit_g = bops_limit_g
        self.bops_warmup_epochs = bops_warmup_epochs
        self.bops_tolerance = bops_tolerance
        self.pruner = pruner
        self._arc_study = (
            optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
            if pruner is not None else None
        )
        self._arc_trials: dict[str, optuna.trial.Trial] = {}
        self.record_path = record_path
        self.stop_reasons: dict[str, str] = read_stop_reasons(record_path) if record_path else {}

    def _stop(self, trial_id: str, reason: str) -> str:
        self.stop_reasons[trial_id] = reason
        if self.record_path is not None:
            write_text_atomic(self.record_path, json.dumps(self.stop_reasons, indent=1))
        if self.searcher is not None:
            self.searcher.record_stop(trial_id, reason)
        return TrialScheduler.STOP

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        trial_id = trial.trial_id
        epoch = int(result.get(EPOCH, 0))
        bops = result.get(BUDGET_BOPS_G)
        if bops is not None and math.isfinite(bops) and epoch >= self.bops_warmup_epochs and bops > self.bops_limit_g * (1 + self.bops_tolerance + 1e-9):
            return self._stop(trial_id, STOP_BOPS_LIMIT)
        arc = result.get(ARC)
        if self._arc_study is not None and arc is not None and math.isfinite(arc) and epoch >= 1:
            arc_trial = self._arc_trials.get(trial_id)
            if arc_trial is None:
                arc_trial = self._arc_trials[trial_id] = self._arc_study.ask()
            arc_trial.report(float(arc), step=epoch)
            if arc_trial.should_prune():
                self._arc_study.tell(arc_trial, state=optuna.trial.TrialState.PRUNED)
                del self._arc_trials[trial_id]
                return self._stop(trial_id, STOP_ARC)
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        arc_trial = self._arc_trials.pop(trial.trial_id, None)
        if arc_trial is not None:
            arc = (result or {}).get(ARC)
            finished = arc is not None and math.isfinite(arc)
            self._arc_study.tell(arc_trial, float(arc) if finished else None,
                                 state=optuna.trial.TrialState.COMPLETE if finished else optuna.trial.TrialState.FAIL)
        super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        arc_trial = self._arc_trials.pop(trial.trial_id, None)
        if arc_trial is not None:
            self._arc_study.tell(arc_trial, state=optuna.trial.TrialState.FAIL)
        super().on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        counts = {reason: list(self.stop_reasons.values()).count(reason) for reason in (STOP_BOPS_LIMIT, STOP_ARC)}
        return f"BudgetAndARCScheduler: stopped {counts[STOP_BOPS_LIMIT]} over the BOPs limit, {counts[STOP_ARC]} for ARC"
