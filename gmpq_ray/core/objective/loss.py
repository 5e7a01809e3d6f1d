"""The GMPQ search loss: cross-entropy + λ_attr · attribution imitation + a complexity term."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.cost.expected import ExpectedBits, SupernetBops
from gmpq_ray.core.models.registry import model_entry
from gmpq_ray.core.objective.attribution import FeatureTap, capacity_exponent, class_activation_map, gradcam_map, imitation_loss
from gmpq_ray.core.objective.complexity_term import DEFAULT_DUAL_LR, BudgetMultiplier, ComplexityTerm
from gmpq_ray.core.train.teacher import TeacherPrecision, inference_teacher

AttributionPath = Literal["closed_form", "autograd"]


class GMPQObjective:
    """Loss function of a supernet search step, usable as the ``loss_fn`` of ``run_epoch``.

    ``L = CE + lambda_attr * L_attr + complexity``. ``L_attr`` is the capacity-aware attribution
    imitation (:func:`~gmpq_ray.core.objective.attribution.imitation_loss`, averaged over batch and pixels
    as the reference): the teacher's map is raised to a fixed power ``p`` (the reference's
    ``--pnorm``) or, when ``p`` is None, to ``kappa * mean_l 1/(E[b_w] E[b_a])`` (its
    ``--product``). The complexity term is a :class:`~gmpq_ray.core.objective.complexity_term.ComplexityTerm` of
    the expected searched-layer BOPs under softmax(α) and of the argmax policy's BOPs; by default
    a :class:`~gmpq_ray.core.objective.complexity_term.BudgetMultiplier` that starts at ``lambda_c`` and aims the
    argmax at the limit. The teacher runs once per step without autograd, as a frozen copy
    with folded batch norms, in bf16 where the hardware runs it natively
    (:func:`~gmpq_ray.core.train.teacher.inference_teacher`).

    Args:
        student: the supernet (after :func:`~gmpq_ray.core.quant.convert.to_supernet`).
        teacher: the FP model, in eval mode; its parameters are not trained.
        model_name: registry name of both networks (locates the feature map and classifier).
        cost: the deployment cost model.
        bops_limit: the searched-layer BOPs budget.
        lambda_c: the starting multiplier of the default complexity term (ignored with ``complexity``).
        p: a fixed imitation exponent; None for the capacity-aware one with ``kappa``.
        complexity: the complexity term; None for ``BudgetMultiplier(bops_limit, lambda_c)``.
        attribution: ``"closed_form"`` (class activation map) or ``"autograd"`` (Grad-CAM with a
            second backward pass, as the reference code). A model whose head is not global
            average pooling then the classifier (``ModelEntry.cam_head``, e.g. timm's MobileNetV3)
            has no closed form and always takes the autograd path.
        teacher_precision: ``"auto"`` (bf16 where native), ``"fp32"`` or ``"bf16"``: the
            precision of the teacher's forward pass only.

    Example::

        objective = GMPQObjective(supernet, teacher, "resnet18", cost, 15.3e9, 40.0, 1.0)
        run_epoch(supernet, loader, objective, [weight_opt, alpha_opt])
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        model_name: str,
        cost: CostModel,
        bops_limit: float,
        lambda_attr: float,
        lambda_c: float,
        kappa: float = 24.0,
        attribution: AttributionPath = "closed_form",
        teacher_precision: TeacherPrecision = "auto",
        p: float | None = None,
        complexity: ComplexityTerm | None = None,
    ) -> None:
        if attribution not in ("closed_form", "autograd"):
            raise ValueError(f"attribution must be 'closed_form' or 'autograd', got {attribution!r}")
        if not model_entry(model_name).cam_head:
            attribution = "autograd"
        self.teacher = inference_teacher(teacher, teacher_precision)
        self.student_tap = FeatureTap(student, model_name)
        self.teacher_tap = FeatureTap(self.teacher, model_name, leaf=attribution == "autograd")
        self.bops = SupernetBops(cost, student)
        self.bops_limit = float(bops_limit)
        self.lambda_attr, self.kappa = float(lambda_attr), float(kappa)
        self.p = None if p is None else float(p)
        self.complexity = complexity if complexity is not None else BudgetMultiplier(bops_limit, lambda_c, DEFAULT_DUAL_LR)
        self.attribution = attribution
        self.last_terms: dict[str, torch.Tensor] = {}

    def teacher_maps(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.attribution == "closed_form":
            with torch.no_grad():
                self.teacher(images)
                # The map in fp32 whatever the teacher's dtype: it is small, and its power p sharpens errors.
                features, weight = self.teacher_tap.features.float(), self.teacher_tap.classifier_weight().float()
                return class_activation_map(features, weight, labels)
        # The tap hands the head a leaf copy of the features: the teacher's backbone builds
        # no graph, only its head does.
        with torch.enable_grad():
            logits = self.teacher(images)
            return gradcam_map(self.teacher_tap.features, logits, labels, create_graph=False).detach().float()

    def expected_bops(self) -> tuple[torch.Tensor, ExpectedBits]:
        """Expected searched-layer BOPs under softmax(α) and each layer's expected bits."""
        return self.bops.expected()

    def argmax_bops(self) -> torch.Tensor:
        """Searched-layer BOPs of the argmax policy, as a tensor on the α's device (no host sync)."""
        return self.bops.argmax()

    def exponent(self, bits: ExpectedBits) -> torch.Tensor | float:
        return self.p if self.p is not None else capacity_exponent(bits, self.kappa)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The complexity term's state (the budget multiplier), for trial checkpoints."""
        return self.complexity.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.complexity.load_state_dict(state)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.attribution == "autograd" and not torch.is_grad_enabled():
            with torch.enable_grad():
                loss, logits = self(model, images, labels)
            return loss.detach(), logits.detach()
        teacher_maps = self.teacher_maps(images, labels)
        logits = model(images)
        ce = F.cross_entropy(logits, labels)
        features = self.student_tap.features
        if self.attribution == "closed_form":
            student_maps = self.student_tap.class_activation_map(labels)
        else:
            student_maps = gradcam_map(features, logits, labels, create_graph=torch.is_grad_enabled())
        expected_bops, bits = self.expected_bops()
        attr = imitation_loss(student_maps, teacher_maps, self.exponent(bits))
        # Only training steps adapt the budget multiplier, not evaluation passes.
        complexity = self.complexity(expected_bops, self.argmax_bops(), update=model.training and torch.is_grad_enabled())
        loss = ce + self.lambda_attr * attr + complexity
        # Kept as tensors: reading them here would force a device sync every step.
        self.last_terms = {"ce": ce.detach(), "attr": attr.detach(), "complexity": complexity.detach()}
        return loss, logits
