"""Building the searcher of a search: Ray Tune's OptunaSearch (recording), its sampler and domains.

A method says what its searcher samples and optimizes
(:meth:`gmpq_ray.search.methods.SearchMethod.searcher`); this module turns that into a
:class:`RecordingOptunaSearch` whose study is stored in SQLite.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from ray import tune

from gmpq_ray.runtime import study_url
from gmpq_ray.search.job import Job, ParamSpec
from gmpq_ray.search.optuna_search import RecordingOptunaSearch


def tune_domain(spec: ParamSpec):
    """The Ray Tune search domain (or constant) of one tuned hyper-parameter."""
    if spec.value is not None:
        return spec.value
    if spec.choices is not None:
        return tune.choice(list(spec.choices))
    return (tune.loguniform if spec.log else tune.uniform)(spec.low, spec.high)


def make_sampler(job: Job) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``search.sampler`` names, seeded with ``search.seed``."""
    search = job.search
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=search.seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=search.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=search.seed),
    }
    return samplers[search.sampler]()


def make_searcher(job: Job, study_path: Path, space: Callable[[Any], None] | None,
                  metric: str | list[str], mode: str | list[str]) -> RecordingOptunaSearch:
    """A :class:`RecordingOptunaSearch` over the job's study (named ``job.name``, in ``study_path``).

    Args:
        space: an Optuna define-by-run space, which carries the searcher's own ``metric`` and
            ``mode``; None: Optuna samples Tune's ``param_space``, with the metric and mode of
            the ``TuneConfig``.
        metric, mode: what the searcher optimizes (lists of two for a multi-objective sampler).
    """
    search = job.search
    common: dict[str, Any] = dict(
        bops_limit_g=job.space.bops_limit / 1e9,
        sampler=make_sampler(job),
        storage=optuna.storages.RDBStorage(study_url(study_path)),
        study_name=job.name,
        points_to_evaluate=[dict(point) for point in search.initial_points] or None,
    )
    if space is None:
        return RecordingOptunaSearch(**common)
    return RecordingOptunaSearch(space=space, metric=metric, mode=mode, **common)
