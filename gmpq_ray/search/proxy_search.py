"""``search.method: proxy``: the training-free search, its scorings fanned out as Ray tasks.

One Ray Tune trial runs one *solve*: it calibrates the FP teacher's activation quantizers on a
few batches, puts the calibrated teacher and the batches in the object store once, scores the
(layer, bits) choices with the job's proxy in Ray tasks (:func:`gmpq_ray.core.proxy.score_layers`,
a share of the layers each, ``resources.cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs per
task; a one-pass proxy such as FIT in a single task), solves the allocation exactly under the
BOPs limit (:func:`gmpq_ray.core.proxy.solve_allocation`), evaluates the policy calibrated but
not trained, and reports the same metrics as the other trials with the policy as a checkpoint.
Going through Tune and Ray Tune's ``OptunaSearch`` gives the proxy search the same run folder
as the other methods (``trials.csv``, ``study.db`` with one Optuna trial per solve, resume,
Ctrl-C); ``proxy_scores.csv`` adds every layer's damage per choice.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import ray
import torch
from ray import tune

from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import LayerBits, Policy, write_text_atomic
from gmpq_ray.core.proxy import calibrated_probe_model, get_proxy, probe_model, score_layers, solve_allocation
from gmpq_ray.core.proxy.probe import Batch
from gmpq_ray.core.proxy.scores import Scores
from gmpq_ray.core.proxy.solver import choice_bops
from gmpq_ray.core.quant.calibration import calibrate
from gmpq_ray.core.quant.convert import apply_policy
from gmpq_ray.core.train.evaluation import evaluate_with_arc
from gmpq_ray.runtime import StopSignals
from gmpq_ray.search.job import Job
from gmpq_ray.search.optuna_search import RecordingOptunaSearch
from gmpq_ray.search.trial_setup import POLICY_FILE, TrialContext, prepare_trial, trial_device
from gmpq_ray.search.tune_fit import (
    STUDY_FILE,
    TUNE_DIR,
    StagingClaimed,
    experiment_in_its_own_second,
    save_state_every_step,
    trainable,
)

if TYPE_CHECKING:
    from gmpq_ray.search.methods import SearchMethod

PROXY_SCORES_FILE = "proxy_scores.csv"
# What a proxy trial reports besides the metrics every trial reports (TRIAL_METRICS).
PROXY_METRICS = ("proxy_damage", "scoring_s", "solve_s", "scoring_tasks")


def scoring_batches(job: Job, data) -> list[Batch]:
    """The few batches the proxy calibrates and scores on: the first ``proxy_batches`` of the
    seeded training loader, or (``proxy_data: noise``) standard normal images without labels."""
    search = job.search
    if search.proxy_data == "noise":
        generator = torch.Generator().manual_seed(search.seed)
        shape = (job.data.batch_size, data.in_channels, data.image_size, data.image_size)
        return [(torch.randn(shape, generator=generator), None) for _ in range(search.proxy_batches)]
    train_loader, _ = data.loaders(job.data.batch_size, seed=search.seed)
    return [(images, labels) for _, (images, labels) in zip(range(search.proxy_batches), train_loader)]


def _probe_structure(job: Job, num_classes: int, in_channels: int, layers: list[str]) -> torch.nn.Module:
    space = job.space
    return probe_model(create_model(space.model, num_classes, in_channels, space.cifar_stem), layers)


@ray.remote(max_retries=1)
def _score_task(job: Job, num_classes: int, in_channels: int, probe_state: dict, batches: list[Batch],
                layers: list[str], share: list[str], candidates: list[LayerBits]) -> Scores:
    torch.set_num_threads(max(1, int(job.resources.cpus_per_trial)))
    model = _probe_structure(job, num_classes, in_channels, layers)
    model.load_state_dict(probe_state)
    device = trial_device(job)
    batches = [(images.to(device), None if labels is None else labels.to(device)) for images, labels in batches]
    return score_layers(job.search.proxy, model.to(device), job.space.model, batches, share, candidates,
                        job.search.proxy_precision)


def task_shares(layers: list[str], one_pass: bool, slots: int) -> list[list[str]]:
    """How the layers are split over scoring tasks: all in one for a one-pass proxy, else about
    two tasks per slot that can run at once, layers dealt round-robin (early layers, with more
    of the network downstream, cost more)."""
    if one_pass:
        return [list(layers)]
    count = max(1, min(len(layers), 2 * slots))
    return [layers[i::count] for i in range(count)]


def score_with_ray_tasks(job: Job, teacher: torch.nn.Module, num_classes: int, in_channels: int,
                         batches: list[Batch], layers: list[str], candidates: list[LayerBits]) -> tuple[Scores, int]:
    """Every (layer, candidate) damage, scored by Ray tasks; returns the scores and the task count."""
    probe_state = calibrated_probe_model(teacher, layers, batches).state_dict()
    state_ref, batches_ref = ray.put(probe_state), ray.put(batches)  # once, shared by every task
    resources = job.resources
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // resources.cpus_per_trial))
    shares = task_shares(layers, get_proxy(job.search.proxy).one_pass, slots)
    # Outside the trial's placement group (Tune would capture them in it): they take the cluster's CPUs.
    task = _score_task.options(num_cpus=resources.cpus_per_trial, num_gpus=resources.gpus_per_trial, scheduling_strategy="DEFAULT")
    futures = [task.remote(job, num_classes, in_channels, state_ref, batches_ref, layers, share, candidates) for share in shares]
    scores: Scores = {}
    for part in ray.get(futures):
        scores.update(part)
    return {name: scores[name] for name in layers}, len(shares)


def scores_table(scores: Scores, macs: dict[str, int]) -> pd.DataFrame:
    """One row per (layer, w_bits, a_bits): its BOPs (G) and the proxy's damage."""
    return pd.DataFrame([{"layer": name, "w_bits": bits.w_bits, "a_bits": bits.a_bits,
                          "bops_g": choice_bops(name, bits, macs) / 1e9, "damage": value}
                         for name, row in scores.items() for bits, value in row.items()])


