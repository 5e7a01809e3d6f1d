"""The run folder of a finetune: may it receive a run, does a resume continue the same run, the outputs.

Layout (each file written atomically):

* ``policy.json`` and ``job.yaml``: what is finetuned, and how (``--resume`` compares them);
* ``train/``: the Ray Train run, with a checkpoint per epoch (``epoch_NNNN/state.pt``);
* ``metrics.csv``: one row an epoch (train loss and top-1, validation loss, top-1, top-5, lr);
* ``final_metrics.json``: top-1, top-5 and the policy's BOPs (searched layers and total, as
  :meth:`~gmpq_ray.core.cost.bops.CostModel.policy_bops` and ``gmpq bops --policy`` count them);
  ``top1`` / ``top5`` are on ``split``: the last epoch's validation split, or with the job's
  ``report_split: test`` its held-out test split where the data set has one (``val_top1`` /
  ``val_top5`` keep the validation numbers);
* ``model.pt``: the finetuned deployment model's state dict (load it into
  ``apply_policy(create_model(...), policy)``).
* with ``export: true`` in the job, ``model.onnx`` and ``export_check.json``: the finetuned model
  as ONNX with explicit Q/DQ and its check in ONNX Runtime (:mod:`gmpq_ray.export`).

This module imports no Ray.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from gmpq_ray.core.atomic import save_torch_atomic
from gmpq_ray.core.config import load_yaml
from gmpq_ray.core.cost.bops import format_bops
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.pretrained import load_torch_file
from gmpq_ray.core.policy import Policy, write_text_atomic
from gmpq_ray.finetune.job import FinetuneJob, job_from_dict, resume_conflicts
from gmpq_ray.runtime import check_new_output

RUN_NAME = "train"
RUN_KIND = "finetune"
POLICY_FILE, JOB_FILE = "policy.json", "job.yaml"
METRICS_FILE, FINAL_FILE, MODEL_FILE = "metrics.csv", "final_metrics.json", "model.pt"
EXPORT_FILE = "model.onnx"
STATE_FILE, CHECKPOINT_PREFIX = "state.pt", "epoch_"


def checkpoint_name(epoch: int) -> str:
    """The folder name of epoch ``epoch``'s checkpoint (so the newest sorts last)."""
    return f"{CHECKPOINT_PREFIX}{epoch:04d}"


