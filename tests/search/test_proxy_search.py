"""``search.method: proxy`` end to end on a real local Ray, and its bad input."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from gmpq_ray.core.cost.bops import CostModel, searched_bops
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.search.proxy_search import task_shares
from gmpq_ray.search.runner import run_search
from tests.conftest import write_job
from tests.test_cli import assert_refused

PROXY = {"method": "proxy", "proxy": "kl", "proxy_batches": 2, "seed": 0}


@pytest.mark.ray
def test_proxy_search_writes_the_run_folder_of_every_method(tmp_path, ray_local):
    job_path = write_job(tmp_path, search=PROXY, teacher={"epochs": 3, "lr": 0.05})
    out = tmp_path / "run"
    lines: list[str] = []
    result = run_search(job_path, out, progress=False, log=lines.append)

    for name in ("best_policy.json", "best_policy.png", "trials.csv", "study.db", "job.yaml", "teacher.pt", "proxy_scores.csv"):
        assert (out / name).is_file(), name
    policy = Policy.load(out / "best_policy.json")
    assert policy == result.best_policy
    cost = CostModel.for_model("digits_cnn", 16, 10, 1)
    searched = searched_bops(policy.layers, cost.macs)
    assert searched <= 33e6 and policy.bops["searched_g"] == pytest.approx(searched / 1e9)
    for name, bits in policy.layers.items():  # maximal: no single step up fits
        for raised in (LayerBits(bits.w_bits + 1, bits.a_bits), LayerBits(bits.w_bits, bits.a_bits + 1)):
            if max(raised.w_bits, raised.a_bits) <= 4:
                assert searched_bops({**policy.layers, name: raised}, cost.macs) > 33e6

    [trial] = pd.read_csv(out / "trials.csv").itertuples()
    assert trial.status == "TERMINATED" and 0 < trial.policy_accuracy <= 1
    scores = pd.read_csv(out / "proxy_scores.csv")
    assert len(scores) == 6 * 9 and (scores.damage >= 0).all()

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    [record] = study.trials  # one Optuna trial per solve
    assert record.state == optuna.trial.TrialState.COMPLETE
    assert record.user_attrs["proxy"] == "kl" and record.user_attrs["scoring_tasks"] > 1
    assert record.user_attrs["scoring_s"] > 0 and record.user_attrs["solve_s"] >= 0
    assert record.constraints["bops_limit"] == pytest.approx(searched / 1e9 - 0.033)
    assert any("(proxy)" in line for line in lines)


def test_task_shares_split_layers_round_robin_or_keep_one_pass_together():
    layers = [f"l{i}" for i in range(7)]
    assert task_shares(layers, one_pass=True, slots=4) == [layers]
    shares = task_shares(layers, one_pass=False, slots=2)
    assert len(shares) == 4 and sorted(sum(shares, [])) == sorted(layers)
    assert shares[0] == ["l0", "l4"]


@pytest.mark.parametrize(
    ("search", "space", "expected"),
    [
        ({"proxy": "snip"}, {}, "search.proxy: 'snip' is not one of ['arc', 'kl', 'fit']"),
        ({"proxy_batches": 0}, {}, "search.proxy_batches: must be at least 1"),
        ({"proxy": "fit", "proxy_data": "noise"}, {}, "search.proxy: 'fit' needs labels; proxy_data 'noise' has none"),
        ({"time_budget_s": 60}, {}, "search.time_budget_s: does not apply to method 'proxy'"),
        ({}, {"bops_limit": "20M"}, "searchspace.bops_limit: 0.02 G is below the smallest policy's 0.02595 G"),
    ],
)
def test_bad_proxy_jobs_end_in_one_line_and_write_nothing(tmp_path, capsys, search, space, expected):
    job_space = {"model": "digits_cnn", "input_size": 16, "num_classes": 10, "in_channels": 1,
                 "w_bits": [2, 3, 4], "a_bits": [2, 3, 4], "bops_limit": "33M", **space}
    job = write_job(tmp_path, search={**PROXY, **search}, searchspace=job_space)
    assert_refused(capsys, ["search", str(job), "--output", str(tmp_path / "out")], expected, tmp_path / "out")


def test_proxy_search_is_not_sharded(tmp_path, capsys):
    job = write_job(tmp_path, search=PROXY, resources={"cpus_per_trial": 1, "workers_per_trial": 2})
    assert_refused(capsys, ["search", str(job), "--output", str(tmp_path / "out")],
                   "resources.workers_per_trial: must be 1 with search.method 'proxy'", tmp_path / "out")
