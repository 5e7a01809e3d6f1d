"""``search.method: differentiable``: GMPQ's supernet search; Optuna tunes its hyper-parameters.

Each trial trains a supernet (:func:`gmpq_ray.search.trial.supernet_trial`), on
``resources.workers_per_trial`` DDP workers when that is above 1
(:func:`gmpq_ray.search.sharded.sharded_supernet_trial`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gmpq_ray.search.methods.base import SearchMethod, Trainable

if TYPE_CHECKING:
    from gmpq_ray.search.job import Job


class NoTunedParameters:
    """Optuna define-by-run space that suggests nothing (a picklable class, not a closure)."""

    def __call__(self, trial) -> None:
        return None


def tuned_names(job: Job) -> list[str]:
    """The hyper-parameters Optuna tunes (those the job gives a range or choices)."""
    return [name for name, spec in job.search.resolved_params().items() if spec.value is None]


class DifferentiableMethod(SearchMethod):
    name = "differentiable"
    description = "a supernet per trial (weights and alpha trained together); Optuna tunes its hyper-parameters"

    def trainable(self, job: Job) -> Trainable:
        if job.resources.workers_per_trial > 1:
            # Imported here: Ray Train is only loaded by searches that shard their trials.
            from gmpq_ray.search.sharded import sharded_supernet_trial

            return sharded_supernet_trial
        from gmpq_ray.search.trial import supernet_trial

        return supernet_trial

    def optuna_space(self, job: Job):
        # Optuna tunes the job's hyper-parameters through ``param_space``; with every one fixed,
        # trials repeat one configuration, still recorded in the study.
        return None if tuned_names(job) else NoTunedParameters()

    def param_space(self, job: Job) -> dict[str, Any]:
        from gmpq_ray.search.searcher import tune_domain

        return {name: tune_domain(spec) for name, spec in job.search.resolved_params().items()}

    def bops_warmup_epochs(self, job: Job) -> int:
        # A supernet's argmax policy needs some epochs to settle near the limit and is repaired
        # anyway: it gets a warm-up and some slack.
        return job.search.supernet_bops_warmup()

    def bops_tolerance(self, job: Job) -> float:
        return job.search.bops_tolerance

    def trial_resources(self, job: Job) -> Any:
        if job.resources.workers_per_trial > 1:
            from gmpq_ray.search.sharded import sharded_trial_resources

            return sharded_trial_resources(job)
        return super().trial_resources(job)

    def check_resources(self, job: Job) -> None:
        if job.resources.workers_per_trial > 1:
            from gmpq_ray.runtime.cluster import check_fits_a_node
            from gmpq_ray.search.sharded import worker_resources

            check_fits_a_node({"CPU": 0.0, "GPU": 0.0, **worker_resources(job)}, "each DDP worker of a trial",
                              "resources.cpus_per_trial")
            return
        super().check_resources(job)

    def trials_row(self, job: Job, config: dict[str, Any]) -> dict[str, Any]:
        return {name: config.get(name) for name in tuned_names(job)}