def load_state(folder: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The ``state.pt`` of a checkpoint folder; an unreadable one is a :class:`UserInputError`."""
    path = Path(folder) / STATE_FILE

    def unreadable(err: BaseException) -> str:  # a truncated or foreign file: say which, not how torch failed
        return f"checkpoint {path} is unreadable ({type(err).__name__}); pass --overwrite to start the finetune over"

    state = load_torch_file(path, unreadable, map_location=device)
    try:
        missing = {"model", "optimizer", "epoch", "history"} - set(state)
    except TypeError as err:
        raise UserInputError(unreadable(err)) from None
    if missing:
        raise UserInputError(f"checkpoint {path} lacks {sorted(missing)}; pass --overwrite to start the finetune over")
    return state


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced. ``finished`` is False when the run stopped early
    (``stop_after_epochs``); then ``final_metrics.json`` and ``model.pt`` are not written yet.
    ``top1`` / ``top5``: the last epoch's, on the split ``final_metrics.json`` names.
    ``export`` holds the ONNX export's result when the job says ``export: true``."""

    output_dir: Path
    finished: bool
    history: pd.DataFrame
    top1: float
    top5: float
    bops_searched: int
    bops_total: int
    seconds: float
    export: Any = None  # the ExportResult of gmpq_ray.export when the job asks for the ONNX export


def latest_checkpoint(out: Path) -> Path | None:
    """The newest ``epoch_NNNN`` checkpoint folder of the run in ``out`` (None if there is none)."""
    folders = sorted((out / RUN_NAME).glob(f"{CHECKPOINT_PREFIX}*")) if (out / RUN_NAME).is_dir() else []
    return folders[-1] if folders else None


def check_output(output: str | Path, policy: Policy, job: FinetuneJob, overwrite: bool, resume: bool,
                 inputs: Iterable[str | Path | None] = ()) -> Path:
    """Check that ``output`` may receive this run (and that a resume continues the same run); changes nothing."""
    if resume and overwrite:
        raise UserInputError("give --resume or --overwrite, not both")
    if resume:
        out = Path(output).resolve()
        _check_resume(out, policy, job)
        return out
    out = Path(output).resolve() if str(output).strip() else None
    if out is not None and not overwrite and out.is_dir() and any(out.iterdir()):
        checkpoint = latest_checkpoint(out)
        if checkpoint is not None and not (out / FINAL_FILE).is_file():
            raise UserInputError(f"--output {out} holds an interrupted finetune (last checkpoint {checkpoint.name}); "
                                 f"pass --resume to continue it, or --overwrite to start over")
    return check_new_output(output, RUN_KIND, overwrite, inputs)


def _check_resume(out: Path, policy: Policy, job: FinetuneJob) -> None:
    if not (out / JOB_FILE).is_file() or not (out / POLICY_FILE).is_file():
        raise UserInputError(f"--resume: {out} is not a finetune run folder (no {JOB_FILE} or {POLICY_FILE})")
    saved_policy = Policy.load(out / POLICY_FILE)
    if (saved_policy.model, saved_policy.layers, saved_policy.fixed_layers) != (policy.model, policy.layers, policy.fixed_layers):
        raise UserInputError(f"--resume: the policy differs from the one the run in {out} finetunes")
    saved_job = job_from_dict(load_yaml(out / JOB_FILE), f"{out / JOB_FILE}")
    conflicts = resume_conflicts(saved_job, job)
    if conflicts:
        raise UserInputError(f"--resume: the job differs from the run in {out} in {conflicts} "
                             f"(a resume may change only epochs, stop_after_epochs and resources)")
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        raise UserInputError(f"--resume: {out} holds no checkpoint to resume from")
    load_state(checkpoint)  # unreadable: refused here, before any worker starts


def write_outputs(out: Path, job: FinetuneJob, bops: tuple[int, int], log: Callable[[str], None], seconds: float) -> FinetuneResult:
    """Write ``metrics.csv`` from the latest checkpoint and, once every epoch is done,
    ``final_metrics.json`` and ``model.pt``; log the summary."""
    checkpoint = latest_checkpoint(out)
    state = load_state(checkpoint)
    history = pd.DataFrame(state["history"])
    write_text_atomic(out / METRICS_FILE, history.to_csv(index=False))
    last = state["history"][-1]
    finished = state["epoch"] >= job.epochs
    # The reported split: the held-out test split where the job asks for it and the last epoch evaluated it.
    split = "test" if pd.notna(last.get("test_top1", float("nan"))) else "val"
    top1, top5 = (last["test_top1"], last["test_top5"]) if split == "test" else (last["top1"], last["top5"])
    if finished:
        final = {
            "name": job.name, "model": job.model, "epochs": state["epoch"], "top1": top1, "top5": top5, "split": split,
            "val_top1": last["top1"], "val_top5": last["top5"],
            "val_loss": last["val_loss"], "bops_searched": bops[0], "bops_total": bops[1],
            "bops_searched_g": bops[0] / 1e9, "bops_total_g": bops[1] / 1e9,
            "input_size": job.deployment_input_size(), "workers": last["workers"], "policy": str(out / POLICY_FILE),
        }
        save_torch_atomic(state["model"], out / MODEL_FILE)
        write_text_atomic(out / FINAL_FILE, json.dumps(final, indent=2) + "\n")
        log(f"\n== finetune {job.name}: {state['epoch']} epoch(s), {seconds:.0f} s ==\n"
            f"{history.to_string(index=False, float_format=lambda v: f'{v:.4g}')}\n\n"
            f"top-1 {top1:.4f}, top-5 {top5:.4f} on the {split} split, BOPs {format_bops(bops[0])} searched layers, "
            f"{format_bops(bops[1])} total\nresults written to {out}")
    else:
        log(f"finetune {job.name} stopped after epoch {state['epoch']} of {job.epochs} (stop_after_epochs); "
            f"run it again with --resume to continue from {checkpoint}")
    return FinetuneResult(out, finished, history, top1, top5, bops[0], bops[1], seconds)
