"""Running a search: validate, train the teacher, run Ray Tune trials driven by Optuna, report.

Everything the user gave is checked before the output folder is created, so bad input leaves
no half-written folder behind. The output folder then receives:

* ``tune/``: the Ray Tune experiment (trial folders, checkpoints, experiment state);
* ``study.db``: the Optuna study (SQLite; ``optuna-dashboard sqlite:///DIR/study.db``);
* ``job.yaml``: the resolved job (search space inline), which ``--resume`` reads;
* ``teacher.pt``: the FP teacher's state dict;
* ``trials.csv``: one row a trial (its hyper-parameters, last metrics, status);
* ``best_policy.json`` and ``best_policy.png``: the best trial's derived policy.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import ray
import torch
import yaml
from ray import tune

from gmpq_ray.core.cost.bops import format_bops
from gmpq_ray.core.errors import NoResultError, UserInputError
from gmpq_ray.core.models.pretrained import is_weights_name, load_matching, local_path, read_state_dict
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import Policy, write_text_atomic
from gmpq_ray.core.train.loop import train_classifier
from gmpq_ray.report.figures import plot_policy
from gmpq_ray.runtime import RunFolder, StopSignals, check_new_output, study_url
from gmpq_ray.runtime.cluster import check_fits_a_node, start_ray
from gmpq_ray.search.job import Job, ParamSpec, job_to_dict, load_job
from gmpq_ray.search.metrics import TRIAL_METRICS
from gmpq_ray.search.optuna_search import RecordingOptunaSearch
from gmpq_ray.search.sampling_trial import sampling_space, sampling_trial
from gmpq_ray.search.scheduler import STOP_REASONS_FILE, BudgetAndARCScheduler, make_pruner, read_stop_reasons
from gmpq_ray.search.trial import POLICY_FILE, UNFILLED_POLICY_FILE, TrialContext, supernet_trial, trial_device

JOB_FILE = "job.yaml"
TEACHER_FILE = "teacher.pt"
RUN_KIND = "search"


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


def tune_domain(spec: ParamSpec):
    """The Ray Tune search domain (or constant) of one tuned hyper-parameter."""
    if spec.value is not None:
        return spec.value
    if spec.choices is not None:
        return tune.choice(list(spec.choices))
    return (tune.loguniform if spec.log else tune.uniform)(spec.low, spec.high)


def load_teacher_state(job: Job, num_classes: int, in_channels: int) -> tuple[dict[str, torch.Tensor] | None, bool]:
    """The teacher's state dict from ``teacher.state_dict`` (or None), and whether it still needs training.

    A file must match the model and is the teacher as it is. Pretrained weights by name
    (``torchvision:...``, ``timm:...``) load where names and shapes fit; a layer they do not
    fit (the classifier of another number of classes, a CIFAR stem) starts fresh, and then the
    teacher trains ``teacher.epochs`` epochs from those weights.
    """
    if job.teacher.state_dict is None:
        return None, False
    path = job.teacher.state_dict
    state = read_state_dict(path, "teacher.state_dict")
    model = create_model(job.space.model, num_classes, in_channels, job.space.cifar_stem)
    if is_weights_name(path):
        fresh = load_matching(model, state)
        if len(fresh) == len(model.state_dict()):
            raise UserInputError(f"teacher.state_dict {path}: none of its weights fit {job.space.model}")
        if fresh and job.teacher.epochs < 1:
            raise UserInputError(f"teacher.state_dict {path}: {', '.join(fresh[:4])}{' ...' if len(fresh) > 4 else ''} do not fit "
                                 f"{job.space.model} on this data; set teacher.epochs >= 1 to train the teacher from these weights")
        return model.state_dict(), bool(fresh)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise UserInputError(f"teacher.state_dict {path}: does not match {job.space.model} ({str(err).splitlines()[0]})") from None
    return model.state_dict(), False


class NoTunedParameters:
    """Optuna define-by-run space that suggests nothing (a picklable class, not a closure)."""

    def __call__(self, trial) -> None:
        return None


def make_searcher(job: Job, study_path: Path) -> RecordingOptunaSearch:
    """Ray Tune's OptunaSearch for the job's method, its study stored in SQLite.

    Differentiable search: Optuna tunes the job's hyper-parameters (``param_space``). Sampling
    search: Optuna proposes per-layer bits (a define-by-run space); with NSGA-II it optimizes
    the metric and the policy's BOPs together.
    """
    search = job.search
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=search.seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=search.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=search.seed),
    }
    common = dict(
        bops_limit_g=job.space.bops_limit / 1e9,
        sampler=samplers[search.sampler](),
        storage=optuna.storages.RDBStorage(study_url(study_path)),
        study_name=job.name,
        points_to_evaluate=[dict(point) for point in search.initial_points] or None,
    )
    if search.method == "differentiable":
        if any(spec.value is None for spec in search.resolved_params().values()):
            return RecordingOptunaSearch(**common)
        # Every hyper-parameter fixed: trials repeat one configuration, still recorded in the study.
        return RecordingOptunaSearch(space=NoTunedParameters(), metric=search.metric, mode=search.mode, **common)
    if search.sampler == "nsga2":
        return RecordingOptunaSearch(space=sampling_space(job), metric=[search.metric, "policy_bops_g"],
                                     mode=[search.mode, "min"], **common)
    return RecordingOptunaSearch(space=sampling_space(job), metric=search.metric, mode=search.mode, **common)


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
        out, job, teacher_state = _open_run_to_resume(output_dir)
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
    orphans = close_orphaned_optuna_trials(job, out / "study.db")
    if orphans:
        log(f"{orphans} Optuna trial(s) left RUNNING by the interrupted driver were marked FAIL")
    stop_reasons = read_stop_reasons(out / STOP_REASONS_FILE)
    trials = trials_table(grid, job, stop_reasons)
    _write_csv(trials, out / "trials.csv")
    try:
        best = _best_result(grid, job, stop_reasons)
    except NoResultError as err:
        raise NoResultError(str(err), time.perf_counter() - start) from None
    with best.checkpoint.as_directory() as checkpoint:
        policy = Policy.load(Path(checkpoint) / POLICY_FILE)
        unfilled_path = Path(checkpoint) / UNFILLED_POLICY_FILE
        unfilled = Policy.load(unfilled_path) if unfilled_path.is_file() else None
    best_path = out / "best_policy.json"
    policy.save(best_path)
    plot_policy(policy, out / "best_policy.png", title=f"{job.name}: best policy")
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
            save_atomic(teacher_state, out / TEACHER_FILE)
        elif not (out / TEACHER_FILE).is_file():
            save_atomic(teacher_state, out / TEACHER_FILE)
    except KeyboardInterrupt:
        raise signals.interrupted("search", f"gmpq search --resume {out}") from None
    except BaseException:
        if not resume:
            folder.rollback()
        raise
    try:
        fit = _fit
        if job.search.method == "proxy":  # the training-free family: one solve, its scorings as Ray tasks
            from gmpq_ray.search.proxy_search import proxy_fit as fit
        restore = resume and tune.Tuner.can_restore(str(out / "tune"))
        if restore:
            problem = unreadable_tune_state(out / "tune")
            if problem:
                restore = False
                kept = _set_aside(out, ["tune", "study.db", STOP_REASONS_FILE])
                log(f"the Ray Tune experiment state cannot be restored ({problem}: the run was killed while "
                    f"saving it); its trials start over, the old state is kept as {', '.join(kept)}")
        return fit(job, out, teacher_state, signals, resume=restore)
    except KeyboardInterrupt:
        # A second signal, or one before Tune could catch it: the experiment state Tune saved
        # last is what --resume continues from, as after SIGKILL.
        raise signals.interrupted("search", f"gmpq search --resume {out}") from None


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


def _set_aside(out: Path, names: list[str]) -> list[str]:
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


def check_trial_resources(job: Job) -> None:
    """Refuse trials (or their DDP workers) that no node of the connected Ray can hold."""
    resources = job.resources
    if job.search.method == "differentiable" and resources.workers_per_trial > 1:
        from gmpq_ray.search.sharded import worker_resources

        check_fits_a_node({"CPU": 0.0, "GPU": 0.0, **worker_resources(job)}, "each DDP worker of a trial",
                          "resources.cpus_per_trial")
        return
    check_fits_a_node({"CPU": resources.cpus_per_trial, "GPU": resources.gpus_per_trial}, "each trial",
                      "resources.cpus_per_trial" if resources.gpus_per_trial == 0 else "resources")


def _open_run_to_resume(output_dir: str | Path) -> tuple[Path, Job, dict[str, torch.Tensor] | None]:
    if not str(output_dir).strip():
        raise UserInputError("--resume: the path is empty (an unset shell variable?)")
    out = Path(output_dir).resolve()
    if not (out / JOB_FILE).is_file():
        raise UserInputError(f"--resume {out}: not a gmpq run folder (no {JOB_FILE})")
    job = load_job(out / JOB_FILE)
    _check_study_name(job, out)
    teacher_state = None
    if (out / TEACHER_FILE).is_file():
        try:
            teacher_state = torch.load(out / TEACHER_FILE, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserInputError(f"--resume {out}: {TEACHER_FILE} is not loadable ({type(err).__name__})") from None
    return out, job, teacher_state


def _check_study_name(job: Job, out: Path) -> None:
    """A resumed search reports to its study by name: a ``name:`` edited in job.yaml would not find it."""
    study_path = out / "study.db"
    if not study_path.is_file():
        return
    try:
        names = optuna.get_all_study_names(storage=study_url(study_path))
    except Exception as err:  # a damaged database: say so instead of a traceback from SQLAlchemy
        raise UserInputError(f"--resume {out}: study.db is not a readable Optuna study ({type(err).__name__})") from None
    if names and job.name not in names:
        raise UserInputError(f"{out / JOB_FILE}: name: {job.name!r} is not the study in study.db ({names[0]!r}); "
                             f"a resumed search keeps its name")


def train_teacher(job: Job, progress: bool, log: Callable[[str], None],
                  initial_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Train the FP teacher on the job's small data set (from ``initial_state`` if given); returns its state dict on the CPU."""
    space = job.space
    data = job.data.load()
    teacher = create_model(space.model, data.num_classes, data.in_channels, space.cifar_stem)
    if initial_state is not None:
        teacher.load_state_dict(initial_state)
    train_loader, val_loader = data.loaders(job.data.batch_size, seed=job.search.seed)
    torch.manual_seed(job.search.seed)
    train_classifier(teacher, train_loader, val_loader, job.teacher.epochs, job.teacher.lr,
                     job.teacher.weight_decay, trial_device(job), progress=progress, log=log)
    return {k: v.cpu() for k, v in teacher.state_dict().items()}


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def close_orphaned_optuna_trials(job: Job, study_path: Path) -> int:
    """Mark FAIL the Optuna trials a killed driver left RUNNING; returns how many.

    Once a search has finished, every trial Tune knows of has been told to Optuna; a trial
    still RUNNING was asked for after the driver's last experiment-state save, so no Tune
    trial will ever report it.
    """
    if not study_path.is_file():
        return 0
    study = optuna.load_study(study_name=job.name, storage=study_url(study_path))
    orphans = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for trial in orphans:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(orphans)


