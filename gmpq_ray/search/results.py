"""What a finished search's trials come to: ``trials.csv``, the best trial, the study tidied up."""

from __future__ import annotations

import math
import re
from pathlib import Path

import optuna
import pandas as pd
from ray import tune

from gmpq_ray.core.atomic import write_text_atomic
from gmpq_ray.core.errors import NoResultError
from gmpq_ray.runtime import study_url
from gmpq_ray.search.job import Job
from gmpq_ray.search.methods import get_method
from gmpq_ray.search.metrics import (
    EPOCH,
    EPOCHS,
    ERROR,
    FAILED,
    PRUNED,
    STATUS,
    STOP_REASON,
    STOP_TIME_BUDGET,
    STOPPED,
    TERMINATED,
    TIME_TOTAL_S,
    TRIAL_ID,
    TRIAL_METRICS,
)


def trials_table(grid: tune.ResultGrid, job: Job, stop_reasons: dict[str, str]) -> pd.DataFrame:
    """One row a trial: id, status (TERMINATED, PRUNED, STOPPED by the time budget, or ERROR), why it stopped early,
    the method's own columns (tuned hyper-parameters, or sampled bits), last reported metrics, its time, error."""
    method = get_method(job.search.method)
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get(TRIAL_ID, Path(result.path).name)
        failure = error_reason(result.error) if result.error else metrics.get(ERROR, "")
        reason = stop_reasons.get(trial_id, "")
        epochs = metrics.get(EPOCH, 0)
        status = FAILED if failure else (PRUNED if reason else TERMINATED)
        if status == TERMINATED and job.search.time_budget_s is not None and epochs < job.search.epochs:
            # Tune ends the trials still running when the search's wall-clock budget runs out.
            status, reason = STOPPED, STOP_TIME_BUDGET
        row = {TRIAL_ID: trial_id, STATUS: status, STOP_REASON: reason, EPOCHS: epochs}
        row.update(method.trials_row(job, result.config or {}))
        row.update({name: metrics.get(name) for name in TRIAL_METRICS})
        row[TIME_TOTAL_S] = metrics.get(TIME_TOTAL_S)  # the trainable's own time, as Tune measured it
        row[ERROR] = failure
        rows.append(row)
    return pd.DataFrame(rows).sort_values(TRIAL_ID).reset_index(drop=True)


def write_trials_csv(frame: pd.DataFrame, path: Path) -> None:
    write_text_atomic(path, frame.to_csv(index=False))


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_reason(error: BaseException | str) -> str:
    """The line of a trial's error that says what went wrong (``ValueError: ...``), without the
    colour codes and the ``ray::ImplicitFunc.train() (pid=..., actor_id=...)`` header Ray adds."""
    lines = [line.strip() for line in _ANSI_ESCAPE.sub("", str(error)).splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "ray::", "(")) and ":" in line:
            return line[:300]
    return (lines[-1] if lines else repr(error))[:300]


def best_result(grid: tune.ResultGrid, job: Job, stop_reasons: dict[str, str]) -> tune.Result:
    """The finished trial (not errored, not pruned, with a checkpoint) best on ``search.metric``.

    Raises:
        NoResultError: no trial finished.
    """
    metric = job.search.metric

    def finished(result) -> bool:
        metrics = result.metrics or {}
        value = metrics.get(metric)
        return (not result.error and not metrics.get(ERROR) and result.checkpoint is not None
                and metrics.get(TRIAL_ID) not in stop_reasons and isinstance(value, float) and math.isfinite(value))

    ok = [r for r in grid if finished(r)]
    if not ok:
        errors = "; ".join(error_reason(r.error) if r.error else str(r.metrics.get(ERROR)) for r in grid
                           if r.error or (r.metrics or {}).get(ERROR))[:500]
        raise NoResultError(f"no search trial finished ({errors or 'every trial was pruned'}); see trials.csv")
    sign = 1 if job.search.mode == "max" else -1
    return max(ok, key=lambda r: sign * r.metrics[metric])


def close_orphaned_optuna_trials(job: Job, study_path: Path) -> int:
    """Mark FAIL the Optuna trials a killed driver left RUNNING; returns how many.

    Once a search has finished, every trial Tune knows of has been told to Optuna; a trial
    still RUNNING was asked for after the driver's last experiment-state save, so no Tune
    trial will ever report it.
    """
    if not study_path.is_file():
        return 0
    study = optuna.load_study(study_name=job.name, storage=study_url(study_path))
    orphans = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for trial in orphans:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(orphans)
