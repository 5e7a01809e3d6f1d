"""The job files under ``jobs/`` that run offline are valid: a README command must not fail on its own example."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gmpq_ray.experiments.ablate_job import load_ablation_job
from gmpq_ray.experiments.compare_job import load_compare_job
from gmpq_ray.finetune.job import job_from_dict, load_finetune_job
from gmpq_ray.finetune.job import job_to_dict as finetune_job_to_dict
from gmpq_ray.search.job import job_to_dict as search_job_to_dict
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


def _search_jobs_of_every_shipped_file():
    """Every search job the shipped files hold: the search jobs, each compared method, each ablation pair."""
    for name in ("quickstart.yaml", "sampling_quickstart.yaml", "proxy_quickstart.yaml"):
        yield name, load_job(JOBS / name)
    for name in ("compare_quickstart.yaml", "method_quality.yaml"):
        for method, job in load_compare_job(JOBS / name).methods.items():
            yield f"{name}:{method}", job
    for pair in load_ablation_job(JOBS / "dataset_transfer_quickstart.yaml").pairs:
        yield f"dataset_transfer_quickstart.yaml:{pair.dataset}", pair.search


def test_search_job_yaml_round_trips(tmp_path):
    """What a run folder keeps as ``job.yaml`` (and ``--resume`` reads) loads back to the same job."""
    for label, job in _search_jobs_of_every_shipped_file():
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(search_job_to_dict(job), sort_keys=False))
        loaded = load_job(path)
        loaded.base_dir = job.base_dir  # where the job file was: not part of the job's data
        assert loaded == job, label
        assert search_job_to_dict(loaded) == search_job_to_dict(job), label


@pytest.mark.parametrize("name", ["finetune_digits.yaml", "finetune_imagenet.yaml"])
def test_finetune_job_yaml_round_trips(tmp_path, name):
    raw = yaml.safe_load((JOBS / name).read_text())
    raw["fp_state_dict"] = str(tmp_path / "fp.pt")  # the shipped paths point at a user's weights
    (tmp_path / "fp.pt").write_bytes(b"")
    if "searchspace" in raw:
        raw["searchspace"] = str(REPO / "searchspaces" / Path(raw["searchspace"]).name)
    (tmp_path / name).write_text(yaml.safe_dump(raw))
    job = load_finetune_job(tmp_path / name)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(finetune_job_to_dict(job), sort_keys=False))
    assert load_finetune_job(tmp_path / "job.yaml") == job
    assert job_from_dict(finetune_job_to_dict(job), "job.yaml") == job


def test_ablation_finetune_jobs_round_trip():
    for pair in load_ablation_job(JOBS / "dataset_transfer_quickstart.yaml").pairs:
        assert job_from_dict(yaml.safe_load(yaml.safe_dump(finetune_job_to_dict(pair.finetune))), "job.yaml") == pair.finetune