def _trainable(job: Job, teacher_state: dict[str, torch.Tensor]):
    if job.search.method == "differentiable" and job.resources.workers_per_trial > 1:
        # Imported here: Ray Train is only loaded by searches that shard their trials.
        from gmpq_ray.search.sharded import sharded_supernet_trial, sharded_trial_resources

        trainable = tune.with_parameters(sharded_supernet_trial, context=TrialContext(job=job, teacher_state=teacher_state))
        return tune.with_resources(trainable, sharded_trial_resources(job))
    function = supernet_trial if job.search.method == "differentiable" else sampling_trial
    trainable = tune.with_parameters(function, context=TrialContext(job=job, teacher_state=teacher_state))
    return tune.with_resources(trainable, {"cpu": job.resources.cpus_per_trial, "gpu": job.resources.gpus_per_trial})


def _fit(job: Job, out: Path, teacher_state: dict[str, torch.Tensor], signals: StopSignals, resume: bool) -> tune.ResultGrid:
    # Save the experiment state at every controller step, so that a trial that has just
    # finished is never re-run after a driver crash (Tune's default period is ~10 s).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume:
        tuner = tune.Tuner.restore(str(out / "tune"), _trainable(job, teacher_state),
                                   resume_unfinished=True, resume_errored=True)
        return signals.tune_fit(tuner)
    search = job.search
    searcher = make_searcher(job, out / "study.db")
    scheduler = BudgetAndARCScheduler(
        searcher, job.space.bops_limit / 1e9,
        # A supernet's argmax policy needs some epochs to settle near the limit and is repaired
        # anyway: it gets a warm-up and some slack; a sampled policy's BOPs are exact.
        bops_warmup_epochs=search.supernet_bops_warmup() if search.method == "differentiable" else 0,
        bops_tolerance=search.bops_tolerance if search.method == "differentiable" else 0.0,
        pruner=make_pruner(search.pruner), record_path=out / STOP_REASONS_FILE,
    )
    # A searcher with its own space carries its own metric and mode (a list of two with NSGA-II).
    metric, mode = (None, None) if searcher._space else (search.metric, search.mode)
    tuner = tune.Tuner(
        _trainable(job, teacher_state),
        param_space=({name: tune_domain(spec) for name, spec in search.resolved_params().items()}
                     if search.method == "differentiable" else {}),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            metric=metric,
            mode=mode,
            num_samples=search.num_trials,
            max_concurrent_trials=search.max_concurrent_trials,
            time_budget_s=search.time_budget_s,
            # A new actor per trial costs ~3 s (a process importing torch and Ray): reuse them.
            # Measured by benchmarks/bench_tune_overhead.py (3.4 s against 0.5 s per trial).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(out),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            verbose=1,
        ),
    )
    return signals.tune_fit(tuner)


