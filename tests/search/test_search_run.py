"""A real Ray Tune search with OptunaSearch: two short trials of the differentiable method."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.policy import Policy
from gmpq_ray.search.runner import run_search
from tests.conftest import steps_up_that_fit, write_job

pytestmark = pytest.mark.ray


def test_search_writes_policy_study_trials_and_figure(tmp_path, ray_local):
    job_path = write_job(tmp_path, search__fill_budget=True)
    out = tmp_path / "run"
    lines: list[str] = []
    result = run_search(job_path, out, progress=False, log=lines.append)

    policy = Policy.load(out / "best_policy.json")
    assert policy == result.best_policy
    cost = CostModel.for_model("digits_cnn", 16, 10, 1)
    searched, _ = cost.policy_bops(policy)
    assert searched <= 33e6
    assert policy.bops["searched_g"] == pytest.approx(searched / 1e9)
    # With fill_budget the derived policy fills the budget: no single step up still fits.
    policy.validate_layers(cost.searched, cost.fixed_layers, [2, 3, 4], [2, 3, 4])
    assert steps_up_that_fit(policy, cost, 33e6, [2, 3, 4], [2, 3, 4]) == []
    assert not policy.is_uniform()

    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and set(trials.status) == {"TERMINATED"}
    assert (trials.epochs == 2).all()
    assert trials.policy_bops_g.max() <= 0.033 + 1e-9
    assert trials.lambda_attr.nunique() == 2  # Optuna proposed two different configs

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    assert max(t.value for t in complete) == pytest.approx(trials.policy_accuracy.max())

    png = (out / "best_policy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    assert (out / "teacher.pt").is_file() and (out / "tune").is_dir()
    assert any("best policy written to" in line for line in lines)
    assert json.loads((out / "best_policy.json").read_text())["model"] == "digits_cnn"


def test_trials_cut_by_the_time_budget_are_marked_stopped(tmp_path, ray_local):
    # One long trial, a budget that ends it after a few epochs: the search still yields the
    # policy of its last checkpoint, and trials.csv says why the trial ended early.
    job_path = write_job(tmp_path, search__num_trials=1, search__max_concurrent_trials=1, search__epochs=60,
                         search__time_budget_s=20, search__pruner={"type": "none"}, search__bops_warmup_epochs=61)
    lines: list[str] = []
    result = run_search(job_path, tmp_path / "run", progress=False, log=lines.append)
    [trial] = pd.read_csv(tmp_path / "run" / "trials.csv").itertuples()
    assert (trial.status, trial.stop_reason) == ("STOPPED", "time_budget") and 1 <= trial.epochs < 60
    assert result.best_policy.bops["searched_g"] <= 0.033
    assert "1 stopped by the time budget" in lines[-1]
