"""One train/evaluate loop, shared by FP teacher training, search trials and finetuning.

The loop keeps its running sums on the device and reads them once per epoch, so a step never
waits for the GPU. A non-finite epoch loss raises :class:`NonFiniteLossError`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""


def cross_entropy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain classification loss: returns (loss, logits)."""
    logits = model(images)
    return F.cross_entropy(logits, labels), logits


@dataclass
class EpochResult:
    """Mean loss and top-1 accuracy of one pass over a loader."""

    loss: float
    accuracy: float
    samples: int
    seconds: float


def run_epoch(
    model: nn.Module,
    loader: Iterable,
    loss_fn: LossFn = cross_entropy,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "",
) -> EpochResult:
    """Train on ``loader`` when optimizers are given, else evaluate (no grad, eval mode)."""
    training = bool(optimizers)
    model.train(training)
    device = torch.device(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    samples = 0
    start = time.perf_counter()
    from tqdm.auto import tqdm  # here: the rest of core needs PyTorch only

    for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.set_grad_enabled(training):
            loss, logits = loss_fn(model, images, labels)
        if training:
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
        loss_sum += loss.detach() * labels.shape[0]
        correct += (logits.detach().argmax(1) == labels).sum()
        samples += labels.shape[0]
    mean_loss = float(loss_sum) / max(samples, 1)
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(f"{desc or 'epoch'}: the loss became {mean_loss}")
    return EpochResult(mean_loss, float(correct) / max(samples, 1), samples, time.perf_counter() - start)


def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> EpochResult:
    """Cross-entropy and top-1 accuracy of ``model`` on ``loader``."""
    return run_epoch(model, loader, cross_entropy, (), device)


def train_classifier(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    epochs: int,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    device: torch.device | str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, float]]:
    """Train an FP model (the teacher) with SGD + cosine decay; returns per-epoch metrics."""
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    history = []
    for epoch in range(1, epochs + 1):
        train = run_epoch(model, train_loader, cross_entropy, [optimizer], device, progress, f"teacher {epoch}/{epochs}")
        schedule.step()
        val = evaluate(model, val_loader, device)
        history.append({"epoch": epoch, "train_loss": train.loss, "train_accuracy": train.accuracy, "val_accuracy": val.accuracy})
        if log:
            log(f"teacher epoch {epoch}/{epochs}: loss {train.loss:.3f}, train acc {train.accuracy:.3f}, "
                f"val acc {val.accuracy:.3f} ({train.seconds:.1f}s)")
    return history