def trials_table(grid: tune.ResultGrid, job: Job, stop_reasons: dict[str, str]) -> pd.DataFrame:
    """One row a trial: id, status (TERMINATED, PRUNED, STOPPED by the time budget, or ERROR), why it stopped early,
    its tuned hyper-parameters (or sampled bits), last reported metrics, its time, error."""
    tuned = [name for name, spec in job.search.resolved_params().items() if spec.value is None]
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id", Path(result.path).name)
        failure = error_reason(result.error) if result.error else metrics.get("error", "")
        reason = stop_reasons.get(trial_id, "")
        epochs = metrics.get("epoch", 0)
        status = "ERROR" if failure else ("PRUNED" if reason else "TERMINATED")
        if status == "TERMINATED" and job.search.time_budget_s is not None and epochs < job.search.epochs:
            # Tune ends the trials still running when the search's wall-clock budget runs out.
            status, reason = "STOPPED", "time_budget"
        row = {"trial_id": trial_id, "status": status, "stop_reason": reason, "epochs": epochs}
        if job.search.method == "differentiable":
            row.update({name: (result.config or {}).get(name) for name in tuned})
        else:
            bits = (result.config or {}).get("w_bits", {}), (result.config or {}).get("a_bits", {})
            row["proposal"] = " ".join(f"{int(bits[0][n])}/{int(bits[1][n])}" for n in bits[0])
        row.update({name: metrics.get(name) for name in TRIAL_METRICS})
        row["time_total_s"] = metrics.get("time_total_s")  # the trainable's own time, as Tune measured it
        row["error"] = failure
        rows.append(row)
    return pd.DataFrame(rows).sort_values("trial_id").reset_index(drop=True)


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_reason(error: BaseException | str) -> str:
    """The line of a trial's error that says what went wrong (``ValueError: ...``), without the
    colour codes and the ``ray::ImplicitFunc.train() (pid=..., actor_id=...)`` header Ray adds."""
    lines = [line.strip() for line in _ANSI_ESCAPE.sub("", str(error)).splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "ray::", "(")) and ":" in line:
            return line[:300]
    return (lines[-1] if lines else repr(error))[:300]


