"""Continuing an interrupted search (``--resume DIR``): its job, teacher, study and Tune state."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import torch

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.runtime import study_url
from gmpq_ray.search.job import Job, load_job
from gmpq_ray.search.teacher import load_saved_teacher
from gmpq_ray.search.tune_fit import STUDY_FILE

JOB_FILE = "job.yaml"


def open_run_to_resume(output_dir: str | Path) -> tuple[Path, Job, dict[str, torch.Tensor] | None]:
    """The run folder, its job (from its ``job.yaml``) and its saved teacher (or None)."""
    if not str(output_dir).strip():
        raise UserInputError("--resume: the path is empty (an unset shell variable?)")
    out = Path(output_dir).resolve()
    if not (out / JOB_FILE).is_file():
        raise UserInputError(f"--resume {out}: not a gmpq run folder (no {JOB_FILE})")
    job = load_job(out / JOB_FILE)
    check_study_name(job, out)
    return out, job, load_saved_teacher(out)


def check_study_name(job: Job, out: Path) -> None:
    """A resumed search reports to its study by name: a ``name:`` edited in job.yaml would not find it."""
    study_path = out / STUDY_FILE
    if not study_path.is_file():
        return
    try:
        names = optuna.get_all_study_names(storage=study_url(study_path))
    except Exception as err:  # a damaged database: say so instead of a traceback from SQLAlchemy
        raise UserInputError(f"--resume {out}: study.db is not a readable Optuna study ({type(err).__name__})") from None
    if names and job.name not in names:
        raise UserInputError(f"{out / JOB_FILE}: name: {job.name!r} is not the study in study.db ({names[0]!r}); "
                             f"a resumed search keeps its name")


def unreadable_tune_state(tune_dir: Path) -> str | None:
    """What makes the Tune experiment in ``tune_dir`` impossible to restore, or None.

    Tune copies its state files into the run folder without a rename; a driver killed during
    that copy leaves an empty or cut-off file, which ``Tuner.restore`` cannot read (it then
    restarts with a searcher that has no search space, and fails).
    """
    import cloudpickle

    readers = {"experiment_state-*.json": lambda data: json.loads(data.decode()),
               "search_gen_state-*.json": cloudpickle.loads, "searcher-state-*.pkl": cloudpickle.loads,
               "tuner.pkl": cloudpickle.loads}
    for pattern, read in readers.items():
        for path in sorted(tune_dir.glob(pattern))[-1:]:  # the newest, which Tune restores from
            try:
                data = path.read_bytes()
                if not data:
                    return f"{path.name} is empty"
                read(data)
            except Exception as err:  # whatever keeps us from reading it keeps Tune from it too
                return f"{path.name} is unreadable ({type(err).__name__})"
    return None


def set_aside(out: Path, names: list[str]) -> list[str]:
    """Rename ``out/<name>`` to ``out/<name>.broken-<time>`` (nothing is deleted); returns the new names."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = []
    for name in names:
        path = out / name
        if path.exists():
            target = path.with_name(f"{name}.broken-{stamp}")
            path.rename(target)
            kept.append(target.name)
    return kept
