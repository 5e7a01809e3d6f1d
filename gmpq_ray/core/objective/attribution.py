"""Attribution maps, the capacity-aware imitation loss and attribution rank consistency (ARC).

The attribution of an image for class ``c`` is a map over the last feature map ``F`` (B, C, H, W)
before global pooling: ``A = ReLU(sum_k w_k F_k)`` with ``w_k`` the spatially summed gradient of
the class-``c`` logit with respect to ``F_k`` (Grad-CAM, as in the GMPQ reference code). For a
global-average-pool + linear head, ``w_k`` is ``W[c, k] / (H W)``: the class activation map, the
same map up to a constant factor (which the L2 normalization removes) with no second backward
pass. :func:`class_activation_map` is that closed form; :func:`gradcam_map` the autograd path
for any other head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gmpq_ray.core.models.registry import model_entry
from gmpq_ray.core.policy import FULL_PRECISION_BITS
from gmpq_ray.core.quant.layers import QuantLinear


class FeatureTap:
    """Keeps the output of a model's last feature module on every forward pass.

    Example::

        tap = FeatureTap(model, "resnet18")
        logits = model(images)
        maps = class_activation_map(tap.features, tap.classifier_weight(), labels)

    Args:
        leaf: hand the rest of the network a detached copy of the features that requires
            grad, so that Grad-CAM of a frozen model differentiates its head only.
    """

    def __init__(self, model: nn.Module, model_name: str, leaf: bool = False) -> None:
        entry = model_entry(model_name)
        self.leaf = leaf
        self.classifier = model.get_submodule(entry.classifier)
        self.features: torch.Tensor | None = None
        self._handle = model.get_submodule(entry.feature_module).register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        if self.leaf and torch.is_grad_enabled():
            output = output.detach().requires_grad_()
        self.features = output
        return output

    def classifier_weight(self) -> torch.Tensor:
        """The classifier's weight as the forward pass uses it (quantized if the layer is)."""
        if isinstance(self.classifier, QuantLinear):
            return self.classifier.quantized_weight()
        return self.classifier.weight

    def class_weights(self, target: torch.Tensor) -> torch.Tensor:
        """Per-image class weights W[c, k], masked like the classifier's input quantizer's STE."""
        weights = self.classifier_weight()[target]
        if isinstance(self.classifier, QuantLinear) and self.classifier.a_bits < FULL_PRECISION_BITS:
            quant = self.classifier.act_quant
            pooled = self.features.mean(dim=(2, 3))
            clip = quant.clip.abs() + 1e-8
            low = -clip if quant.is_signed() else torch.zeros_like(clip)
            weights = weights * ((pooled >= low) & (pooled <= clip)).to(weights.dtype)
        return weights

    def class_activation_map(self, target: torch.Tensor) -> torch.Tensor:
        return F.relu(torch.einsum("bchw,bc->bhw", self.features, self.class_weights(target).to(self.features.dtype)))

    def remove(self) -> None:
        self._handle.remove()


def class_activation_map(features: torch.Tensor, classifier_weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Closed-form attribution ``ReLU(sum_k W[c, k] F_k)`` of shape (B, H, W)."""
    class_weights = classifier_weight[target].to(features.dtype)  # (B, C)
    return F.relu(torch.einsum("bchw,bc->bhw", features, class_weights))


def gradcam_map(features: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """Grad-CAM attribution by autograd (the reference's second backward pass), shape (B, H, W)."""
    score = logits.gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(score, features, create_graph=create_graph)
    weights = grad.sum(dim=(2, 3))  # the reference's spatial sum
    return F.relu(torch.einsum("bchw,bc->bhw", features, weights))


def normalize_maps(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Flatten each map and scale it to unit L2 norm."""
    flat = maps.flatten(1)
    return flat / (flat.norm(dim=1, keepdim=True) + eps)


def capacity_exponent(expected_bits: Sequence[tuple[torch.Tensor, torch.Tensor]], kappa: float = 24.0) -> torch.Tensor:
    """The imitation exponent p = kappa * mean_l 1 / (E[b_w,l] E[b_a,l]), detached.

    Lower-capacity networks imitate a sharper (higher power) teacher attribution.
    """
    inverse = torch.stack([1.0 / (w * a) for w, a in expected_bits])
    return (kappa * inverse.mean()).detach()


def imitation_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor, exponent: torch.Tensor | float) -> torch.Tensor:
    """Mean over the batch *and the pixels* of (n(A_s) - n(A_t ** p))^2 with n the L2 normalization.

    The reference's ``cal_l2loss`` (``search_attention.py``) takes ``.pow(2).mean()`` over the
    flattened maps, so its ``--aw 40`` means the same at every map size; a sum over the pixels
    would make it H x W times stronger (16x at 4x4 maps, 49x at 7x7).
    """
    teacher = teacher_maps.detach().float().clamp_min(0) ** exponent
    diff = normalize_maps(student_maps.float()) - normalize_maps(teacher)
    return diff.pow(2).mean()


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based) along the last dimension, ties sharing their average rank.

    Attribution maps go through a ReLU and hold many tied zeros, so ties matter. Pairwise
    comparison is exact and vectorized; maps have at most a few hundred pixels.
    """
    less = (values[..., None, :] < values[..., :, None]).sum(-1)
    equal = (values[..., None, :] == values[..., :, None]).sum(-1)
    return less.float() + (equal.float() + 1) / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row of two (B, N) tensors; 0 where a row is constant."""
    ra, rb = average_ranks(a.float()), average_ranks(b.float())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denom = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(denom > 0, (ra * rb).sum(dim=1) / denom.clamp_min(1e-12), torch.zeros_like(denom))


def attribution_rank_consistency(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """ARC: the mean per-image Spearman correlation of student and teacher attribution."""
    return spearman(student_maps.flatten(1), teacher_maps.flatten(1)).mean()
