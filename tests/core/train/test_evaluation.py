"""The shared evaluation protocol: loss, accuracy and ARC against the FP teacher."""

from __future__ import annotations

import copy

import pytest
import torch

from gmpq_ray.core.objective.attribution import FeatureTap, gradcam_map, spearman
from gmpq_ray.core.train.evaluation import evaluate_with_arc
from gmpq_ray.core.train.loop import evaluate


def gradcam_arc(student, teacher, images, labels):
    """Per-image Spearman of Grad-CAM maps (the definition), computed by autograd."""
    maps = []
    for model in (student, teacher):
        tap = FeatureTap(model, "digits_cnn", leaf=True)
        with torch.enable_grad():
            logits = model(images)
            maps.append(gradcam_map(tap.features, logits, labels, create_graph=False).detach())
        tap.remove()
    return spearman(maps[0].flatten(1), maps[1].flatten(1))


def test_evaluate_with_arc_matches_gradcam_ranks(digits_fp, batch, make_supernet):
    images, labels = batch
    student = make_supernet(digits_fp, images, labels)
    loader = [(images[:20], labels[:20]), (images[20:], labels[20:])]  # unequal batches: weighted mean
    result = evaluate_with_arc(student, digits_fp, "digits_cnn", loader)
    per_image = gradcam_arc(student, digits_fp, images, labels)
    assert result.arc == pytest.approx(float(per_image.mean()), rel=1e-5)
    plain = evaluate(student, loader)
    assert result.loss == pytest.approx(plain.loss, rel=1e-5)
    assert result.accuracy == pytest.approx(plain.accuracy)
    assert -1.0 <= result.arc <= 1.0
    # The taps are removed afterwards.
    assert not student.features._forward_hooks and not digits_fp.features._forward_hooks


def test_teacher_against_itself(digits_fp, batch):
    images, labels = batch
    result = evaluate_with_arc(copy.deepcopy(digits_fp), digits_fp, "digits_cnn", [(images, labels)])
    per_image = gradcam_arc(digits_fp, digits_fp, images, labels)
    # Identical maps rank identically; an all-zero map (ReLU) has no ranking and counts 0.
    assert set(per_image.round(decimals=5).tolist()) <= {0.0, 1.0}
    assert result.arc == pytest.approx(float(per_image.mean()), rel=1e-5)
    assert result.arc > 0.5
