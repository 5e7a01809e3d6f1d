"""The Tune experiment of a search: a method's trials, its searcher and the shared scheduler.

What :meth:`gmpq_ray.search.methods.SearchMethod.fit` runs unless a method has its own fit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from ray import tune

from gmpq_ray.runtime import StopSignals
from gmpq_ray.search.job import Job
from gmpq_ray.search.scheduler import STOP_REASONS_FILE, BudgetAndARCScheduler, make_pruner
from gmpq_ray.search.trial_setup import TrialContext

if TYPE_CHECKING:
    from gmpq_ray.search.methods import SearchMethod

TUNE_DIR = "tune"
STUDY_FILE = "study.db"


def save_state_every_step() -> None:
    """Save the experiment state at every controller step, so that a trial that has just
    finished is never re-run after a driver crash (Tune's default period is ~10 s)."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def trainable(method: SearchMethod, job: Job, teacher_state: dict[str, torch.Tensor]):
    """The method's trainable with the search's context and the method's trial resources."""
    function = tune.with_parameters(method.trainable(job), context=TrialContext(job=job, teacher_state=teacher_state))
    return tune.with_resources(function, method.trial_resources(job))


def tune_fit(method: SearchMethod, job: Job, out: Path, teacher_state: dict[str, torch.Tensor], signals: StopSignals,
             resume: bool) -> tune.ResultGrid:
    """Run the search's Tune experiment in ``out/tune`` (or restore it and finish it, ``resume``)."""
    save_state_every_step()
    if resume:
        tuner = tune.Tuner.restore(str(out / TUNE_DIR), trainable(method, job, teacher_state),
                                   resume_unfinished=True, resume_errored=True)
        return signals.tune_fit(tuner)
    search = job.search
    searcher = method.searcher(job, out / STUDY_FILE)
    scheduler = BudgetAndARCScheduler(
        searcher, job.space.bops_limit / 1e9,
        bops_warmup_epochs=method.bops_warmup_epochs(job),
        bops_tolerance=method.bops_tolerance(job),
        pruner=make_pruner(search.pruner), record_path=out / STOP_REASONS_FILE,
    )
    # A searcher with its own space carries its own metric and mode (a list of two with NSGA-II).
    metric, mode = (None, None) if searcher._space else (search.metric, search.mode)
    tuner = tune.Tuner(
        trainable(method, job, teacher_state),
        param_space=method.param_space(job),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            metric=metric,
            mode=mode,
            num_samples=search.num_trials,
            max_concurrent_trials=search.max_concurrent_trials,
            time_budget_s=search.time_budget_s,
            # A new actor per trial costs ~3 s (a process importing torch and Ray): reuse them.
            # Measured by benchmarks/bench_tune_overhead.py (3.4 s against 0.5 s per trial).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(out),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            verbose=1,
        ),
    )
    return signals.tune_fit(tuner)
