"""Running a search: validate, train the teacher, run the method's Ray Tune trials, report.

Everything the user gave is checked before the output folder is created, so bad input leaves
no half-written folder behind. The output folder then receives:

* ``tune/``: the Ray Tune experiment (trial folders, checkpoints, experiment state);
* ``study.db``: the Optuna study (SQLite; ``optuna-dashboard sqlite:///DIR/study.db``);
* ``job.yaml``: the resolved job (search space inline), which ``--resume`` reads;
* ``teacher.pt``: the FP teacher's state dict;
* ``trials.csv``: one row a trial (its hyper-parameters, last metrics, status);
* ``best_policy.json`` and ``best_policy.png``: the best trial's derived policy.

The runner knows no search method by name: it asks the method registered under
``search.method`` (:mod:`gmpq_ray.search.methods`) for its trials and how to run them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import ray
import yaml
from ray import tune

from gmpq_ray.core.atomic import save_torch_atomic, write_text_atomic
from gmpq_ray.core.cost.bops import format_bops
from gmpq_ray.core.errors import NoResultError, UserInputError
from gmpq_ray.core.models.pretrained import local_path
from gmpq_ray.core.policy import Policy
from gmpq_ray.report.figures import plot_policy
from gmpq_ray.runtime import RunFolder, StopSignals, check_new_output
from gmpq_ray.runtime.cluster import start_ray
from gmpq_ray.search.job import Job, job_to_dict, load_job
from gmpq_ray.search.methods import get_method
from gmpq_ray.search.metrics import TRIALS_FILE
from gmpq_ray.search.results import best_result, close_orphaned_optuna_trials, trials_table, write_trials_csv
from gmpq_ray.search.resume import JOB_FILE, open_run_to_resume, set_aside, unreadable_tune_state
from gmpq_ray.search.scheduler import STOP_REASONS_FILE, read_stop_reasons
from gmpq_ray.search.summary import summary
from gmpq_ray.search.teacher import TEACHER_FILE, load_teacher_state, train_teacher
from gmpq_ray.search.trial_setup import POLICY_FILE, UNFILLED_POLICY_FILE
from gmpq_ray.search.tune_fit import STUDY_FILE, TUNE_DIR

RUN_KIND = "search"
BEST_POLICY_FILE = "best_policy.json"
BEST_POLICY_FIGURE = "best_policy.png"


@dataclass
class SearchResult:
    """What :func:`run_search` produced."""

    output_dir: Path
    best_policy: Policy
    best_policy_path: Path
    trials: pd.DataFrame
    seconds: float
    # With ``fill_budget`` on: the best trial's policy before the fill (its argmax, repaired if
    # over the limit), so that a comparison can show what the fill adds.
    unfilled_policy: Policy | None = None


def check_trial_resources(job: Job) -> None:
    """Refuse trials (or their DDP workers) that no node of the connected Ray can hold."""
    get_method(job.search.method).check_resources(job)


def run_search(
    job: Job | str | Path | None,
    output_dir: str | Path,
    address: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> SearchResult:
    """Run a GMPQ search job and write its results to ``output_dir``.

    Args:
        job: a :class:`Job` or the path of a job YAML file; None with ``resume``.
        output_dir: the run folder (must be new or empty unless ``overwrite`` or ``resume``;
            ``overwrite`` replaces only an earlier gmpq search run).
        address: a Ray cluster address (``auto`` or ``host:port``); None starts a local Ray.
        overwrite: replace the results of an earlier search run in ``output_dir``.
        resume: continue the interrupted search in ``output_dir`` (from its own ``job.yaml``):
            finished trials are kept, unfinished ones resume from their checkpoints.
        progress: progress bars for teacher training.
        log: where progress lines and the summary go.

    Raises:
        UserInputError: bad input, found before anything is written.
        Interrupted: SIGINT or SIGTERM stopped the search; ``--resume`` continues it.

    Example::

        result = gmpq_ray.api.search("jobs/quickstart.yaml", "runs/quickstart")
        print(result.best_policy_path)
    """
    start = time.perf_counter()
    if resume:
        if job is not None:
            raise UserInputError("give either a job file or --resume DIR, not both (a run folder keeps its job)")
        out, job, teacher_state = open_run_to_resume(output_dir)
        teacher_needs_training = False
    else:
        if job is None:
            raise UserInputError("give a job file (or --resume DIR to continue a search)")
        job_path = None if isinstance(job, Job) else job
        if not isinstance(job, Job):
            job = load_job(job)
        out = check_new_output(output_dir, RUN_KIND, overwrite,
                               inputs=[job_path, local_path(job.teacher.state_dict), job.data.root])
        data = job.data.load()
        teacher_state, teacher_needs_training = load_teacher_state(job, data.num_classes, data.in_channels)

    started_ray = start_ray(address)
    try:
        check_trial_resources(job)
        # Every check has passed: from here on the folder is ours (locked until the run ends).
        folder = RunFolder.reopen(out, RUN_KIND) if resume else RunFolder.create(out, RUN_KIND, overwrite)
        with folder, StopSignals() as signals:
            grid = _run(job, out, folder, teacher_state, teacher_needs_training, resume, signals, progress, log)
            if signals.signum is not None:
                raise signals.interrupted("search", f"gmpq search --resume {out}")
    finally:
        if started_ray:
            ray.shutdown()
    orphans = close_orphaned_optuna_trials(job, out / STUDY_FILE)
    if orphans:
        log(f"{orphans} Optuna trial(s) left RUNNING by the interrupted driver were marked FAIL")
    stop_reasons = read_stop_reasons(out / STOP_REASONS_FILE)
    trials = trials_table(grid, job, stop_reasons)
    write_trials_csv(trials, out / TRIALS_FILE)
    try:
        best = best_result(grid, job, stop_reasons)
    except NoResultError as err:
        raise NoResultError(str(err), time.perf_counter() - start) from None
    with best.checkpoint.as_directory() as checkpoint:
        policy = Policy.load(Path(checkpoint) / POLICY_FILE)
        unfilled_path = Path(checkpoint) / UNFILLED_POLICY_FILE
        unfilled = Policy.load(unfilled_path) if unfilled_path.is_file() else None
    best_path = out / BEST_POLICY_FILE
    policy.save(best_path)
    plot_policy(policy, out / BEST_POLICY_FIGURE, title=f"{job.name}: best policy")
    seconds = time.perf_counter() - start
    log(summary(trials, job, policy, best_path, seconds))
    return SearchResult(out, policy, best_path, trials, seconds, unfilled)


def _run(job: Job, out: Path, folder: RunFolder, teacher_state, teacher_needs_training: bool, resume: bool,
         signals: StopSignals, progress: bool, log: Callable[[str], None]) -> tune.ResultGrid:
    """The teacher, then the Tune experiment; a fresh run that fails before its first trial
    leaves no folder behind (one stopped by a signal stays, for ``--resume``)."""
    space = job.space
    try:
        if not resume:
            write_text_atomic(out / JOB_FILE, yaml.safe_dump(job_to_dict(job), sort_keys=False))
        log(f"search space: {space.model}, w_bits {space.w_bits}, a_bits {space.a_bits}, "
            f"limit {format_bops(space.bops_limit)} (searched layers at {space.input_size}x{space.input_size})")
        if teacher_state is None or teacher_needs_training:
            teacher_state = train_teacher(job, progress, log, initial_state=teacher_state)
            save_torch_atomic(teacher_state, out / TEACHER_FILE)
        elif not (out / TEACHER_FILE).is_file():
            save_torch_atomic(teacher_state, out / TEACHER_FILE)
    except KeyboardInterrupt:
        raise signals.interrupted("search", f"gmpq search --resume {out}") from None
    except BaseException:
        if not resume:
            folder.rollback()
        raise
    try:
        restore = resume and tune.Tuner.can_restore(str(out / TUNE_DIR))
        if restore:
            problem = unreadable_tune_state(out / TUNE_DIR)
            if problem:
                restore = False
                kept = set_aside(out, [TUNE_DIR, STUDY_FILE, STOP_REASONS_FILE])
                log(f"the Ray Tune experiment state cannot be restored ({problem}: the run was killed while "
                    f"saving it); its trials start over, the old state is kept as {', '.join(kept)}")
        return get_method(job.search.method).fit(job, out, teacher_state, signals, resume=restore)
    except KeyboardInterrupt:
        # A second signal, or one before Tune could catch it: the experiment state Tune saved
        # last is what --resume continues from, as after SIGKILL.
        raise signals.interrupted("search", f"gmpq search --resume {out}") from None
