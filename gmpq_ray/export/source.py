"""What an export starts from: a finetune run folder, or a policy plus a state dict and a job.

A finetune run folder (:mod:`gmpq_ray.finetune.outputs`) holds ``policy.json``, ``job.yaml`` and,
once every epoch is done, ``model.pt``: the state dict of ``apply_policy(create_model(...),
policy)`` with its calibrated activation clips. The job says which model, stem and data; the
validation split of that data is what the check runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.pretrained import load_torch_file
from gmpq_ray.core.models.registry import create_model, model_entry
from gmpq_ray.core.policy import Policy
from gmpq_ray.core.quant.convert import apply_policy, default_fixed_layers
from gmpq_ray.finetune.job import FinetuneJob, job_from_dict, load_finetune_job
from gmpq_ray.finetune.outputs import JOB_FILE, MODEL_FILE, POLICY_FILE


@dataclass
class ExportSource:
    """A quantized network with its weights, its policy, BOPs and validation images."""

    model: nn.Module
    policy: Policy
    images: torch.Tensor
    labels: torch.Tensor | None
    input_shape: tuple[int, int, int]
    bops: tuple[int, int]
    input_size: int


def load_run_folder(run_dir: str | Path, max_images: int | None = 1000) -> ExportSource:
    """The finetuned network of a finetune run folder (its ``policy.json``, ``job.yaml``, ``model.pt``)."""
    run_dir = Path(run_dir)
    if not (run_dir / POLICY_FILE).is_file() or not (run_dir / JOB_FILE).is_file():
        raise UserInputError(f"{run_dir} is not a finetune run folder (no {POLICY_FILE} or {JOB_FILE})")
    if not (run_dir / MODEL_FILE).is_file():
        raise UserInputError(f"{run_dir} holds no final weights ({MODEL_FILE}): the finetune has not finished; "
                             f"finish it with gmpq finetune --resume first")
    policy = Policy.load(run_dir / POLICY_FILE)
    try:
        job_data = yaml.safe_load((run_dir / JOB_FILE).read_text())
    except yaml.YAMLError:
        raise UserInputError(f"{run_dir / JOB_FILE}: not valid YAML") from None
    job = job_from_dict(job_data, str(run_dir / JOB_FILE))
    return _build(job, policy, _load_state(run_dir / MODEL_FILE), str(run_dir / MODEL_FILE), max_images)


def load_policy_and_state(
    state_path: str | Path, policy: Policy | str | Path, job: FinetuneJob | str | Path, max_images: int | None = 1000,
) -> ExportSource:
    """A quantized network from a state dict (``model.pt``, or a finetune checkpoint's ``state.pt``),
    its policy, and the finetune job that names the model and the validation data."""
    policy = policy if isinstance(policy, Policy) else Policy.load(policy)
    job = job if isinstance(job, FinetuneJob) else load_finetune_job(job)
    return _build(job, policy, _load_state(Path(state_path)), str(state_path), max_images)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserInputError(f"{path}: file not found")
    state = load_torch_file(path, lambda err: f"{path}: not a loadable PyTorch state dict ({type(err).__name__})")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a finetune checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(f"{path}: holds no state dict of tensors")
    return state


def _shape_of(state: dict[str, torch.Tensor], key: str, source: str, model: str) -> torch.Size:
    if key not in state:
        raise UserInputError(f"{source}: the weights do not match the policy's model {model!r} (no {key})")
    return state[key].shape


def _build(job: FinetuneJob, policy: Policy, state: dict[str, torch.Tensor], source: str, max_images: int | None) -> ExportSource:
    if policy.model != job.model:
        raise UserInputError(f"the policy is for {policy.model!r}, the job's model is {job.model!r}")
    # Classes and input channels from the weights themselves, so a mismatch is named below.
    skeleton = create_model(job.model, cifar_stem=job.cifar_stem, device="meta")
    first = default_fixed_layers(skeleton)[0]
    in_channels = _shape_of(state, f"{first}.weight", source, job.model)[1]
    num_classes = _shape_of(state, f"{model_entry(job.model).classifier}.weight", source, job.model)[0]
    model = create_model(job.model, num_classes, in_channels, job.cifar_stem)
    apply_policy(model, policy, job.fixed)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise UserInputError(f"{source}: the weights do not match the policy ({detail})") from None
    model.eval()
    data = job.data.load()
    if (data.num_classes, data.in_channels) != (num_classes, in_channels):
        raise UserInputError(f"{source}: the weights have {num_classes} classes and {in_channels} input channel(s), "
                             f"data set {job.data.name} {data.num_classes} and {data.in_channels}")
    images, labels = _first_images(data.val, max_images)
    size = job.deployment_input_size()
    cost = CostModel.for_model(job.model, size, num_classes, in_channels, job.cifar_stem, list(policy.fixed_layers) or None)
    return ExportSource(model, policy, images, labels, tuple(images.shape[1:]), cost.policy_bops(policy, job.fixed), size)


def _first_images(dataset, max_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``max_images`` (all: None) images and labels of ``dataset``, in order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=False)
    images, labels, count = [], [], 0
    for batch, target in loader:
        images.append(batch)
        labels.append(target)
        count += batch.shape[0]
        if max_images is not None and count >= max_images:
            break
    if not images:
        raise UserInputError("the validation split is empty: nothing to check the export on")
    limit = max_images if max_images is not None else count
    return torch.cat(images)[:limit], torch.cat(labels)[:limit]
