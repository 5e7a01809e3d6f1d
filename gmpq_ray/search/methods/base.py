"""The interface every search method implements, as Optuna's samplers implement ``BaseSampler``.

The runner (:func:`gmpq_ray.search.runner.run_search`) knows no method by name: it looks up the
job's ``search.method`` in :data:`gmpq_ray.search.methods.METHODS` and asks the method for its
trials and for what the search around them needs. A method module imports no Ray, Optuna or
torch when it is imported (``search/job.py`` reads the registry's names); what it runs is
imported when it is asked for.

Example::

    method = get_method(job.search.method)
    trainable = method.trainable(job)   # a function of (config, TrialContext)
    searcher = method.searcher(job, out / "study.db")
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from ray import tune

    from gmpq_ray.runtime import StopSignals
    from gmpq_ray.search.job import Job
    from gmpq_ray.search.optuna_search import RecordingOptunaSearch
    from gmpq_ray.search.trial_setup import TrialContext

Trainable = Callable[[dict[str, Any], "TrialContext"], None]


class SearchMethod(ABC):
    """A search method: its trials, their space, the searcher proposing them and how they are judged.

    Subclasses give :attr:`name`, :meth:`trainable` and :meth:`optuna_space`; the other methods
    have the defaults of a method whose trials train for ``search.epochs`` epochs under the
    shared scheduler.
    """

    #: The ``search.method`` value that selects this method.
    name: ClassVar[str]
    #: One line for the docs and the registry listing.
    description: ClassVar[str] = ""

    @abstractmethod
    def trainable(self, job: Job) -> Trainable:
        """The Ray Tune function trainable of one trial, ``f(config, context)``, which reports
        :data:`~gmpq_ray.search.metrics.TRIAL_METRICS` each epoch. Called by the driver when it
        builds (or restores) the Tune experiment."""

    @abstractmethod
    def optuna_space(self, job: Job) -> Callable[[Any], None] | None:
        """The Optuna define-by-run space the searcher samples from, or None where Optuna tunes
        :meth:`param_space` (Ray Tune's domains). Called when the searcher is built."""

    def param_space(self, job: Job) -> dict[str, Any]:
        """The Ray Tune ``param_space`` of the experiment (empty: the Optuna space says it all)."""
        return {}

    def objective(self, job: Job) -> tuple[str | list[str], str | list[str]]:
        """The metric(s) the searcher optimizes and their mode(s)."""
        return job.search.metric, job.search.mode

    def searcher(self, job: Job, study_path: Path) -> RecordingOptunaSearch:
        """Ray Tune's OptunaSearch for this method, its study stored in SQLite at ``study_path``."""
        from gmpq_ray.search.searcher import make_searcher

        return make_searcher(job, study_path, self.optuna_space(job), *self.objective(job))

    def bops_warmup_epochs(self, job: Job) -> int:
        """Epochs before the scheduler holds a trial's ``budget_bops_g`` to the limit."""
        return 0

    def bops_tolerance(self, job: Job) -> float:
        """Relative slack over the limit before the scheduler stops a trial."""
        return 0.0

    def trial_resources(self, job: Job) -> Any:
        """What ``tune.with_resources`` reserves for one trial (a dict or a placement group factory)."""
        return {"cpu": job.resources.cpus_per_trial, "gpu": job.resources.gpus_per_trial}

    def check_resources(self, job: Job) -> None:
        """Refuse trials that no node of the connected Ray can hold (called once Ray is up)."""
        from gmpq_ray.runtime.cluster import check_fits_a_node

        resources = job.resources
        check_fits_a_node({"CPU": resources.cpus_per_trial, "GPU": resources.gpus_per_trial}, "each trial",
                          "resources.cpus_per_trial" if resources.gpus_per_trial == 0 else "resources")

    def fit(self, job: Job, out: Path, teacher_state: dict[str, torch.Tensor], signals: StopSignals,
            resume: bool) -> tune.ResultGrid:
        """Run (or, with ``resume``, restore and finish) the Tune experiment in ``out/tune``."""
        from gmpq_ray.search.tune_fit import tune_fit

        return tune_fit(self, job, out, teacher_state, signals, resume)

    def trials_row(self, job: Job, config: dict[str, Any]) -> dict[str, Any]:
        """This method's own columns of a trial's row in ``trials.csv``, from the trial's config."""
        return {}


def proposal_row(config: dict[str, Any]) -> dict[str, str]:
    """The ``proposal`` column: a trial's per-layer bits, ``w/a`` a layer (empty without bits)."""
    from gmpq_ray.search.metrics import PROPOSAL

    w_bits, a_bits = config.get("w_bits", {}), config.get("a_bits", {})
    return {PROPOSAL: " ".join(f"{int(w_bits[n])}/{int(a_bits[n])}" for n in w_bits)}
