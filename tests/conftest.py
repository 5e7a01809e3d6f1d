"""Shared fixtures: a small job written to a temp dir, and one local Ray for the whole suite."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.policy import Policy

# Under pytest-xdist (`-n 2`) each worker process gets its own Ray temp folder: two local Rays
# sharing one folder would share its session_latest link and socket names.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["RAY_TMPDIR"] = os.path.join(os.environ.get("RAY_TMPDIR", "/tmp/ray"), os.environ["PYTEST_XDIST_WORKER"])


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


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts down, at the end of the session, the local Ray that :func:`ray_local` started."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """One local Ray runtime (2 CPUs, no dashboard) for every test that asks for it.

    Started by the first such test and kept to the end of the session (starting Ray costs
    seconds each time); a test that shut it down (see :func:`no_ray`) gets a new one. What a run
    under test starts itself (``start_ray``) joins it and leaves it up.
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


@pytest.fixture
def no_ray():
    """For a test that needs no Ray in this process (it joins a cluster of its own, or checks what
    happens before Ray starts): the shared local Ray is shut down first."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def steps_up_that_fit(policy: Policy, cost: CostModel, limit: float, w_bits: list[int], a_bits: list[int]) -> list[str]:
    """The single-layer steps up (one layer's weight or activation bits to the next candidate)
    that keep ``policy`` within ``limit``, by the cost model's BOPs: none for a maximal policy."""
    fitting = []
    for name, bits in policy.layers.items():
        for kind, options in (("w_bits", w_bits), ("a_bits", a_bits)):
            current = getattr(bits, kind)
            if current == max(options):
                continue
            higher = min(b for b in options if b > current)
            raised = dataclasses.replace(bits, **{kind: higher})
            stepped = dataclasses.replace(policy, layers={**policy.layers, name: raised})
            if cost.policy_bops(stepped)[0] <= limit:
                fitting.append(f"{name}.{kind} {current}->{higher}")
    return fitting
