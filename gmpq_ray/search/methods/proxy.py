"""``search.method: proxy``: training-free; one trial scores every choice (Ray tasks) and solves.

The trainable is :func:`gmpq_ray.search.proxy_search.proxy_trial`; the experiment has one
trial and no scheduler (:func:`gmpq_ray.search.proxy_search.proxy_fit`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gmpq_ray.search.methods.base import SearchMethod, Trainable, proposal_row

if TYPE_CHECKING:
    import torch
    from ray import tune

    from gmpq_ray.runtime import StopSignals
    from gmpq_ray.search.job import Job
    from gmpq_ray.search.optuna_search import RecordingOptunaSearch


class NoParameters:
    """Optuna define-by-run space that suggests nothing: a solve has no hyper-parameter to tune."""

    def __call__(self, trial) -> None:
        return None


class ProxyMethod(SearchMethod):
    name = "proxy"
    description = "training-free: score each layer's choices with a proxy (Ray tasks), solve the allocation once"

    def trainable(self, job: Job) -> Trainable:
        from gmpq_ray.search.proxy_search import proxy_trial

        return proxy_trial

    def optuna_space(self, job: Job):
        return NoParameters()

    def searcher(self, job: Job, study_path: Path) -> RecordingOptunaSearch:
        # One solve: a random sampler (it proposes nothing), no initial points.
        import optuna

        from gmpq_ray.runtime import study_url
        from gmpq_ray.search.proxy_search import ProxyRecordingSearch

        metric, mode = self.objective(job)
        return ProxyRecordingSearch(
            proxy=job.search.proxy, space=self.optuna_space(job), metric=metric, mode=mode,
            bops_limit_g=job.space.bops_limit / 1e9, sampler=optuna.samplers.RandomSampler(seed=job.search.seed),
            storage=optuna.storages.RDBStorage(study_url(study_path)), study_name=job.name,
        )

    def trial_resources(self, job: Job) -> Any:
        # The trial mostly waits on its scoring tasks, which hold the CPUs (and GPUs) of the search;
        # it reserves none itself (Tune refuses an empty request: one byte of memory stands in).
        from ray import tune

        return tune.PlacementGroupFactory([{"memory": 1}])

    def fit(self, job: Job, out: Path, teacher_state: dict[str, torch.Tensor], signals: StopSignals,
            resume: bool) -> tune.ResultGrid:
        from gmpq_ray.search.proxy_search import proxy_fit

        return proxy_fit(self, job, out, teacher_state, signals, resume)

    def trials_row(self, job: Job, config: dict[str, Any]) -> dict[str, Any]:
        return proposal_row(config)  # empty: a solve proposes no bits through Optuna
