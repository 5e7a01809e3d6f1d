"""Distributed finetuning of a policy: a Ray Train ``TorchTrainer`` job (DDP; gloo on CPU, NCCL on GPU).

:func:`finetune` checks everything the user gave before any worker starts (the job, the policy
against the model, the FP state dict against the model, the data root, the output folder, the
resources), then runs :func:`gmpq_ray.finetune.worker.train_loop_per_worker` on ``workers``
workers and writes the run folder described in :mod:`gmpq_ray.finetune.outputs`.

An interrupted run (a crash, or ``stop_after_epochs``) resumes with ``resume=True``: the same
Ray Train run name and storage path make :func:`ray.train.get_checkpoint` return its latest
checkpoint, and training continues from the next epoch.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ray
import ray.train
import torch
import yaml
from ray.train.torch import TorchConfig, TorchTrainer

from gmpq_ray.core.cost.bops import CostModel, format_bops
from gmpq_ray.core.errors import UserInputError, one_line
from gmpq_ray.core.models.pretrained import local_path, read_state_dict
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import Policy, write_text_atomic
from gmpq_ray.core.train.finetuning import check_policy_fits, load_fp_weights
from gmpq_ray.finetune.job import FinetuneJob, job_to_dict, load_finetune_job
from gmpq_ray.finetune.outputs import (
    EXPORT_FILE,
    FINAL_FILE,
    JOB_FILE,
    POLICY_FILE,
    RUN_KIND,
    RUN_NAME,
    FinetuneResult,
    check_output,
    latest_checkpoint,
    load_state,
    write_outputs,
)
from gmpq_ray.finetune.worker import train_loop_per_worker
from gmpq_ray.runtime import RunFolder, StopSignals
from gmpq_ray.runtime.cluster import check_fits_a_node, start_ray

__all__ = ["FINAL_FILE", "FinetuneResult", "finetune", "latest_checkpoint"]


def finetune(
    policy: Policy | str | Path,
    job: FinetuneJob | str | Path,
    output_dir: str | Path,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    overwrite: bool = False,
    resume: bool = False,
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> FinetuneResult:
    """Finetune ``policy`` with QAT as ``job`` says, on ``workers`` Ray Train workers.

    Args:
        policy: a :class:`Policy` or a policy JSON file.
        job: a :class:`FinetuneJob` or a finetune job YAML file.
        output_dir: the run folder (new or empty, unless ``overwrite`` or ``resume``).
        workers, gpus_per_worker: override the job's.
        overwrite: replace an earlier run's results in ``output_dir``.
        resume: continue the interrupted run in ``output_dir`` (same policy and job; only
            epochs, stop_after_epochs and resources may change).
        address: a Ray cluster address (``auto`` or ``host:port``); None starts a local Ray.
        log: where progress lines and the summary go.

    Example::

        result = gmpq_ray.api.finetune("runs/quickstart/best_policy.json", "jobs/finetune_digits.yaml", "runs/ft")
        print(result.top1, result.bops_searched)
    """
    start = time.perf_counter()
    policy_path = None if isinstance(policy, Policy) else policy
    job_path = None if isinstance(job, FinetuneJob) else job
    policy = policy if isinstance(policy, Policy) else Policy.load(policy)
    job = job if isinstance(job, FinetuneJob) else load_finetune_job(job)
    job = dataclasses.replace(job, workers=job.workers if workers is None else workers,
                              gpus_per_worker=job.gpus_per_worker if gpus_per_worker is None else gpus_per_worker)
    job.check_resources("job")
    num_classes, in_channels = _check_model_inputs(job, policy)
    fp_state = _load_fp_state(job, num_classes, in_channels)
    cost = CostModel.for_model(job.model, job.deployment_input_size(), num_classes, in_channels, job.cifar_stem,
                               list(policy.fixed_layers) or None)
    bops = cost.policy_bops(policy, job.fixed)
    out = check_output(output_dir, policy, job, overwrite, resume, inputs=[policy_path, job_path, local_path(job.fp_state_dict), job.data.root])
    started_ray = start_ray(address)
    try:
        _check_resources(job, address)
        # Everything is checked: from here on the folder is ours (locked until the run ends).
        folder = RunFolder.reopen(out, RUN_KIND) if resume else RunFolder.create(out, RUN_KIND, overwrite)
        with folder, StopSignals() as signals:
            try:
                if not resume:
                    policy.bops = {**policy.bops, **bops.to_dict()}
                    policy.save(out / POLICY_FILE)
                    write_text_atomic(out / JOB_FILE, yaml.safe_dump(job_to_dict(job), sort_keys=False))
                log(f"finetune {job.name}: {job.model} with {len(policy.layers)} searched layers at {format_bops(bops[0])} "
                    f"({format_bops(bops[1])} in all at {job.deployment_input_size()}x{job.deployment_input_size()}), "
                    f"{job.epochs} epoch(s) on {job.workers} worker(s)" + (f" with {job.gpus_per_worker:g} GPU each" if job.gpus_per_worker else ""))
                checkpoint = latest_checkpoint(out) if resume else None
                if checkpoint is None or load_state(checkpoint)["epoch"] < job.epochs:
                    if checkpoint is not None:
                        log(f"resuming from {checkpoint}")
                    _fit(job, policy, fp_state, out)
                else:
                    # Training had ended when the run stopped: only the outputs are missing.
                    log(f"{checkpoint} holds the last of {job.epochs} epoch(s): writing the outputs")
            except KeyboardInterrupt:
                raise signals.interrupted("finetune", f"gmpq finetune {policy_path or 'POLICY'} {job_path or 'JOB'} "
                                                      f"--output {out} --resume") from None
            result = write_outputs(out, job, bops, log, time.perf_counter() - start)
            if result.finished and job.export:
                from gmpq_ray.export import export_run

                # The folder is this run's: an earlier export of it (a resume) is replaced.
                result.export = export_run(out, out / EXPORT_FILE, overwrite=True, log=log)
            return result
    finally:
        if started_ray:
            ray.shutdown()


def _check_model_inputs(job: FinetuneJob, policy: Policy) -> tuple[int, int]:
    num_classes, in_channels = job.data.num_classes_and_channels()
    if job.num_classes is not None and job.num_classes != num_classes:
        raise UserInputError(f"num_classes: the job says {job.num_classes}, data set {job.data.name} has {num_classes}")
    check_policy_fits(job.model, num_classes, in_channels, job.cifar_stem, policy, job.deployment_input_size())
    return num_classes, in_channels


def _load_fp_state(job: FinetuneJob, num_classes: int, in_channels: int) -> dict[str, torch.Tensor]:
    state = read_state_dict(job.fp_state_dict, "fp_state_dict")  # a file, or pretrained weights by name
    model = create_model(job.model, num_classes, in_channels, job.cifar_stem)
    load_fp_weights(model, state, f"fp_state_dict {job.fp_state_dict}")
    return state


def _check_resources(job: FinetuneJob, address: str | None) -> None:
    """Each worker must fit on a node; on a local Ray (which never grows) all of them together must fit."""
    check_fits_a_node({"CPU": job.cpus_per_worker, "GPU": job.gpus_per_worker}, "each worker", "cpus_per_worker/gpus_per_worker")
    total = ray.cluster_resources()
    need = {"CPU": job.workers * job.cpus_per_worker, "GPU": job.workers * job.gpus_per_worker}
    short = {k: v for k, v in need.items() if v > total.get(k, 0) + 1e-9}
    if short and address is None:
        # A fixed local Ray never grows: the trainer would wait forever.
        have = ", ".join(f"{total.get(k, 0):g} {k}" for k in short)
        raise UserInputError(f"workers: {job.workers} worker(s) need {', '.join(f'{v:g} {k}' for k, v in short.items())}; "
                             f"this Ray has {have} (lower --workers or cpus_per_worker/gpus_per_worker)")


def _fit(job: FinetuneJob, policy: Policy, fp_state: dict[str, torch.Tensor], out: Path) -> ray.train.Result:
    use_gpu = job.gpus_per_worker > 0
    resources = {"CPU": job.cpus_per_worker, **({"GPU": job.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job, "policy": policy.to_dict(), "fp_state": ray.put(fp_state)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=job.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=RUN_NAME, storage_path=str(out),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
            # Our workers print one line an epoch; Ray Train's own INFO lines would drown them.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        return _fit_in_thread(trainer)
    except ray.train.TrainingFailedError as err:
        raise _worker_error(err) from None
    except ray.exceptions.RayActorError as err:
        # Ray Train refuses a run folder whose snapshot lists a checkpoint that is gone.
        damaged = [line for line in str(err).splitlines() if "CheckpointManagerInitializationError:" in line]
        if not damaged:
            raise
        reason = damaged[-1].split("CheckpointManagerInitializationError:", 1)[1].split(". You are running")[0].strip()
        raise UserInputError(f"the Ray Train run in {out / RUN_NAME} cannot be resumed ({reason}); "
                             f"pass --overwrite to start over") from None


def _fit_in_thread(trainer: TorchTrainer) -> ray.train.Result:
    """``trainer.fit()`` on a helper thread, so that a signal reaches this process's handler.

    Called on the main thread, Ray Train installs its own SIGINT handler, which aborts the run
    and returns as if it had ended. Here the main thread waits instead, and a signal raises
    :class:`KeyboardInterrupt` in it: the run stops the way a killed driver stops it (Ray ends
    the controller and workers this driver owns), and ``--resume`` continues from the last
    epoch's checkpoint.
    """
    outcome: dict[str, object] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # handed to the main thread
            outcome["error"] = err

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _worker_error(err: Exception) -> Exception:
    """What a failed trainer means to the user: a worker's :class:`UserInputError` (a root missing
    on its node) or OSError (an unreadable image, a full disk) becomes one line naming the worker;
    anything else stays an error with a traceback."""
    failures = getattr(err, "worker_failures", {}) or {}
    for rank, failure in sorted(failures.items()):
        cause = getattr(failure, "cause", None) or failure
        if isinstance(cause, (UserInputError, OSError)):
            message = one_line(str(cause)) if str(cause).strip() else repr(cause)
            return UserInputError(f"finetune worker {rank}: {message}")
    first = next(iter(failures.values()), err)
    return RuntimeError(f"finetune failed: {str(first).strip().splitlines()[-1] if str(first).strip() else repr(first)}")


