"""``search.method: differentiable``: Optuna tunes the supernet's hyper-parameters."""

from __future__ import annotations

import math

from gmpq_ray.search.job import load_job
from gmpq_ray.search.methods import get_method
from gmpq_ray.search.methods.differentiable import NoTunedParameters
from tests.conftest import write_job


def test_optuna_tunes_the_param_space_and_the_rows_show_the_tuned_parameters(tmp_path):
    job = load_job(write_job(tmp_path, search__epochs=5, search__bops_tolerance=0.2))
    method = get_method("differentiable")
    assert method.optuna_space(job) is None  # Optuna samples Tune's param_space
    space = method.param_space(job)
    assert set(space) == set(job.search.resolved_params()) and space["lr_alpha"] == 0.3
    assert method.searcher(job, tmp_path / "study.db")._space is None
    assert method.bops_warmup_epochs(job) == math.ceil(5 / 2) and method.bops_tolerance(job) == 0.2
    assert method.trials_row(job, {"lambda_attr": 7.0, "lambda_c": 2.0, "lr_alpha": 0.3}) == {"lambda_attr": 7.0, "lambda_c": 2.0}
    assert method.trial_resources(job) == {"cpu": 1, "gpu": 0}


def test_every_parameter_fixed_gives_a_searcher_with_an_empty_space(tmp_path):
    job = load_job(write_job(tmp_path, search__params={"lambda_attr": {"value": 10.0}}))
    searcher = get_method("differentiable").searcher(job, tmp_path / "study.db")
    assert isinstance(searcher._space, NoTunedParameters)
    assert (searcher._metric, searcher._mode) == ("policy_accuracy", "max")


def test_sharded_trials_run_on_ray_train_workers(tmp_path):
    from gmpq_ray.search.sharded import sharded_supernet_trial, sharded_trial_resources

    job = load_job(write_job(tmp_path, resources={"cpus_per_trial": 2, "workers_per_trial": 2}))
    method = get_method("differentiable")
    assert method.trainable(job) is sharded_supernet_trial
    assert method.trial_resources(job) == sharded_trial_resources(job)
