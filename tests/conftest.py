"""Shared fixtures: a small job written to a temp dir, and one local Ray for the suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Ray's workers inherit this: keep them from oversubscribing the 2 CI cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_job(folder: Path, **overrides) -> Path:
    """A tiny differentiable-search job on the digits (seconds per trial); returns its path."""
    space = {
        "model": "digits_cnn", "input_size": 16, "num_classes": 10, "in_channels": 1,
        "w_bits": [2, 3, 4], "a_bits": [2, 3, 4], "bops_limit": "33M",
    }
    job = {
        "name": "tiny",
        "searchspace": space,
        "data": {"name": "digits", "image_size": 16, "batch_size": 64},
        "teacher": {"epochs": 4, "lr": 0.05},
        "search": {
            "epochs": 2, "num_trials": 2, "max_concurrent_trials": 2, "seed": 0,
            # Slack for the supernets' expected BOPs after one epoch: these tests are not about
            # the BOPs rule (tests/search/test_scheduler.py is).
            "bops_tolerance": 0.5,
            "params": {"lambda_attr": {"low": 5.0, "high": 50.0, "log": True},
                       "lambda_c": {"low": 1.0, "high": 3.0, "log": True},
                       "lr_alpha": {"value": 0.3}},
        },
        "resources": {"cpus_per_trial": 1},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            job[section][field] = value
        else:
            job[section] = value
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray runtime (2 CPUs, no dashboard) shared by the tests of one module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
