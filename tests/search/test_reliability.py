"""Searches survive worker and driver crashes and numerical faults (real Ray, real Optuna)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest

from gmpq_ray.search.runner import run_search
from tests.conftest import write_job

pytestmark = pytest.mark.ray


def trial_results(out: Path) -> dict[str, list[dict]]:
    """Each trial folder's reported results (result.json lines)."""
    results = {}
    for path in (out / "tune").glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        results[path.parent.name] = lines
    return results


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_nan_trial_is_recorded_as_failed_and_the_search_goes_on(tmp_path, ray_local):
    job = write_job(
        tmp_path,
        search__params={"lr_weights": {"choices": [0.02, 1e30]}, "lr_alpha": {"value": 0.3}},
        search__initial_points=[{"lr_weights": 1e30}, {"lr_weights": 0.02}],
    )
    result = run_search(job, tmp_path / "run", progress=False, log=lambda _: None)
    trials = result.trials.set_index("trial_id")
    assert sorted(trials.status) == ["ERROR", "TERMINATED"]
    failed = trials[trials.status == "ERROR"].iloc[0]
    assert "non-finite" in failed.error or "became nan" in failed.error
    assert trials[trials.status == "TERMINATED"].iloc[0].epochs == 2
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "FAIL"]
    assert result.best_policy.bops["searched_g"] <= 0.033


def test_killed_worker_resumes_from_its_checkpoint(tmp_path, ray_local):
    import threading

    job = write_job(tmp_path, search__epochs=4, search__num_trials=1, search__max_concurrent_trials=1,
                    search__max_failures=2)
    out = tmp_path / "run"
    killed: list[int] = []

    def kill_after_first_epoch():
        def first_epoch_done():
            return any(len(lines) >= 1 for lines in trial_results(out).values()) if (out / "tune").exists() else False

        wait_for(first_epoch_done, 120, "the first epoch")
        pid = next(iter(trial_results(out).values()))[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_after_first_epoch, daemon=True)
    killer.start()
    result = run_search(job, out, progress=False, log=lambda _: None)
    killer.join(timeout=5)
    assert killed, "the worker was never killed"
    trial = result.trials.iloc[0]
    assert trial.status == "TERMINATED" and trial.epochs == 4
    lines = next(iter(trial_results(out).values()))
    epochs = [line["epoch"] for line in lines]
    # Resumed from the checkpoint of an epoch already done: no restart from epoch 1.
    assert epochs[0] == 1 and epochs[-1] == 4 and epochs.count(1) == 1
    assert len({line["pid"] for line in lines}) == 2  # a second worker process finished the trial


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_resume_after_the_driver_is_killed(tmp_path):
    job = write_job(tmp_path, search__epochs=2, search__num_trials=3, search__max_concurrent_trials=1)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "gmpq_ray.cli", "search", str(job), "--output", str(out), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    started: list[psutil.Process] = []
    try:
        def one_trial_finished():
            started.extend(p for p in _descendants(driver.pid) if p not in started)
            return (out / "tune").exists() and sum(len(lines) == 2 for lines in trial_results(out).values()) >= 1

        wait_for(one_trial_finished, 180, "one finished trial")
        time.sleep(1.0)  # let the controller record the trial as finished
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        # A SIGKILLed driver leaves Ray's helpers behind: end what it started.
        for process in started + _descendants(driver.pid):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    finished_before = {name: lines for name, lines in trial_results(out).items() if len(lines) == 2}
    assert 1 <= len(finished_before) < 3

    lines_out: list[str] = []
    result = run_search(None, out, resume=True, progress=False, log=lines_out.append)
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and trials.trial_id.is_unique
    assert set(trials.status) == {"TERMINATED"} and (trials.epochs == 2).all()
    after = trial_results(out)
    for name, lines in finished_before.items():
        assert after[name] == lines  # finished trials were not re-run
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 3
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert result.best_policy_path.is_file()
