"""The sampling-based search trial: evaluate one discrete policy proposed by an Optuna sampler.

The trial's config holds per-layer bits (``w_bits/<layer>``, ``a_bits/<layer>`` in Optuna's
flat names). In ``repair`` mode the proposal is mapped deterministically into the budget (and
filled up to it) before anything else; in ``raw`` mode it is evaluated as proposed. The first
report (epoch 0) carries only the policy's BOPs, before the network is even built, so that the
scheduler stops an over-budget trial before a single training step. Then the QAT protocol
(:class:`gmpq_ray.core.train.qat.QATRun`) runs and each epoch reports the same metrics as the
differentiable trial, with a checkpoint to resume from.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from gmpq_ray.core.cost.repair import repair_policy
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.train.loop import NonFiniteLossError
from gmpq_ray.core.train.qat import QATConfig, QATRun
from gmpq_ray.search.metrics import (
    ARGMAX_BOPS_G,
    BUDGET_BOPS_G,
    EPOCH,
    ERROR,
    EXPECTED_BOPS_G,
    FILL_STEPS,
    POLICY_BOPS_G,
    REPAIR_STEPS,
    TRIAL_METRICS,
)
from gmpq_ray.search.trial_setup import (
    POLICY_FILE,
    STATE_FILE,
    TrialContext,
    choose_quantizer_kernels,
    prepare_trial,
    training_pixels,
)


class SamplingSpace:
    """Optuna define-by-run space: one categorical per layer for weight and activation bits.

    A class rather than a closure: Tune pickles the searcher, space included, with its state.
    """

    def __init__(self, layers: list[str], w_bits: list[int], a_bits: list[int]) -> None:
        self.layers, self.w_bits, self.a_bits = list(layers), list(w_bits), list(a_bits)

    def __call__(self, trial) -> None:
        for name in self.layers:
            trial.suggest_categorical(f"w_bits/{name}", self.w_bits)
            trial.suggest_categorical(f"a_bits/{name}", self.a_bits)


def sampling_space(job) -> SamplingSpace:
    """The sampling search space of a job."""
    space = job.space
    return SamplingSpace(space.cost_model().searched, space.w_bits, space.a_bits)


def proposed_policy(config: dict[str, Any], job) -> Policy:
    """The policy in a trial's config (nested ``{"w_bits": {layer: b}, "a_bits": {...}}``)."""
    space = job.space
    layers = space.cost_model().searched
    return Policy(
        model=space.model,
        layers={name: LayerBits(int(config["w_bits"][name]), int(config["a_bits"][name])) for name in layers},
        fixed_layers={name: space.fixed for name in space.cost_model().fixed_layers},
        input_size=space.input_size,
    )


def policy_to_evaluate(config: dict[str, Any], job) -> tuple[Policy, Policy]:
    """(proposal, policy the trial evaluates): the repaired proposal in ``repair`` mode."""
    space = job.space
    proposal = proposed_policy(config, job)
    policy = proposal
    if job.search.proposal_mode == "repair":
        policy = repair_policy(proposal, space.cost_model().macs, space.bops_limit, space.w_bits, space.a_bits,
                               source="proposal")
    cost = space.cost_model()
    policy.bops = cost.policy_bops(policy, space.fixed).to_dict(space.bops_limit)
    return proposal, policy


def sampling_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable of the sampling-based search (see module docstring)."""
    job = context.job
    space = job.space
    cost = space.cost_model()
    proposal, policy = policy_to_evaluate(config, job)
    bops_g = policy.bops["searched_g"]
    nan = {name: float("nan") for name in TRIAL_METRICS}
    steps = {key: float(policy.provenance.get(key, 0)) for key in (REPAIR_STEPS, FILL_STEPS)}
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        tune.report({**nan, EPOCH: 0, ARGMAX_BOPS_G: cost.policy_bops(proposal, space.fixed)[0] / 1e9,
                     EXPECTED_BOPS_G: bops_g, POLICY_BOPS_G: bops_g, BUDGET_BOPS_G: bops_g, **steps})

    setup = prepare_trial(context, tune.get_context().get_trial_id())
    data, device = setup.data, setup.device
    qat = QATConfig(epochs=job.search.epochs, lr=job.search.qat_lr, batch_size=job.data.batch_size)
    choose_quantizer_kernels(job, training_pixels(len(data.train), job.search.epochs, data.image_size), device)
    run = QATRun(setup.teacher, space.model, policy, data, qat, setup.seed % 2**31, device, space.fixed)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            run.load_state_dict(torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True))
    try:
        for epoch, evaluation, train_loss in run.epochs():
            metrics = {
                "epoch": epoch, "loss": train_loss, "ce": train_loss, "attr_loss": 0.0,
                "accuracy": evaluation.accuracy, "arc": evaluation.arc,
                "expected_bops_g": bops_g, "argmax_bops_g": cost.policy_bops(proposal, space.fixed)[0] / 1e9,
                "argmax_accuracy": evaluation.accuracy, **steps,
                "policy_bops_g": bops_g, "policy_accuracy": evaluation.accuracy, "policy_arc": evaluation.arc,
                "score": evaluation.accuracy + job.search.arc_weight * evaluation.arc, "budget_bops_g": bops_g,
            }
            with tempfile.TemporaryDirectory() as folder:
                torch.save(run.state_dict(), os.path.join(folder, STATE_FILE))
                policy.save(os.path.join(folder, POLICY_FILE))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    except NonFiniteLossError as err:
        tune.report({**nan, EPOCH: run.epoch, BUDGET_BOPS_G: bops_g, ERROR: str(err)})
