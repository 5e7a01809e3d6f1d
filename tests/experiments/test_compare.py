"""``gmpq compare`` on a tiny budget: the three methods, the baselines, the table and the figure."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from gmpq_ray.cli import main
from gmpq_ray.experiments.compare import run_compare
from tests.conftest import write_job

pytestmark = pytest.mark.ray


def write_compare_job(tmp_path, **compare_overrides):
    job_path = write_job(tmp_path, search__epochs=2)
    job = yaml.safe_load(job_path.read_text())
    job["search"]["pruner"] = {"type": "none"}
    job["compare"] = {
        "methods": {"differentiable": {}, "sampling": {"sampler": "random", "proposal_mode": "repair"},
                    "proxy": {"proxy": "kl", "proxy_batches": 1}},
        "budget": {"num_trials": 2},
        "evaluation": {"seeds": 2, "epochs": 1, "lr": 0.01},
        "random_policies": 1,
        **compare_overrides,
    }
    job_path.write_text(yaml.safe_dump(job))
    return job_path


def test_compare_runs_both_methods_and_the_baselines(tmp_path, ray_local):
    out = tmp_path / "cmp"
    table = run_compare(write_compare_job(tmp_path), out, log=lambda _: None)
    assert list(table.method) == ["differentiable", "proxy", "sampling", "uniform", "random-1"]  # YAML sorted the keys
    assert (table.bops_g <= 0.033 + 1e-9).all()
    assert (table.seeds == 2).all() and table.accuracy_mean.between(0, 1).all()
    assert table.loc[0, "trials"] == table.loc[2, "trials"] == 2 and table.loc[1, "trials"] == 1  # the proxy: one solve
    assert 0 < table.loc[1, "search_seconds"]
    assert table.loc[3, "policy"] == "2/2 2/2 2/2 2/2 2/2 2/2"  # uniform 3/3 (58 M) does not fit 33 M
    saved = pd.read_csv(out / "comparison.csv")
    assert list(saved.method) == list(table.method)
    markdown = (out / "comparison.md").read_text()
    assert "| differentiable |" in markdown and "| uniform |" in markdown and "±" in markdown
    # Scored on the held-out test split, with the paired difference to the best uniform policy.
    assert "test accuracy (%)" in markdown and "vs uniform (points)" in markdown
    assert table.vs_uniform_mean.notna().all() and float(table.loc[3, "vs_uniform_mean"]) == 0.0
    assert table.loc[0, "provenance"] in ("argmax", "repaired")
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "| proxy |" in markdown and "differentiable vs proxy vs sampling" in markdown
    for method in ("differentiable", "sampling", "proxy"):
        assert (out / method / "best_policy.json").is_file() and (out / method / "study.db").is_file()


@pytest.mark.parametrize(
    ("compare", "expected"),
    [
        ({"methods": {"evolution": {}}}, "unknown method(s) ['evolution']"),
        ({"methods": {"sampling": {"sampler": "cmaes"}}}, "'cmaes' is not one of"),
        ({"budget": {"num_trials": 0}}, "compare.budget.num_trials: must be at least 1"),
        ({"budget": {"time_budget_s": 0}}, "compare.budget.time_budget_s: must be positive"),
        ({"budget": {}}, "give exactly one of num_trials or time_budget_s"),
        ({"methods": {"differentiable": {"sampler": "nsga2"}}}, "nsga2 (multi-objective) needs method: sampling"),
        ({"evaluation": {"seeds": 0}}, "compare.evaluation.seeds"),
    ],
)
def test_bad_compare_jobs(tmp_path, capsys, compare, expected):
    job = write_compare_job(tmp_path, **compare)
    code = main(["compare", str(job), "--output", str(tmp_path / "cmp")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "cmp").exists()


def test_compare_with_a_limit_no_policy_meets(tmp_path, capsys):
    job = write_compare_job(tmp_path)
    raw = yaml.safe_load(job.read_text())
    raw["searchspace"]["bops_limit"] = "10M"
    job.write_text(yaml.safe_dump(raw))
    code = main(["compare", str(job), "--output", str(tmp_path / "cmp")])
    assert code == 2 and "below the smallest policy's" in capsys.readouterr().err
