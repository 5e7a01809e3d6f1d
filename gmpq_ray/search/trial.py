"""The differentiable GMPQ search trial: a plain function of its config, reporting each epoch.

Each epoch the trial trains the supernet (network weights and α on separate optimizers), then
evaluates on the validation split the supernet and the *derived policy* (the argmax policy,
repaired deterministically to the BOPs budget and, if the job says so, filled up to it) run
with the supernet's shared weights. It reports the metrics of :data:`TRIAL_METRICS` and a
checkpoint holding the supernet, both optimizers, the epoch, RNG state and the derived
policy (``policy.json``), from which an interrupted trial resumes.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from gmpq_ray.core.cost.repair import repair_policy
from gmpq_ray.core.objective.complexity_term import make_complexity
from gmpq_ray.core.objective.loss import GMPQObjective
from gmpq_ray.core.policy import Policy
from gmpq_ray.core.quant.calibration import calibrate, reestimated_batch_norm
from gmpq_ray.core.quant.convert import argmax_policy, pinned_policy, supernet_layers, to_supernet
from gmpq_ray.core.train.evaluation import evaluate_with_arc
from gmpq_ray.core.train.loop import NonFiniteLossError, run_epoch
from gmpq_ray.search.job import Job
from gmpq_ray.search.metrics import BUDGET_BOPS_G, EPOCH, ERROR, TRIAL_METRICS
from gmpq_ray.search.trial_setup import (
    POLICY_FILE,
    STATE_FILE,
    UNFILLED_POLICY_FILE,
    TrialContext,
    choose_quantizer_kernels,
    prepare_trial,
    training_pixels,
)

# Training batches that re-estimate a derived policy's batch-norm statistics before it is scored.
BN_BATCHES = 8


def derive_policy(supernet: torch.nn.Module, job: Job, fill: bool | None = None) -> tuple[Policy, Policy]:
    """(argmax policy, derived policy) of a supernet: the argmax, repaired if it is over the limit
    and, with ``fill`` (default: the job's ``fill_budget``), filled up to it; the derived policy's ``provenance`` says which
    (``argmax``, ``repaired``, ``filled``) and counts the steps.

    Repair values each choice by its α log-probability, so it lowers first the bits the
    supernet was least sure of and fills the budget with the ones it wanted most.
    """
    space = job.space
    argmax = argmax_policy(supernet, space.model, space.input_size)
    log_probs = {
        name: {
            "w_bits": dict(zip(layer.w_candidates, layer.alpha_w.detach().log_softmax(0).tolist())),
            "a_bits": dict(zip(layer.a_candidates, layer.alpha_a.detach().log_softmax(0).tolist())),
        }
        for name, layer in supernet_layers(supernet).items()
    }
    cost = space.cost_model()
    repaired = repair_policy(
        argmax, cost.macs, space.bops_limit, space.w_bits, space.a_bits,
        value=lambda layer, kind, bits: log_probs[layer][kind][bits], source="argmax",
        fill=job.search.fill_budget if fill is None else fill,
    )
    for policy in (argmax, repaired):
        policy.bops = cost.policy_bops(policy, space.fixed).to_dict(space.bops_limit)
    return argmax, repaired


def save_policies(folder: str, policy: Policy, supernet: torch.nn.Module, job: Job) -> None:
    """Write a checkpoint's derived policy and, when it was filled, the policy before the fill."""
    policy.save(os.path.join(folder, POLICY_FILE))
    if job.search.fill_budget:
        derive_policy(supernet, job, fill=False)[1].save(os.path.join(folder, UNFILLED_POLICY_FILE))


def score_policy(supernet, teacher, policy: Policy, job: Job, train_loader, val_loader, device):
    """Accuracy and ARC of a discrete policy run with the supernet's shared weights, its
    batch-norm statistics re-estimated for that policy on ``BN_BATCHES`` training batches."""
    with pinned_policy(supernet, policy), reestimated_batch_norm(supernet, train_loader, device, BN_BATCHES):
        return evaluate_with_arc(supernet, teacher, job.space.model, val_loader, device)


def build_supernet(job: Job, teacher: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The FP teacher frozen on ``device`` and a supernet initialized from its weights."""
    space = job.space
    teacher.to(device).eval().requires_grad_(False)
    student = to_supernet(copy.deepcopy(teacher).requires_grad_(True), space.w_bits, space.a_bits, space.fixed_layers, space.fixed)
    return teacher, student


def supernet_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable of the differentiable search (see module docstring)."""
    setup = prepare_trial(context, tune.get_context().get_trial_id())
    job, data, device = setup.job, setup.data, setup.device
    space = job.space
    train_loader, val_loader = data.loaders(job.data.batch_size, seed=job.search.seed)
    teacher, supernet = build_supernet(job, setup.teacher, device)
    supernet.to(device)

    weight_opt, alpha_opt, schedule = make_optimizers(supernet, config, job.search.epochs, job.search.schedule,
                                                      job.search.step_epochs)
    epochs = job.search.epochs
    choose_quantizer_kernels(job, training_pixels(len(data.train), epochs, data.image_size), device)

    cost = space.cost_model()
    objective = make_objective(supernet, teacher, job, config, cost)
    start_epoch = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        start_epoch = restore_trial_state(checkpoint, device, supernet, weight_opt, alpha_opt, schedule, objective)
    else:
        calibrate(supernet, train_loader, device)

    for epoch in range(start_epoch + 1, epochs + 1):
        try:
            metrics, policy = train_and_evaluate_epoch(epoch, supernet, teacher, objective, job, train_loader, val_loader,
                                                        [weight_opt, alpha_opt], device, cost)
        except NonFiniteLossError as err:
            # Retrying from the last checkpoint would diverge again: end the trial here, as
            # failed, with the reason in its last result (Optuna records it as FAIL).
            tune.report({**{name: float("nan") for name in TRIAL_METRICS}, EPOCH: epoch, ERROR: str(err)})
            return
        schedule.step()
        with tempfile.TemporaryDirectory() as folder:
            torch.save(trial_state(supernet, weight_opt, alpha_opt, schedule, epoch, objective),
                       os.path.join(folder, STATE_FILE))
            save_policies(folder, policy, supernet, job)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


class Schedules:
    """The learning-rate schedules of a trial's optimizers, stepped once per epoch as one."""

    def __init__(self, schedules: list[torch.optim.lr_scheduler.LRScheduler]) -> None:
        self.schedules = schedules

    def step(self) -> None:
        for schedule in self.schedules:
            schedule.step()

    def state_dict(self) -> dict[str, Any]:
        return {"schedules": [schedule.state_dict() for schedule in self.schedules]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for schedule, saved in zip(self.schedules, state["schedules"]):
            schedule.load_state_dict(saved)


def make_optimizers(supernet: torch.nn.Module, config: dict[str, Any], epochs: int, schedule: str = "step",
                    step_epochs: int = 10):
    """SGD for the network weights and activation clips (no weight decay on clips), SGD for α
    apart (with the weights' decay, as the reference's arch optimizer), and their schedule:
    ``step`` (the reference's ``adjust_learning_rate``: both rates x0.1 every ``step_epochs``)
    or ``cosine`` (the weights' rate annealed over ``epochs``, α's constant)."""
    alphas = [p for n, p in supernet.named_parameters() if n.endswith(("alpha_w", "alpha_a"))]
    clips = [p for n, p in supernet.named_parameters() if n.endswith("act_quant.clip")]
    weights = [p for n, p in supernet.named_parameters() if not n.endswith(("alpha_w", "alpha_a", "act_quant.clip"))]
    weight_opt = torch.optim.SGD(
        [{"params": weights, "weight_decay": config["weight_decay"]}, {"params": clips, "weight_decay": 0.0}],
        lr=config["lr_weights"], momentum=0.9,
    )
    alpha_opt = torch.optim.SGD(alphas, lr=config["lr_alpha"], momentum=0.9, weight_decay=config["weight_decay"])
    if schedule == "step":
        schedules = [torch.optim.lr_scheduler.StepLR(opt, step_size=step_epochs, gamma=0.1) for opt in (weight_opt, alpha_opt)]
    else:
        schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(weight_opt, T_max=epochs)]
    return weight_opt, alpha_opt, Schedules(schedules)


def make_objective(supernet: torch.nn.Module, teacher: torch.nn.Module, job: Job, config: dict[str, Any], cost) -> GMPQObjective:
    """The search loss of a trial: the job's complexity form, exponent and attribution path."""
    space = job.space
    first_searched = space.cost_model().searched[0]
    complexity = make_complexity(job.search.complexity, space.bops_limit, float(cost.macs[first_searched]),
                                 config["lambda_c"], config["dual_lr"], config["cd"],
                                 floor_bops=cost.floor_bops(space.w_bits, space.a_bits))
    return GMPQObjective(
        supernet, teacher, space.model, cost, space.bops_limit, config["lambda_attr"], config["lambda_c"], config["kappa"],
        job.search.attribution, job.search.teacher_precision, p=config.get("p"), complexity=complexity,
    )


def trial_state(supernet, weight_opt, alpha_opt, schedule, epoch: int, objective=None) -> dict[str, Any]:
    """What a trial checkpoint holds (``STATE_FILE``): network with α and clips, optimizers, schedule, RNG, epoch,
    and the objective's state (the budget multiplier)."""
    return {
        "objective": objective.state_dict() if objective is not None else {},
        "supernet": supernet.state_dict(),
        "weight_opt": weight_opt.state_dict(),
        "alpha_opt": alpha_opt.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": torch.get_rng_state(),
        "epoch": epoch,
    }


def restore_trial_state(checkpoint, device, supernet, weight_opt, alpha_opt, schedule, objective=None) -> int:
    """Load a Tune or Train checkpoint written with :func:`trial_state`; returns its epoch."""
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True)
    supernet.load_state_dict(state["supernet"])
    weight_opt.load_state_dict(state["weight_opt"])
    alpha_opt.load_state_dict(state["alpha_opt"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"])
    if objective is not None and state.get("objective"):
        objective.load_state_dict(state["objective"])
    return state["epoch"]


def train_and_evaluate_epoch(epoch, supernet, teacher, objective, job, train_loader, val_loader, optimizers, device, cost):
    """One search epoch and its evaluation; raises NonFiniteLossError on NaN or inf."""
    space = job.space
    train = run_epoch(supernet, train_loader, objective, optimizers, device, desc=f"search epoch {epoch}")
    terms = {name: float(value) for name, value in objective.last_terms.items()}
    supernet_eval = evaluate_with_arc(supernet, teacher, space.model, val_loader, device)
    argmax, policy = derive_policy(supernet, job)
    policy_eval = score_policy(supernet, teacher, policy, job, train_loader, val_loader, device)
    # The argmax is scored too (the same numbers when it needed neither repair nor fill), so
    # that a trial shows what the search chose beside what it reports.
    argmax_eval = policy_eval if policy.layers == argmax.layers else score_policy(
        supernet, teacher, argmax, job, train_loader, val_loader, device)
    provenance = policy.provenance
    metrics = {
        "epoch": epoch,
        "loss": train.loss,
        "ce": terms["ce"],
        "attr_loss": terms["attr"],
        "accuracy": supernet_eval.accuracy,
        "arc": supernet_eval.arc,
        "expected_bops_g": float(objective.expected_bops()[0].detach()) / 1e9,
        "argmax_bops_g": argmax.bops["searched_g"],
        "argmax_accuracy": argmax_eval.accuracy,
        "policy_bops_g": policy.bops["searched_g"],
        "policy_accuracy": policy_eval.accuracy,
        "policy_arc": policy_eval.arc,
        "repair_steps": float(provenance["repair_steps"]),
        "fill_steps": float(provenance["fill_steps"]),
        "score": policy_eval.accuracy + job.search.arc_weight * policy_eval.arc,
    }
    # The scheduler holds the argmax policy to the limit: it is what the search chose (its
    # expected BOPs stay far from it while softmax(α) is flat, whatever the argmax does).
    metrics[BUDGET_BOPS_G] = metrics["argmax_bops_g"]
    bad = [name for name, value in metrics.items() if not math.isfinite(value)]
    if bad:
        raise NonFiniteLossError(f"epoch {epoch}: non-finite {', '.join(bad)}")
    return metrics, policy
