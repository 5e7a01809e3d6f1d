"""Finetuning a policy on the large data set, in one process: model, loss, top-k evaluation.

The Ray Train job (:mod:`gmpq_ray.finetune.runner`) runs these on every worker. The deployment model
is the FP architecture with its FP weights, quantized in place by the policy; its activation
ranges are calibrated before training. With ``distill`` the FP model is the teacher: the loss
mixes cross-entropy with the KL divergence between the softened logits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import FULL_PRECISION_BITS, LayerBits, Policy
from gmpq_ray.core.quant.activation import ActivationQuantizer
from gmpq_ray.core.quant.convert import apply_policy
from gmpq_ray.core.quant.layers import QuantConv2d, QuantLinear


def check_policy_fits(model_name: str, num_classes: int, in_channels: int, cifar_stem: bool, policy: Policy,
                      input_size: int | None = None) -> None:
    """Raise a :class:`UserInputError` unless ``policy`` names exactly the model's layers (and,
    given ``input_size``, was searched for that deployment resolution, when it says).

    Runs on the meta device: no memory, no weights.
    """
    if policy.model != model_name:
        raise UserInputError(f"the policy is for {policy.model!r}, the job's model is {model_name!r}")
    if input_size is not None and policy.input_size is not None and policy.input_size != input_size:
        raise UserInputError(f"the policy is for input size {policy.input_size}, the job deploys at {input_size} "
                             f"(set input_size: {policy.input_size} in the job to count BOPs as the search did)")
    apply_policy(create_model(model_name, num_classes, in_channels, cifar_stem, device="meta"), policy)


def load_fp_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load FP weights into ``model``; a mismatch is a :class:`UserInputError` naming ``source``."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise UserInputError(f"{source}: does not match the model ({str(err).splitlines()[0]})") from None


def deployment_model(
    model_name: str,
    num_classes: int,
    in_channels: int,
    cifar_stem: bool,
    policy: Policy,
    fp_state: Mapping[str, torch.Tensor],
    fixed_bits: LayerBits = LayerBits(8, 8),
) -> nn.Module:
    """The FP model with ``fp_state`` loaded, quantized in place by ``policy`` (not yet calibrated).

    Example::

        model = deployment_model("resnet18", 1000, 3, False, policy, torch.load("resnet18.pt"))
        calibrate(model, train_loader)
    """
    model = create_model(model_name, num_classes, in_channels, cifar_stem)
    load_fp_weights(model, fp_state, "fp_state_dict")
    apply_policy(model, policy, fixed_bits)
    # A 32-bit (unquantized) input never uses its clip; DDP must not wait for its gradient.
    for module in model.modules():
        if isinstance(module, (QuantConv2d, QuantLinear)) and module.a_bits >= FULL_PRECISION_BITS:
            module.act_quant.clip.requires_grad_(False)
    return model


def quantize_activations_in_float32(model: nn.Module) -> list:
    """Hand every activation quantizer a float32 input (returns the hook handles).

    Under bf16 autocast the quantizers would otherwise see bf16 tensors: the fake-quantize
    kernels are not guaranteed for bf16, and an fp32 grid keeps every level exact.
    """
    def to_float(module, args):
        return (args[0].float(), *args[1:])

    return [m.register_forward_pre_hook(to_float) for m in model.modules() if isinstance(m, ActivationQuantizer)]


class QATLoss:
    """Loss of a finetuning step, usable as the ``loss_fn`` of :func:`~gmpq_ray.core.train.loop.run_epoch`.

    ``(1 - distill_weight) * CE + distill_weight * T^2 * KL(teacher || student)`` with a
    teacher, plain CE without. ``autocast`` (e.g. ``torch.bfloat16``) runs the forward passes
    in reduced precision; ``channels_last`` feeds images in that memory format.
    """

    def __init__(
        self,
        teacher: nn.Module | None = None,
        temperature: float = 1.0,
        distill_weight: float = 0.5,
        autocast: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.temperature, self.distill_weight = float(temperature), float(distill_weight)
        self.autocast, self.channels_last = autocast, channels_last

    def logits(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``model``'s logits in float32 (its forward pass under this loss's autocast)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            return model(images).float()

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(model, images)
        ce = F.cross_entropy(logits, labels)
        if self.teacher is None:
            return ce, logits
        with torch.no_grad():
            teacher_logits = self.logits(self.teacher, images)
        t = self.temperature
        kl = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1), reduction="batchmean", log_target=True)
        return (1 - self.distill_weight) * ce + self.distill_weight * t * t * kl, logits


@torch.no_grad()
def topk_sums(model: nn.Module, loader: Iterable, loss: QATLoss, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[CE sum, top-1 correct, top-5 correct, samples]`` over ``loader`` as one float64 tensor.

    Sums, not means, so that data-parallel workers can add theirs (one all-reduce) before dividing.
    Top-5 is top-k with k = min(5, classes).
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = loss.logits(model, images)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        sums += torch.stack([
            F.cross_entropy(logits, labels, reduction="sum").double(),
            hits[:, 0].sum().double(),
            hits.any(1).sum().double(),
            torch.tensor(float(labels.shape[0]), dtype=torch.float64, device=device),
        ])
    return sums


def topk_metrics(sums: torch.Tensor) -> dict[str, float]:
    """``val_loss``, ``top1`` and ``top5`` from :func:`topk_sums` (summed over workers)."""
    loss_sum, top1, top5, count = (float(v) for v in sums)
    count = max(count, 1.0)
    return {"val_loss": loss_sum / count, "top1": top1 / count, "top5": top5 / count}
