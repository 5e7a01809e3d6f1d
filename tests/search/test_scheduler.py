"""The pruning scheduler with real Ray Tune trials and a real Optuna study."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.errors import NoResultError
from gmpq_ray.core.policy import Policy
from gmpq_ray.search.job import ParamSpec, load_job
from gmpq_ray.search.runner import run_search
from tests.conftest import steps_up_that_fit, write_job

pytestmark = pytest.mark.ray


LAYERS = CostModel.for_model("digits_cnn", 16, 10, 1).searched


def uniform_point(w: int, a: int) -> dict[str, int]:
    point = {f"w_bits/{name}": w for name in LAYERS}
    point.update({f"a_bits/{name}": a for name in LAYERS})
    return point


def test_scheduler_stops_over_budget_and_arc_degrading_trials(tmp_path, ray_local):
    # Limit 60 M: uniform 3/3 (58 M) fits, 4/4 (104 M) does not, 2/2 (26 M) fits but keeps
    # less of the teacher's attribution than 3/3 and is pruned by the median rule.
    job = write_job(
        tmp_path,
        searchspace={"model": "digits_cnn", "input_size": 16, "num_classes": 10, "in_channels": 1,
                     "w_bits": [2, 3, 4], "a_bits": [2, 3, 4], "bops_limit": "60M"},
        search={"method": "sampling", "proposal_mode": "raw", "epochs": 3, "num_trials": 3,
                "max_concurrent_trials": 1, "seed": 0, "qat_lr": 0.01,
                "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                "initial_points": [uniform_point(3, 3), uniform_point(4, 4), uniform_point(2, 2)]},
    )
    out = tmp_path / "run"
    result = run_search(job, out, progress=False, log=lambda _: None)
    trials = pd.read_csv(out / "trials.csv", keep_default_na=False)
    by_proposal = {row.proposal.split()[0]: row for row in trials.itertuples()}

    good, over, weak = by_proposal["3/3"], by_proposal["4/4"], by_proposal["2/2"]
    assert (good.status, good.stop_reason, good.epochs) == ("TERMINATED", "", 3)
    # Stopped at its first report, which comes before the network is even built.
    assert (over.status, over.stop_reason, over.epochs) == ("PRUNED", "bops_limit", 0)
    assert over.policy_bops_g > 0.060
    assert (weak.status, weak.stop_reason) == ("PRUNED", "arc")
    assert weak.epochs < 3 and weak.arc < good.arc
    assert json.loads((out / "stop_reasons.json").read_text()) == {over.trial_id: "bops_limit", weak.trial_id: "arc"}
    assert result.best_policy.layers[LAYERS[0]].w_bits == 3

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    records = {t.user_attrs.get("stop_reason", "finished"): t for t in study.trials}
    assert records["finished"].state == optuna.trial.TrialState.COMPLETE
    assert records["bops_limit"].state == optuna.trial.TrialState.PRUNED
    assert records["bops_limit"].system_attrs["constraints:bops_limit"] > 0  # its violation, in G
    assert records["arc"].state == optuna.trial.TrialState.PRUNED
    assert records["finished"].system_attrs["constraints:bops_limit"] <= 0


def test_repair_mode_evaluates_only_full_feasible_policies(tmp_path, ray_local):
    job = write_job(tmp_path, search={"method": "sampling", "proposal_mode": "repair", "epochs": 1, "num_trials": 3,
                                      "max_concurrent_trials": 2, "seed": 1, "sampler": "random",
                                      "pruner": {"type": "none"}})
    out = tmp_path / "run"
    run_search(job, out, progress=False, log=lambda _: None)
    trials = pd.read_csv(out / "trials.csv")
    assert set(trials.status) == {"TERMINATED"} and len(trials) == 3
    cost = CostModel.for_model("digits_cnn", 16, 10, 1)
    limit = 33e6
    policy_files = sorted((out / "tune").glob("*/checkpoint_*/policy.json"))
    assert len(policy_files) == 3  # one kept checkpoint a trial: every trial's policy is checked
    for policy_file in policy_files:
        policy = Policy.load(policy_file)
        searched, _ = cost.policy_bops(policy)
        assert searched <= limit
        assert steps_up_that_fit(policy, cost, limit, [2, 3, 4], [2, 3, 4]) == []
    # Raw proposals were mostly over the limit: repair mapped them in.
    assert (trials.argmax_bops_g > 0.033).any()


def test_supernet_over_budget_after_its_warm_up_is_stopped(tmp_path, ray_local):
    # The reference's linear complexity term with a negative weight rewards bits: the argmax
    # policy climbs far over the 33 M limit and the trial is stopped at the end of its warm-up.
    # A job file may not give a negative cd (it is refused as bad input), so the loaded job is changed.
    job = load_job(write_job(tmp_path, search__epochs=3, search__num_trials=1, search__bops_warmup_epochs=1,
                             search__bops_tolerance=0.1, search__complexity="reference",
                             search__params={"cd": {"value": 0.0}, "lr_alpha": {"value": 0.3}}))
    job.search.params["cd"] = ParamSpec(value=-0.05)
    out = tmp_path / "run"
    with pytest.raises(NoResultError, match="every trial was pruned"):
        run_search(job, out, progress=False, log=lambda _: None)
    trials = pd.read_csv(out / "trials.csv", keep_default_na=False)
    assert list(trials.status) == ["PRUNED"] and list(trials.stop_reason) == ["bops_limit"]
    assert list(trials.epochs) == [1] and trials.argmax_bops_g[0] > 0.033 * 1.1
