"""The job files under ``jobs/`` that run offline are valid: a README command must not fail on its own example."""

from __future__ import annotations

import pytest

from gmpq_ray.experiments.ablate_job import load_ablation_job
from gmpq_ray.experiments.compare_job import load_compare_job
from gmpq_ray.search.job import load_job
from tests.conftest import REPO

JOBS = REPO / "jobs"


@pytest.mark.parametrize("name", ["quickstart.yaml", "sampling_quickstart.yaml", "proxy_quickstart.yaml"])
def test_search_jobs_load(name):
    job = load_job(JOBS / name)
    assert job.space.model == "digits_cnn" and job.data.name == "digits"
    assert job.space.floor_bops() <= job.space.bops_limit


def test_compare_quickstart_loads():
    job = load_compare_job(JOBS / "compare_quickstart.yaml")
    assert set(job.methods) == {"differentiable", "sampling", "proxy"}
    assert {job.methods[m].space.bops_limit for m in job.methods} == {33e6}  # one limit for both


def test_transfer_quickstart_loads():
    job = load_ablation_job(JOBS / "dataset_transfer_quickstart.yaml")
    assert len(job.pairs) == 3  # one architecture, three small data sets


def test_method_quality_searches_the_stem_under_a_tight_limit():
    job = load_compare_job(JOBS / "method_quality.yaml")
    space = job.base.space
    assert "features.0.conv" in space.cost_model().searched
    assert space.floor_bops() <= space.bops_limit <= 1.05 * space.floor_bops()
    assert job.compare.evaluation.seeds >= 3
