"""Sharded supernet trials: a Ray Train TorchTrainer with 2 DDP workers inside one Tune trial."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.policy import Policy
from gmpq_ray.search.job import load_job
from gmpq_ray.search.metrics import TRIAL_METRICS
from gmpq_ray.search.runner import run_search
from gmpq_ray.search.sharded import sharded_trial_resources, worker_resources
from gmpq_ray.search.trial_setup import POLICY_FILE, STATE_FILE
from tests.conftest import write_job

pytestmark = pytest.mark.ray

SHARDED = {"cpus_per_trial": 2, "workers_per_trial": 2}


def reported(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def test_run_search_with_two_workers_per_trial(tmp_path, ray_local):
    """Needs the differentiable method to dispatch ``workers_per_trial > 1`` to ``sharded_supernet_trial``."""
    # No pruning and no BOPs stop (the warm-up outlasts the 2 epochs): this test is about where the
    # trial runs, not about how the search judges it.
    job = write_job(tmp_path, resources=SHARDED, search__num_trials=1, search__max_concurrent_trials=1,
                    search__bops_warmup_epochs=3, search__pruner={"type": "none"}, teacher__epochs=1)
    result = run_search(job, tmp_path / "run", progress=False, log=lambda _: None)
    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert list(trials.status) == ["TERMINATED"] and list(trials.epochs) == [2]
    assert result.best_policy.bops["searched_g"] <= 0.033
    trial_dirs = [p for p in (tmp_path / "run" / "tune").iterdir() if p.is_dir()]
    assert [sorted(q.name for q in (d / "train").glob("epoch_*")) for d in trial_dirs] == [["epoch_0002"]]
    # The sharded trial reports like a supernet trial: every metric, every epoch through
    # TuneReportCallback and the last one again with the checkpoint (one run checks both, since
    # each Ray Train run inside a trial costs a worker group's start).
    [trial_dir] = trial_dirs
    lines = reported(trial_dir)
    assert set(TRIAL_METRICS) <= set(lines[-1]) and [line["epoch"] for line in lines] == [1, 2, 2]
    [checkpoint] = sorted(trial_dir.glob("checkpoint_*"))
    state = torch.load(checkpoint / STATE_FILE, weights_only=True)
    policy = Policy.load(checkpoint / POLICY_FILE)
    assert set(state) == {"supernet", "weight_opt", "alpha_opt", "schedule", "rng", "epoch", "objective"} and state["epoch"] == 2
    searched, _ = CostModel.for_model("digits_cnn", 16, 10, 1).policy_bops(policy)
    assert searched <= 33e6 and policy.bops["searched_g"] == pytest.approx(searched / 1e9)
    assert (trial_dir / "train" / "epoch_0002" / STATE_FILE).is_file()  # the Train run inside the trial


def test_sharded_resources_fit_the_trial(tmp_path):
    job = load_job(write_job(tmp_path, resources=SHARDED, search__num_trials=1, search__max_concurrent_trials=1))
    assert sharded_trial_resources(job)["cpu"] + 2 * worker_resources(job)["CPU"] == pytest.approx(2.0)
