"""gmpq_ray.core: everything one process needs, in pure PyTorch (no Ray, no Optuna).

This package must import and run on a GPU host that has PyTorch but neither Ray nor Optuna.
"""

from gmpq_ray.core.cost.bops import CostModel, format_bops, module_macs
from gmpq_ray.core.cost.repair import repair_policy
from gmpq_ray.core.cost.searchspace import SearchSpace
from gmpq_ray.core.data.bundle import DataBundle, DataConfig, load_digits, make_synthetic
from gmpq_ray.core.data.datasets import DATASETS, build_split
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.registry import create_model, list_models, register_model
from gmpq_ray.core.objective.attribution import (
    FeatureTap,
    attribution_rank_consistency,
    capacity_exponent,
    class_activation_map,
    gradcam_map,
    imitation_loss,
    spearman,
)
from gmpq_ray.core.objective.complexity_term import BudgetMultiplier, ComplexityTerm, ReferenceComplexity, make_complexity
from gmpq_ray.core.objective.loss import GMPQObjective
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.quant.activation import ActivationQuantizer
from gmpq_ray.core.quant.calibration import calibrate, reestimated_batch_norm
from gmpq_ray.core.quant.convert import (
    apply_policy,
    argmax_policy,
    default_fixed_layers,
    pinned_policy,
    searched_layers,
    supernet_layers,
    to_supernet,
)
from gmpq_ray.core.quant.functions import mix_weights, quantize_weight
from gmpq_ray.core.quant.layers import MixedPrecisionConv2d, QuantConv2d, QuantLinear
from gmpq_ray.core.train.evaluation import Evaluation, evaluate_with_arc
from gmpq_ray.core.train.finetuning import QATLoss, deployment_model, topk_metrics, topk_sums
from gmpq_ray.core.train.loop import NonFiniteLossError, evaluate, run_epoch, train_classifier
from gmpq_ray.core.train.teacher import fold_batch_norms, inference_teacher

__all__ = [
    "ActivationQuantizer", "CostModel", "DataBundle", "Evaluation", "FeatureTap", "GMPQObjective",
    "LayerBits", "MixedPrecisionConv2d", "NonFiniteLossError", "Policy", "QuantConv2d", "QuantLinear",
    "SearchSpace", "UserInputError", "apply_policy", "argmax_policy", "attribution_rank_consistency",
    "calibrate", "capacity_exponent", "class_activation_map", "create_model", "default_fixed_layers",
    "evaluate", "evaluate_with_arc", "fold_batch_norms", "format_bops", "gradcam_map", "imitation_loss", "inference_teacher", "list_models",
    "load_digits", "make_synthetic", "mix_weights", "module_macs", "pinned_policy", "quantize_weight",
    "register_model", "repair_policy", "run_epoch", "searched_layers", "spearman", "supernet_layers",
    "to_supernet", "train_classifier",
    # complexity terms, batch-norm re-estimation
    "BudgetMultiplier", "ComplexityTerm", "ReferenceComplexity", "make_complexity", "reestimated_batch_norm",
    # data sets and finetuning
    "DATASETS", "DataConfig", "QATLoss", "build_split", "deployment_model", "topk_metrics", "topk_sums",
]
