"""The differentiable search trial on N DDP workers: a Ray Train ``TorchTrainer`` inside a Tune trial.

Ray Train V2 refuses ``tune.Tuner(TorchTrainer(...))``; instead this Tune function trainable
starts a ``TorchTrainer`` whose workers each train the supernet on a shard of the training split
(gradients of the network weights and of α all-reduced by DDP, so every worker holds the same
supernet) and evaluate it on the whole validation split with the very code of
:func:`gmpq_ray.search.trial.supernet_trial`. Each epoch rank 0 reports the same metrics and
writes a checkpoint with the same files (``trial_state.pt``, ``policy.json``) into the Train
run under the trial's folder; ``TuneReportCallback`` passes the metrics on to Tune, where the
scheduler and Optuna see them as from any trial.

The runner takes the best policy from a trial's *Tune* checkpoint, and the callback forwards
only a checkpoint path, so when training ends the trial reports its last epoch once more with
the last Train checkpoint as its Tune checkpoint (the last epoch appears twice in the trial's
results). A restarted trial resumes from the Train run's latest checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from gmpq_ray.core.data.sharding import train_shard_loader
from gmpq_ray.core.objective.loss import GMPQObjective
from gmpq_ray.core.quant.calibration import calibrate
from gmpq_ray.core.train.loop import NonFiniteLossError
from gmpq_ray.runtime.ray_train import quiet_ray_train_reports
from gmpq_ray.search.job import Job
from gmpq_ray.search.metrics import EPOCH, ERROR, LOSS, TRIAL_METRICS
from gmpq_ray.search.trial import (
    build_supernet,
    make_objective,
    make_optimizers,
    restore_trial_state,
    save_policies,
    train_and_evaluate_epoch,
    trial_state,
)
from gmpq_ray.search.trial_setup import STATE_FILE, TrialContext, choose_quantizer_kernels, prepare_trial, training_pixels

# Share of a trial's CPUs kept by the Tune trial's own process, which only waits on the trainer.
COORDINATOR_CPU_SHARE = 0.01


def sharded_trial_resources(job: Job) -> dict[str, float]:
    """What ``tune.with_resources`` should reserve for the trial's own (coordinating) process.

    Its DDP workers reserve the rest of ``cpus_per_trial`` and all of ``gpus_per_trial`` through
    Ray Train, so a trial holds what the job says in all.
    """
    return {"cpu": job.resources.cpus_per_trial * COORDINATOR_CPU_SHARE, "gpu": 0}


def worker_resources(job: Job) -> dict[str, float]:
    """Resources of one DDP worker of a sharded trial."""
    workers = job.resources.workers_per_trial
    resources = {"CPU": job.resources.cpus_per_trial * (1 - COORDINATOR_CPU_SHARE) / workers}
    if job.resources.gpus_per_trial > 0:
        resources["GPU"] = job.resources.gpus_per_trial / workers
    return resources


def sharded_supernet_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable: :func:`~gmpq_ray.search.trial.supernet_trial` on ``workers_per_trial`` DDP workers."""
    job = context.job
    storage = tune.get_context().get_storage()
    use_gpu = job.resources.gpus_per_trial > 0
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"config": config, "job": job, "teacher_state": ray.put(context.teacher_state),
                           "trial_id": tune.get_context().get_trial_id()},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=job.resources.workers_per_trial, use_gpu=use_gpu,
                                               resources_per_worker=worker_resources(job)),
        run_config=ray.train.RunConfig(
            name="train", storage_path=storage.trial_fs_path, storage_filesystem=storage.storage_filesystem,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            # Tune retries the trial (its FailureConfig); the new trainer resumes this run.
            failure_config=ray.train.FailureConfig(max_failures=0),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    if result.checkpoint is not None and not metrics.get(ERROR):
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(result.checkpoint.path))


class _ThroughDDP:
    """The search loss with the forward pass through the DDP wrapper (so gradients are
    all-reduced) while its attribution taps and α stay on the wrapped supernet."""

    def __init__(self, objective: GMPQObjective, ddp_model: torch.nn.Module) -> None:
        self.objective, self.ddp_model = objective, ddp_model

    def __call__(self, model, images, labels):
        return self.objective(self.ddp_model, images, labels)

    def __getattr__(self, name: str):
        return getattr(self.objective, name)


def _sum_over_workers(value: float, device: torch.device) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return float(tensor)


def _train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    quiet_ray_train_reports()
    config, job = loop_config["config"], loop_config["job"]
    space = job.space
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    setup = prepare_trial(TrialContext(job, ray.get(loop_config["teacher_state"])), loop_config["trial_id"],
                          threads=job.resources.cpus_per_trial / world, device=ray.train.torch.get_device())
    data, device = setup.data, setup.device
    train_loader = train_shard_loader(data.train, job.data.batch_size, rank, world, job.search.seed, job.data.num_workers)
    _, val_loader = data.loaders(job.data.batch_size, seed=job.search.seed)
    teacher, supernet = build_supernet(job, setup.teacher, device)
    supernet.to(device)
    weight_opt, alpha_opt, schedule = make_optimizers(supernet, config, job.search.epochs, job.search.schedule,
                                                      job.search.step_epochs)
    choose_quantizer_kernels(job, training_pixels(len(train_loader.sampler), job.search.epochs, data.image_size), device)

    cost = space.cost_model()
    gmpq_objective = make_objective(supernet, teacher, job, config, cost)
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        start_epoch = restore_trial_state(checkpoint, device, supernet, weight_opt, alpha_opt, schedule, gmpq_objective)
    elif rank == 0:
        # DDP gives every worker rank 0's calibrated clips when it wraps the model.
        calibrate(supernet, train_loader, device)
    ddp_model = ray.train.torch.prepare_model(supernet, move_to_device=False)
    # Every worker adapts its own copy of the budget multiplier from the same (synchronized) α.
    objective = _ThroughDDP(gmpq_objective, ddp_model)

    for epoch in range(start_epoch + 1, job.search.epochs + 1):
        train_loader.sampler.set_epoch(epoch)
        error = None
        try:
            metrics, policy = train_and_evaluate_epoch(epoch, supernet, teacher, objective, job, train_loader, val_loader,
                                                        [weight_opt, alpha_opt], device, cost)
        except NonFiniteLossError as err:
            error = str(err)
        # Every worker must take the same branch, or the next collective would hang.
        if _sum_over_workers(float(error is not None), device) > 0:
            ray.train.report({**{name: float("nan") for name in TRIAL_METRICS}, EPOCH: epoch,
                              ERROR: error or "the loss became non-finite on another worker"})
            return
        metrics[LOSS] = _sum_over_workers(metrics[LOSS], device) / world
        schedule.step()
        _report(metrics, policy, supernet, weight_opt, alpha_opt, schedule, epoch, rank, gmpq_objective, job)


def _report(metrics, policy, supernet, weight_opt, alpha_opt, schedule, epoch, rank, objective, job) -> None:
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            torch.save(trial_state(supernet, weight_opt, alpha_opt, schedule, epoch, objective), os.path.join(folder, STATE_FILE))
            save_policies(folder, policy, supernet, job)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch:04d}")
