"""The QAT protocol both search methods and the comparison share.

A discrete policy is applied to a copy of the FP teacher, its activation ranges are
calibrated on training batches, and it is trained briefly with SGD; every epoch it is
evaluated (accuracy and ARC against the teacher) on the validation split, or on the held-out
test split where a comparison reports candidates that a search selected on validation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from gmpq_ray.core.config import require, short_repr
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.quant.calibration import calibrate
from gmpq_ray.core.quant.convert import apply_policy
from gmpq_ray.core.train.evaluation import Evaluation, evaluate_with_arc
from gmpq_ray.core.train.loop import cross_entropy, run_epoch


@dataclass
class QATConfig:
    """Hyper-parameters of the short QAT every compared policy gets.

    Raises:
        UserInputError: ``epochs`` below 1, or ``eval_split`` neither ``val`` nor ``test``.
    """

    epochs: int = 3
    lr: float = 0.01
    weight_decay: float = 5e-4
    batch_size: int = 64
    # "val" while searching (sampled trials select on it); "test" for the final report of
    # candidates, so that the split that selected them does not also score them.
    eval_split: str = "val"

    def __post_init__(self) -> None:
        self.validate("qat")

    def validate(self, where: str) -> None:
        """Check the fields (changes nothing); errors name ``where.field``."""
        require(isinstance(self.epochs, int) and self.epochs >= 1, f"{where}.epochs", f"must be at least 1, got {short_repr(self.epochs)}")
        require(self.eval_split in ("val", "test"), f"{where}.eval_split", f"must be 'val' or 'test', got {short_repr(self.eval_split)}")


def quantized_copy(teacher: nn.Module, policy: Policy, fixed_bits: LayerBits = LayerBits(8, 8)) -> nn.Module:
    """A trainable copy of the FP ``teacher`` quantized with ``policy``."""
    return apply_policy(copy.deepcopy(teacher).requires_grad_(True), policy, fixed_bits)


class QATRun:
    """One run of the QAT protocol on one policy, resumable from :meth:`state_dict`.

    Example::

        run = QATRun(teacher, "digits_cnn", policy, data, QATConfig(epochs=3))
        for epoch, evaluation, train_loss in run.epochs():
            print(epoch, evaluation.accuracy)
    """

    def __init__(
        self, teacher: nn.Module, model_name: str, policy: Policy, data, config: QATConfig, seed: int = 0,
        device: torch.device | str = "cpu", fixed_bits: LayerBits = LayerBits(8, 8),
    ) -> None:
        torch.manual_seed(seed)
        self.teacher = teacher.to(device).eval()
        self.model_name, self.config, self.device = model_name, config, device
        self.model = quantized_copy(self.teacher, policy, fixed_bits).to(device)
        self.train_loader, self.val_loader = data.loaders(config.batch_size, seed=seed)
        if config.eval_split == "test":
            self.val_loader = data.eval_loader("test", config.batch_size)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(config.epochs, 1))
        self.epoch = 0
        calibrate(self.model, self.train_loader, device)

    def epochs(self) -> Iterator[tuple[int, Evaluation, float]]:
        """Train the remaining epochs, yielding (epoch, evaluation on ``config.eval_split``, train loss)."""
        while self.epoch < self.config.epochs:
            self.epoch += 1
            train = run_epoch(self.model, self.train_loader, cross_entropy, [self.optimizer], self.device,
                              desc=f"qat epoch {self.epoch}")
            self.schedule.step()
            yield self.epoch, evaluate_with_arc(self.model, self.teacher, self.model_name, self.val_loader, self.device), train.loss

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "epoch": self.epoch, "rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch = int(state["epoch"])
        torch.set_rng_state(state["rng"])


def evaluate_policy(
    teacher: nn.Module, model_name: str, policy: Policy, data, config: QATConfig, seed: int = 0,
    device: torch.device | str = "cpu", fixed_bits: LayerBits = LayerBits(8, 8),
) -> Evaluation:
    """The final evaluation of ``policy`` after the whole QAT protocol.

    Raises:
        UserInputError: ``config.epochs`` is below 1 (``qat.epochs``).
    """
    config.validate("qat")
    final = None
    for _, evaluation, _ in QATRun(teacher, model_name, policy, data, config, seed, device, fixed_bits).epochs():
        final = evaluation
    return final
