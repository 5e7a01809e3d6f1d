"""The Tune experiment of a search: a method's trials, its searcher and the shared scheduler.

What :meth:`gmpq_ray.search.methods.SearchMethod.fit` runs unless a method has its own fit.
"""

from __future__ import annotations

import getpass
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from filelock import FileLock
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


# The node-wide lock of :func:`experiment_in_its_own_second` while this process holds it, with the
# file that records the second of the last experiment started.
_HELD: list[tuple[FileLock, Path]] = []


@contextmanager
def experiment_in_its_own_second() -> Iterator[None]:
    """Run a Tune experiment (``Tuner.fit``) that starts in a second of its own on this node.

    Ray Tune stages an experiment's driver files (experiment and searcher state) in
    ``<ray session>/artifacts/<second it started>/<experiment name>/driver_artifacts`` and syncs
    that folder to the run folder. Every search names its experiment ``tune``, so two searches
    started in one second on one node (``gmpq ablate`` starts one per data set at once) shared
    that folder: each run folder received the other's trials and experiment states, and a resume
    could restore the wrong search. A node-wide lock, taken before ``fit``, waits for the next
    second after the last experiment started, and is released once the experiment has made its
    staging folder (:class:`StagingClaimed`, a Tune callback) or ``fit`` ends.
    """
    lock_dir = Path(tempfile.gettempdir())
    user = getpass.getuser()
    lock, stamp = FileLock(str(lock_dir / f"gmpq-ray-tune-{user}.lock")), lock_dir / f"gmpq-ray-tune-{user}.last"
    lock.acquire()
    _HELD.append((lock, stamp))
    try:
        try:
            last = int(stamp.read_text())
        except (OSError, ValueError):
            last = 0
        # (A stamp from the future, after the clock was set back, is not waited for.)
        while last - 2 <= int(time.time()) <= last:
            time.sleep(0.05)
        yield
    finally:
        release_staging_lock()


def release_staging_lock() -> None:
    """Record this second as the last experiment's and release the lock, if this process holds it."""
    while _HELD:
        lock, stamp = _HELD.pop()
        stamp.write_text(str(int(time.time())))
        lock.release()


class StagingClaimed(tune.Callback):
    """Releases :func:`experiment_in_its_own_second`'s lock as the experiment starts (``setup`` runs
    once the experiment's staging folder is named), so that the next one need not wait for it to end."""

    def setup(self, **info) -> None:
        release_staging_lock()


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
        with experiment_in_its_own_second():
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
    tuner = make_tuner(method, job, out, teacher_state, searcher, scheduler, metric, mode)
    with experiment_in_its_own_second():
        return signals.tune_fit(tuner)


def make_tuner(method: SearchMethod, job: Job, out: Path, teacher_state: dict[str, torch.Tensor], searcher, scheduler,
               metric: str | None, mode: str | None) -> tune.Tuner:
    """The search's Tuner: the method's trainable and space, the searcher, the shared scheduler."""
    search = job.search
    return tune.Tuner(
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
            callbacks=[StagingClaimed()],
            verbose=1,
        ),
    )
