"""The comparison job: a search job plus a ``compare`` section.

Example (``jobs/compare_quickstart.yaml``)::

    compare:
      methods:                       # search settings per method, over the job's `search`
        differentiable: {epochs: 6}
        sampling: {epochs: 3, sampler: tpe, proposal_mode: repair}
        proxy: {proxy: kl, proxy_batches: 4}   # training-free: scored and solved in seconds
      budget: {time_budget_s: 120}   # or {num_trials: 8}: the same for both methods
      evaluation: {seeds: 3, epochs: 5, lr: 0.01}
      random_policies: 3
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmpq_ray.core.config import config_to_dict, key_path, load_yaml, parse, require, short_repr
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.search.job import Job, ParamSpec, SearchConfig, parse_job
from gmpq_ray.search.methods import METHOD_NAMES

METHODS = METHOD_NAMES  # the search methods, in the registry's order: differentiable, sampling, proxy
# Every compared policy is trained once per seed: bounds on what one comparison may ask.
MAX_SEEDS = 100
MAX_RANDOM_POLICIES = 1000


@dataclass
class BudgetConfig:
    """The compute both methods get: a trial count or a wall-clock budget per method."""

    num_trials: int | None = None
    time_budget_s: float | None = None

    def validate(self, where: str) -> None:
        require((self.num_trials is None) != (self.time_budget_s is None), where,
                "give exactly one of num_trials or time_budget_s")
        require(self.num_trials is None or self.num_trials >= 1, f"{key_path(where)}num_trials", "must be at least 1")
        require(self.time_budget_s is None or self.time_budget_s > 0, f"{key_path(where)}time_budget_s", "must be positive")


@dataclass
class EvaluationConfig:
    """The one QAT protocol every compared policy gets."""

    seeds: int = 3
    epochs: int = 5
    lr: float = 0.01

    def validate(self, where: str) -> None:
        require(1 <= self.seeds <= MAX_SEEDS, f"{key_path(where)}seeds", f"must be between 1 and {MAX_SEEDS}, got {self.seeds}")
        require(self.epochs >= 1, f"{key_path(where)}epochs", "must be at least 1")
        require(self.lr > 0, f"{key_path(where)}lr", "must be positive")


@dataclass
class CompareConfig:
    """What ``gmpq compare`` runs besides the base job."""

    # Per method, the search settings that differ from the job's ``search`` section: the loader
    # lays them over it and parses the result once, as that method's SearchConfig.
    methods: dict[str, dict[str, Any]] = field(default_factory=lambda: {m: {} for m in METHODS})
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(num_trials=4))
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    random_policies: int = 3

    def validate(self, where: str) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        require(not unknown, f"{key_path(where)}methods", f"unknown method(s) {short_repr(unknown)}; choose from {list(METHODS)}")
        require(bool(self.methods), f"{key_path(where)}methods", "needs at least one method")
        require(0 <= self.random_policies <= MAX_RANDOM_POLICIES, f"{key_path(where)}random_policies",
                f"must be between 0 and {MAX_RANDOM_POLICIES}, got {self.random_policies}")


@dataclass
class CompareJob:
    """A base job, one search job per method, and the comparison settings."""

    base: Job
    methods: dict[str, Job]
    compare: CompareConfig


def load_compare_job(path: str | Path) -> CompareJob:
    """Read and validate a comparison job: every method's search settings are checked here."""
    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise UserInputError(f"{path}: a job must be a mapping")
    raw = dict(raw)
    compare = parse(CompareConfig, raw.pop("compare", {}), f"{path}: compare")
    base = parse_job(raw, path)
    methods = {}
    for method, overrides in compare.methods.items():
        where = f"{path}: compare.methods.{method}"
        if not isinstance(overrides, dict):
            raise UserInputError(f"{where}: expected a mapping of search settings")
        settings = {**config_to_dict(base.search, omit_defaults=(ParamSpec,)), **overrides, "method": method}
        if compare.budget.num_trials is not None:
            settings.update(num_trials=compare.budget.num_trials, time_budget_s=None)
        else:
            # The wall clock decides; the trial count only bounds it.
            settings.update(num_trials=10_000, time_budget_s=compare.budget.time_budget_s)
        if method == "sampling":
            settings["params"], settings["initial_points"] = {}, []
        if method == "proxy":
            # One scoring and one exact solve: the budget bounds it, it has nothing to spend it on.
            settings.update(num_trials=1, time_budget_s=None, epochs=1, params={}, initial_points=[])
        search = parse(SearchConfig, settings, where)
        methods[method] = dataclasses.replace(base, name=f"{base.name}-{method}", search=search)
        methods[method].base_dir = base.base_dir
    return CompareJob(base=base, methods=methods, compare=compare)
