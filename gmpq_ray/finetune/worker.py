"""The training function every Ray Train worker of a finetune runs (DDP, one shard of the data each).

Each epoch a worker trains on its shard (gradients all-reduced by DDP), evaluates top-1 and
top-5 on its share of the validation split (the counts are summed over workers; with the job's
``report_split: test``, the last epoch on the held-out test split too), and reports
the metrics; rank 0 adds a checkpoint (``state.pt``: the model, the optimizer, the epoch and
the metrics so far) named ``epoch_NNNN``. A run started again with the same Ray Train run name
and storage resumes from the latest one (:func:`ray.train.get_checkpoint`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from gmpq_ray.core.data.sharding import eval_shard_loader, per_worker_batch, train_shard_loader
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import Policy
from gmpq_ray.core.quant.calibration import calibrate
from gmpq_ray.core.train.finetuning import (
    QATLoss,
    deployment_model,
    load_fp_weights,
    quantize_activations_in_float32,
    topk_metrics,
    topk_sums,
)
from gmpq_ray.core.train.loop import run_epoch
from gmpq_ray.finetune.job import FinetuneJob
from gmpq_ray.finetune.outputs import STATE_FILE, checkpoint_name, load_state
from gmpq_ray.runtime.ray_train import quiet_ray_train_reports

# Ray Train configures the root logger of its workers to reach the driver once (a print
# reaches it twice).
log = logging.getLogger(__name__)


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of (1-based) ``epoch``: cosine decay from ``base_lr``, stateless so that a
    resumed run with more epochs simply follows the longer schedule."""
    return 0.5 * base_lr * (1 + math.cos(math.pi * (epoch - 1) / epochs))


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _broadcast_buffers(model: torch.nn.Module) -> None:
    # DDP syncs buffers at the start of a training forward pass; after the last step each
    # worker's batch-norm statistics differ, so evaluate all workers with rank 0's.
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker function; ``config`` holds the job, the policy dict and the FP state (an ObjectRef)."""
    quiet_ray_train_reports()
    job: FinetuneJob = config["job"]
    policy = Policy.from_dict(config["policy"])
    fp_state = ray.get(config["fp_state"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    torch.set_num_threads(max(1, int(job.cpus_per_worker)))
    torch.manual_seed(job.seed + rank)  # each worker its own augmentation

    data = job.data.load()
    train_loader = train_shard_loader(data.train, job.data.batch_size, rank, world, job.seed, job.data.num_workers)
    val_loader = eval_shard_loader(data.val, max(per_worker_batch(job.data.batch_size, world), 64), rank, world,
                                   job.data.num_workers)
    model = deployment_model(job.model, data.num_classes, data.in_channels, job.cifar_stem, policy, fp_state, job.fixed)
    model.to(device)
    teacher = None
    if job.distill:
        teacher = create_model(job.model, data.num_classes, data.in_channels, job.cifar_stem)
        load_fp_weights(teacher, fp_state, "fp_state_dict")
        teacher.to(device)
    if on_gpu:
        model.to(memory_format=torch.channels_last)
        quantize_activations_in_float32(model)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    loss = QATLoss(teacher, job.distill_temperature, job.distill_weight,
                   autocast=torch.bfloat16 if on_gpu else None, channels_last=on_gpu)

    clips = [p for n, p in model.named_parameters() if n.endswith("act_quant.clip") and p.requires_grad]
    weights = [p for n, p in model.named_parameters() if not n.endswith("act_quant.clip") and p.requires_grad]
    optimizer = torch.optim.SGD([{"params": weights, "weight_decay": job.weight_decay}, {"params": clips, "weight_decay": 0.0}],
                                lr=job.lr, momentum=job.momentum)

    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_state(folder, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
    elif rank == 0:
        # DDP hands rank 0's parameters and buffers to every worker when it wraps the model.
        calibrate(model, train_loader, device, num_batches=job.calibration_batches)
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False)

    for epoch in range(start_epoch + 1, job.epochs + 1):
        lr = cosine_lr(job.lr, epoch, job.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_loader.sampler.set_epoch(epoch)
        train = run_epoch(ddp_model, train_loader, loss, [optimizer], device, desc=f"finetune epoch {epoch}")
        train_sums = _all_reduce(torch.tensor([train.loss * train.samples, train.accuracy * train.samples, train.samples],
                                              dtype=torch.float64, device=device))
        _broadcast_buffers(model)
        val = topk_metrics(_all_reduce(topk_sums(model, val_loader, loss, device)))
        samples = max(float(train_sums[2]), 1.0)
        metrics = {"epoch": epoch, "lr": lr, "train_loss": float(train_sums[0]) / samples,
                   "train_top1": float(train_sums[1]) / samples, **val, "epoch_seconds": train.seconds, "workers": world}
        if epoch == job.epochs and job.report_split == "test" and data.has_test:
            # The reported number: the last epoch on the held-out split, which no epoch was evaluated on.
            test_loader = eval_shard_loader(data.test, max(per_worker_batch(job.data.batch_size, world), 64), rank, world,
                                            job.data.num_workers)
            test = topk_metrics(_all_reduce(topk_sums(model, test_loader, loss, device)))
            metrics.update(test_loss=test["val_loss"], test_top1=test["top1"], test_top5=test["top5"])
        history.append(metrics)
        _report(epoch, metrics, history, model, optimizer, rank, job)
        if job.stop_after_epochs is not None and epoch >= job.stop_after_epochs:
            break


def _report(epoch, metrics, history, model, optimizer, rank, job) -> None:
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            log.info(f"finetune epoch {epoch}/{job.epochs}: train loss {metrics['train_loss']:.4f}, "
                     f"top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f}, lr {metrics['lr']:.3g} "
                     f"({metrics['epoch_seconds']:.1f} s, {metrics['workers']} worker(s)) [{time.strftime('%H:%M:%S')}]")
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history}
            torch.save(state, os.path.join(folder, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name(epoch))
