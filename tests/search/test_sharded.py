"""Sharded supernet trials: a Ray Train TorchTrainer with 2 DDP workers inside one Tune trial."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from ray import tune

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import Policy
from gmpq_ray.search.job import load_job
from gmpq_ray.search.metrics import TRIAL_METRICS
from gmpq_ray.search.runner import run_search
from gmpq_ray.search.sharded import sharded_supernet_trial, sharded_trial_resources, worker_resources
from gmpq_ray.search.trial_setup import POLICY_FILE, STATE_FILE, TrialContext
from tests.conftest import write_job

pytestmark = pytest.mark.ray

SHARDED = {"cpus_per_trial": 2, "workers_per_trial": 2}


def reported(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def test_sharded_trial_reports_like_a_supernet_trial(tmp_path, ray_local):
    job = load_job(write_job(tmp_path, resources=SHARDED, search__num_trials=1, search__max_concurrent_trials=1))
    assert sharded_trial_resources(job)["cpu"] + 2 * worker_resources(job)["CPU"] == pytest.approx(2.0)
    torch.manual_seed(0)
    teacher = create_model("digits_cnn", num_classes=10, in_channels=1).state_dict()
    trainable = tune.with_parameters(sharded_supernet_trial, context=TrialContext(job=job, teacher_state=teacher))
    tuner = tune.Tuner(
        tune.with_resources(trainable, sharded_trial_resources(job)),
        param_space={**{name: spec.value for name, spec in job.search.resolved_params().items()},
                     "lambda_attr": 20.0, "lambda_c": 0.1, "lr_weights": 0.02, "lr_alpha": 0.3, "weight_decay": 5e-4},
        run_config=tune.RunConfig(name="tune", storage_path=str(tmp_path / "run")),
    )
    [result] = list(tuner.fit())
    assert result.error is None
    assert set(TRIAL_METRICS) <= set(result.metrics) and result.metrics["epoch"] == 2
    # Every epoch reached Tune through TuneReportCallback; the last one again with the checkpoint.
    assert [line["epoch"] for line in reported(Path(result.path))] == [1, 2, 2]
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, weights_only=True)
        policy = Policy.load(Path(folder) / POLICY_FILE)
    assert set(state) == {"supernet", "weight_opt", "alpha_opt", "schedule", "rng", "epoch", "objective"} and state["epoch"] == 2
    searched, _ = CostModel.for_model("digits_cnn", 16, 10, 1).policy_bops(policy)
    assert searched <= 33e6 and policy.bops["searched_g"] == pytest.approx(searched / 1e9)
    assert (Path(result.path) / "train" / "epoch_0002" / STATE_FILE).is_file()  # the Train run inside the trial


def test_run_search_with_two_workers_per_trial(tmp_path, ray_local):
    """Needs the differentiable method to dispatch ``workers_per_trial > 1`` to ``sharded_supernet_trial``."""
    # No pruning: this test is about where the trial runs, not about how the search judges it.
    job = write_job(tmp_path, resources=SHARDED, search__num_trials=1, search__max_concurrent_trials=1,
                    search__bops_warmup_epochs=2, search__pruner={"type": "none"}, teacher__epochs=1)
    result = run_search(job, tmp_path / "run", progress=False, log=lambda _: None)
    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert list(trials.status) == ["TERMINATED"] and list(trials.epochs) == [2]
    assert result.best_policy.bops["searched_g"] <= 0.033
    trial_dirs = [p for p in (tmp_path / "run" / "tune").iterdir() if p.is_dir()]
    assert [sorted(q.name for q in (d / "train").glob("epoch_*")) for d in trial_dirs] == [["epoch_0002"]]
