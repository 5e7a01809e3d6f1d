"""``search.method: proxy``: one solve, its own fit, a searcher that records the proxy."""

from __future__ import annotations

import optuna

from gmpq_ray.search.job import load_job
from gmpq_ray.search.methods import get_method
from gmpq_ray.search.proxy_search import ProxyRecordingSearch
from tests.conftest import write_job


def test_one_solve_reserves_nothing_and_records_the_proxy(tmp_path):
    from ray import tune

    job = load_job(write_job(tmp_path, search={"method": "proxy", "proxy": "kl", "sampler": "tpe"}))
    method = get_method("proxy")
    searcher = method.searcher(job, tmp_path / "study.db")
    assert isinstance(searcher, ProxyRecordingSearch) and searcher.proxy == "kl"
    assert isinstance(searcher._sampler, optuna.samplers.RandomSampler)  # whatever search.sampler says
    assert isinstance(method.trial_resources(job), tune.PlacementGroupFactory)
    assert method.trials_row(job, {}) == {"proposal": ""}
