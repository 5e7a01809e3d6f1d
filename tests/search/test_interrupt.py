"""Ctrl-C and SIGTERM end a search resumably; two runs cannot share a folder; hopeless Ray
settings are refused up front (real Ray, real Optuna, the real ``gmpq`` command)."""

from __future__ import annotations

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

from gmpq_ray.cli import main
from gmpq_ray.runtime import study_url
from gmpq_ray.search.runner import run_search
from tests.conftest import write_job
from tests.search.test_reliability import trial_results, wait_for

pytestmark = pytest.mark.ray

EPOCHS = 3


def _driver(job: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gmpq_ray.cli", "search", str(job), "--output", str(out), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )


def _end_leftovers(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_search_resumably(tmp_path, signum):
    job = write_job(tmp_path, search__epochs=EPOCHS, search__num_trials=3, search__max_concurrent_trials=1)
    out = tmp_path / "run"
    driver = _driver(job, out)
    started: list[psutil.Process] = []
    try:
        def one_finished_and_one_under_way():
            started.extend(p for p in psutil.Process(driver.pid).children(recursive=True) if p not in started)
            if not (out / "tune").exists():
                return False
            lengths = sorted(len(lines) for lines in trial_results(out).values())
            return lengths.count(EPOCHS) == 1 and any(0 < n < EPOCHS for n in lengths)

        wait_for(one_finished_and_one_under_way, 240, "one finished trial and one under way")
        os.kill(driver.pid, signum)
        _, stderr = driver.communicate(timeout=120)
    finally:
        _end_leftovers(started)
    assert driver.returncode == 128 + signum, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "interrupted" in last and f"gmpq search --resume {out}" in last
    assert "Traceback" not in stderr
    assert not (out / "best_policy.json").exists()
    study = optuna.load_study(study_name="tiny", storage=study_url(out / "study.db"))
    states = [t.state for t in study.trials]
    # The unfinished trial stays open in the study (a resume reports to it), nothing is FAIL.
    assert optuna.trial.TrialState.FAIL not in states and optuna.trial.TrialState.RUNNING in states
    if signum == signal.SIGTERM:
        return  # the state left behind is the same; the resume is checked once, after SIGINT

    result = run_search(None, out, resume=True, progress=False, log=lambda _: None)
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and trials.trial_id.is_unique
    assert set(trials.status) == {"TERMINATED"} and (trials.epochs == EPOCHS).all()
    study = optuna.load_study(study_name="tiny", storage=study_url(out / "study.db"))
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 3
    assert result.best_policy_path.is_file()


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, capsys):
    job = write_job(tmp_path, search__epochs=2, search__num_trials=1, search__max_concurrent_trials=1)
    out = tmp_path / "run"
    first = _driver(job, out)
    try:
        wait_for(lambda: (out / "job.yaml").is_file(), 120, "the first run to claim its folder")
        code = main(["search", str(job), "--output", str(out), "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2 and f"is in use by a running gmpq (pid {first.pid}" in err
        assert len(err.strip().splitlines()) == 1
        first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0
    assert (out / "best_policy.json").is_file()
    # Once the first run is over the folder is free again (for --overwrite or --resume).
    assert main(["search", "--resume", str(out)]) == 0


def test_an_unreachable_address_is_refused_quickly_and_writes_nothing(tmp_path, capsys, no_ray):
    job = write_job(tmp_path)
    out = tmp_path / "run"
    start = time.monotonic()
    assert main(["search", str(job), "--output", str(out), "--address", "127.0.0.1:1"]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--address 127.0.0.1:1: no Ray cluster answers there" in err[0]
    assert not out.exists()


def test_a_trial_no_node_can_hold_is_refused(tmp_path, capsys, ray_local):
    job = write_job(tmp_path, resources={"cpus_per_trial": 3})
    out = tmp_path / "run"
    assert main(["search", str(job), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resources.cpus_per_trial: each trial asks for 3 CPU, but the largest node" in err[0]
    assert not out.exists()