def _best_result(grid: tune.ResultGrid, job: Job, stop_reasons: dict[str, str]):
    metric = job.search.metric

    def finished(result) -> bool:
        metrics = result.metrics or {}
        value = metrics.get(metric)
        return (not result.error and not metrics.get("error") and result.checkpoint is not None
                and metrics.get("trial_id") not in stop_reasons and isinstance(value, float) and math.isfinite(value))

    ok = [r for r in grid if finished(r)]
    if not ok:
        errors = "; ".join(error_reason(r.error) if r.error else str(r.metrics.get("error")) for r in grid
                           if r.error or (r.metrics or {}).get("error"))[:500]
        raise NoResultError(f"no search trial finished ({errors or 'every trial was pruned'}); see trials.csv")
    sign = 1 if job.search.mode == "max" else -1
    return max(ok, key=lambda r: sign * r.metrics[metric])


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    write_text_atomic(path, frame.to_csv(index=False))


def _provenance_note(policy: Policy) -> str:
    """'argmax', or 'repaired (2 steps down)', 'filled (1 step down, 3 up)'."""
    provenance = policy.provenance
    kind = provenance.get("kind", "unknown provenance")
    down, up = provenance.get("repair_steps", 0), provenance.get("fill_steps", 0)
    if not down and not up:
        return kind
    return f"{kind} ({down} step(s) down, {up} up)"


def summary(trials: pd.DataFrame, job: Job, policy: Policy, best_path: Path, seconds: float) -> str:
    """The table printed at the end of a search."""
    hidden = ("error", "loss", "ce", "attr_loss", "score", "budget_bops_g", "proposal")
    columns = [c for c in trials.columns if c not in hidden]
    table = trials[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}")
    bits = ", ".join(f"{b.w_bits}/{b.a_bits}" for b in policy.layers.values())
    stopped = int((trials.status == "STOPPED").sum())
    stopped_note = f"{stopped} stopped by the time budget, " if stopped else ""
    return (
        f"\n== {job.name} ({job.search.method}): {len(trials)} trial(s), {int((trials.status == 'PRUNED').sum())} pruned "
        f"({int((trials.stop_reason == 'bops_limit').sum())} over the BOPs limit, {int((trials.stop_reason == 'arc').sum())} for ARC), "
        f"{stopped_note}{int((trials.status == 'ERROR').sum())} errored, {seconds:.0f} s ==\n"
        f"{table}\n\n"
        f"best policy ({job.search.metric} {job.search.mode}): {policy.bops.get('searched_g', float('nan')):.4g} G BOPs "
        f"(limit {job.space.bops_limit / 1e9:.4g} G), {_provenance_note(policy)}, w/a bits per layer: {bits}\n"
        f"best policy written to {best_path}\n"
    )
