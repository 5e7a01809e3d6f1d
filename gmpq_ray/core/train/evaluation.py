"""The evaluation protocol both search methods share: accuracy and ARC against the FP teacher."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gmpq_ray.core.models.registry import model_entry
from gmpq_ray.core.objective.attribution import FeatureTap, attribution_rank_consistency, class_activation_map, gradcam_map


@dataclass
class Evaluation:
    """Validation loss, top-1 accuracy and attribution rank consistency of a model."""

    loss: float
    accuracy: float
    arc: float


@torch.no_grad()
def evaluate_with_arc(
    model: nn.Module,
    teacher: nn.Module,
    model_name: str,
    loader: Iterable,
    device: torch.device | str = "cpu",
) -> Evaluation:
    """Accuracy of ``model`` and its ARC (Spearman of attribution maps) against ``teacher``.

    The maps are taken for the ground-truth class of each image: the class activation map, or
    Grad-CAM of the head where it is not average pooling then the classifier (``cam_head``).
    """
    model.eval()
    teacher.eval()
    closed_form = model_entry(model_name).cam_head
    student_tap = FeatureTap(model, model_name, leaf=not closed_form)
    teacher_tap = FeatureTap(teacher, model_name, leaf=not closed_form)
    try:
        loss_sum = torch.zeros((), device=device)
        arc_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        samples = 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            if closed_form:
                logits = model(images)
                teacher(images)
                student_maps = student_tap.class_activation_map(labels)
                teacher_maps = class_activation_map(teacher_tap.features, teacher_tap.classifier_weight(), labels)
            else:
                student_maps, logits = _gradcam(model, student_tap, images, labels)
                teacher_maps, _ = _gradcam(teacher, teacher_tap, images, labels)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            arc_sum += attribution_rank_consistency(student_maps, teacher_maps) * labels.shape[0]
            correct += (logits.argmax(1) == labels).sum()
            samples += labels.shape[0]
    finally:
        student_tap.remove()
        teacher_tap.remove()
    n = max(samples, 1)
    return Evaluation(float(loss_sum) / n, float(correct) / n, float(arc_sum) / n)


def _gradcam(model: nn.Module, tap: FeatureTap, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM through the head only: the leaf tap cuts the graph at the feature map."""
    with torch.enable_grad():
        logits = model(images)
        maps = gradcam_map(tap.features, logits, labels, create_graph=False)
    return maps.detach(), logits.detach()
