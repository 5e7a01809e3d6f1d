"""``search.method: sampling``: Optuna proposes discrete per-layer bits; each trial runs short QAT.

Each trial evaluates one proposal (:func:`gmpq_ray.search.sampling_trial.sampling_trial`); it
reports its exact BOPs before training, so the scheduler needs neither a warm-up nor slack.
With NSGA-II the searcher optimizes the metric and the policy's BOPs together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gmpq_ray.search.methods.base import SearchMethod, Trainable, proposal_row
from gmpq_ray.search.metrics import POLICY_BOPS_G

if TYPE_CHECKING:
    from gmpq_ray.search.job import Job


class SamplingMethod(SearchMethod):
    name = "sampling"
    description = "Optuna proposes per-layer bits; each trial evaluates one policy by short QAT"

    def trainable(self, job: Job) -> Trainable:
        from gmpq_ray.search.sampling_trial import sampling_trial

        return sampling_trial

    def optuna_space(self, job: Job):
        from gmpq_ray.search.sampling_trial import sampling_space

        return sampling_space(job)

    def objective(self, job: Job) -> tuple[str | list[str], str | list[str]]:
        search = job.search
        if search.sampler == "nsga2":
            return [search.metric, POLICY_BOPS_G], [search.mode, "min"]
        return search.metric, search.mode

    def trials_row(self, job: Job, config: dict[str, Any]) -> dict[str, Any]:
        return proposal_row(config)