def proxy_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable of the proxy search: score, solve, evaluate, report once."""
    # One solve, seeded by the search's seed alone.
    setup = prepare_trial(context, trial_id=None)
    job, data, device, teacher = setup.job, setup.data, setup.device, setup.teacher.eval()
    space = job.space
    cost = space.cost_model()
    layers = list(cost.searched)
    candidates = [LayerBits(w, a) for w in space.w_bits for a in space.a_bits]
    batches = scoring_batches(job, data)

    start = time.perf_counter()
    scores, tasks = score_with_ray_tasks(job, teacher, data.num_classes, data.in_channels, batches, layers, candidates)
    scoring_s = time.perf_counter() - start
    start = time.perf_counter()
    allocation = solve_allocation(scores, cost.macs, space.bops_limit, space.w_bits, space.a_bits)
    solve_s = time.perf_counter() - start

    policy = Policy(space.model, allocation.layers, {name: space.fixed for name in cost.fixed_layers}, space.input_size)
    policy_bops = cost.policy_bops(policy, space.fixed)
    policy.bops = policy_bops.to_dict(space.bops_limit)
    # The chosen policy as the proxy left it: calibrated like QAT starts, not trained.
    train_loader, val_loader = data.loaders(job.data.batch_size, seed=job.search.seed)
    model = apply_policy(copy.deepcopy(teacher), policy, space.fixed).to(device)
    calibrate(model, train_loader, device)
    evaluation = evaluate_with_arc(model, teacher.to(device), space.model, val_loader, device)
    bops_g = policy_bops.searched / 1e9
    metrics = {
        "epoch": 1, "loss": evaluation.loss, "ce": evaluation.loss, "attr_loss": 0.0,
        "accuracy": evaluation.accuracy, "arc": evaluation.arc,
        "expected_bops_g": bops_g, "argmax_bops_g": bops_g, "policy_bops_g": bops_g,
        "policy_accuracy": evaluation.accuracy, "policy_arc": evaluation.arc,
        "score": evaluation.accuracy + job.search.arc_weight * evaluation.arc, "budget_bops_g": bops_g,
        "proxy_damage": allocation.damage, "scoring_s": scoring_s, "solve_s": solve_s, "scoring_tasks": tasks,
    }
    with tempfile.TemporaryDirectory() as folder:
        policy.save(os.path.join(folder, POLICY_FILE))
        scores_table(scores, dict(cost.macs)).to_csv(os.path.join(folder, PROXY_SCORES_FILE), index=False)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


class ProxyRecordingSearch(RecordingOptunaSearch):
    """Records, besides the common metrics, the proxy, its damage and the scoring/solve seconds."""

    def __init__(self, proxy: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.proxy = proxy

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and trial_id not in self._completed_trials and result:
            ot_trial.set_user_attr("proxy", self.proxy)
            for name in PROXY_METRICS:
                value = result.get(name)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    ot_trial.set_user_attr(name, float(value))
        return super().on_trial_complete(trial_id, result, error)


def proxy_fit(method: SearchMethod, job: Job, out: Path, teacher_state: dict[str, torch.Tensor], signals: StopSignals,
              resume: bool) -> tune.ResultGrid:
    """The proxy search's Tune experiment (one trial, one solve, no scheduler) in ``out/tune``;
    what :meth:`gmpq_ray.search.methods.proxy.ProxyMethod.fit` runs."""
    save_state_every_step()
    if resume:
        tuner = tune.Tuner.restore(str(out / TUNE_DIR), trainable(method, job, teacher_state),
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable(method, job, teacher_state),
            param_space=method.param_space(job),
            tune_config=tune.TuneConfig(search_alg=method.searcher(job, out / STUDY_FILE), num_samples=1, max_concurrent_trials=1),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(out), checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                      failure_config=tune.FailureConfig(max_failures=job.search.max_failures),
                                      callbacks=[StagingClaimed()], verbose=1),
        )
    with experiment_in_its_own_second():
        grid = signals.tune_fit(tuner)
    for result in grid:
        if result.checkpoint is not None and not result.error:
            with result.checkpoint.as_directory() as folder:
                scores = Path(folder) / PROXY_SCORES_FILE
                if scores.is_file():
                    write_text_atomic(out / PROXY_SCORES_FILE, scores.read_text())
    return grid
