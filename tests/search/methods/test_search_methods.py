"""Every registered search method, through the one interface the runner uses.

Shared tests run over the registry: a method is tested the moment it is registered.
"""

from __future__ import annotations

import typing

import pandas as pd
import pytest

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.search.job import SearchConfig, load_job
from gmpq_ray.search.methods import METHOD_NAMES, METHODS, SearchMethod, get_method
from gmpq_ray.search.metrics import TRIAL_COLUMNS_FIRST, TRIAL_COLUMNS_LAST, TRIAL_METRICS
from gmpq_ray.search.optuna_search import RecordingOptunaSearch
from tests.conftest import write_job


def tiny_job(tmp_path, name: str, **search):
    """A one-trial, one-epoch search of method ``name`` on the digits (any method takes these keys)."""
    settings = {"method": name, "epochs": 1, "num_trials": 1, "max_concurrent_trials": 1, "seed": 0,
                "sampler": "random", "pruner": {"type": "none"}, "bops_warmup_epochs": 2, "bops_tolerance": 0.5,
                "proxy_batches": 1, **search}
    return write_job(tmp_path, search=settings, teacher={"epochs": 1, "lr": 0.05})


def test_the_registry_is_what_a_job_may_name():
    assert METHOD_NAMES == ("differentiable", "sampling", "proxy")  # the order of the docs and tables
    assert typing.get_args(typing.get_type_hints(SearchConfig)["method"]) == METHOD_NAMES
    for name, method in METHODS.items():
        assert isinstance(method, SearchMethod) and method.name == name and method.description
        assert get_method(name) is method
    with pytest.raises(ValueError, match=r"unknown search method 'evolution'; choose from \['differentiable'"):
        get_method("evolution")


def test_the_registry_imports_no_ray():
    import subprocess
    import sys

    code = ("import sys; import gmpq_ray.search.job, gmpq_ray.search.methods; "
            "print(sorted(m for m in ('ray', 'optuna') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_has_a_trainable_a_space_and_a_searcher(name, tmp_path):
    job = load_job(tiny_job(tmp_path, name))
    method = get_method(name)
    assert callable(method.trainable(job))
    space = method.optuna_space(job)
    assert space is None or callable(space)
    assert isinstance(method.param_space(job), dict)
    searcher = method.searcher(job, tmp_path / "study.db")
    assert isinstance(searcher, RecordingOptunaSearch)
    assert method.bops_warmup_epochs(job) >= 0 and method.bops_tolerance(job) >= 0
    assert method.trial_resources(job) is not None
    assert isinstance(method.trials_row(job, {}), dict)


@pytest.mark.ray
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_runs_a_one_trial_search(name, tmp_path, ray_local):
    from gmpq_ray.search.runner import run_search

    result = run_search(tiny_job(tmp_path, name), tmp_path / "run", progress=False, log=lambda _: None)
    trials = pd.read_csv(tmp_path / "run" / "trials.csv", keep_default_na=False)
    assert len(trials) == 1 and list(trials.status) == ["TERMINATED"]
    columns = list(trials.columns)
    assert tuple(columns[:4]) == TRIAL_COLUMNS_FIRST and tuple(columns[-2:]) == TRIAL_COLUMNS_LAST
    assert set(TRIAL_METRICS) <= set(columns)
    cost = CostModel.for_model("digits_cnn", 16, 10, 1)
    assert cost.policy_bops(result.best_policy)[0] <= 33e6
    assert (tmp_path / "run" / "best_policy.json").is_file() and (tmp_path / "run" / "study.db").is_file()
