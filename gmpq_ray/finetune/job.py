"""Finetune jobs: the YAML of ``gmpq finetune``, parsed into a typed, validated dataclass.

Example (``jobs/finetune_imagenet.yaml``)::

    name: resnet18_imagenet
    searchspace: ../searchspaces/resnet18.yaml   # or model: resnet18 (+ cifar_stem, fixed_bits)
    data: {name: imagenet, root: /data/imagenet, batch_size: 256, num_workers: 8}
    fp_state_dict: /models/resnet18_fp.pt         # torchvision-style FP weights, loaded locally
    epochs: 30
    lr: 0.01
    distill: true
    workers: 8
    gpus_per_worker: 1
    export: true                                  # also write model.onnx (gmpq export), needs the [export] extra

This module imports no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gmpq_ray.core.config import (
    MAX_CLASSES,
    MAX_IMAGE_SIZE,
    config_to_dict,
    key_path,
    load_yaml,
    parse,
    require,
    require_name,
    require_seed,
)
from gmpq_ray.core.cost.searchspace import SearchSpace
from gmpq_ray.core.data.bundle import DataConfig
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.pretrained import is_weights_name
from gmpq_ray.core.models.registry import model_entry
from gmpq_ray.core.policy import LayerBits, check_bits

# Fields a resumed run may change: how long it runs and on what, not what it computes.
RESUMABLE_CHANGES = ("epochs", "stop_after_epochs", "workers", "cpus_per_worker", "gpus_per_worker", "max_failures", "export")


@dataclass
class FinetuneJob:
    """A finetune job: which model, which data, from which FP weights, how to train, on what."""

    fp_state_dict: str
    name: str = "finetune"
    model: str | None = None
    searchspace: str | None = None
    cifar_stem: bool = False
    fixed_bits: int = 8
    num_classes: int | None = None
    input_size: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 1
    lr: float = 0.01
    weight_decay: float = 4e-5
    momentum: float = 0.9
    distill: bool = False
    distill_temperature: float = 1.0
    distill_weight: float = 0.5
    calibration_batches: int = 4
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 0
    stop_after_epochs: int | None = None
    seed: int = 0
    export: bool = False
    # The split final_metrics.json's top1 / top5 are on. Every epoch is evaluated on val
    # (metrics.csv); with "test", the last epoch is also evaluated on the data set's held-out
    # test split, where it has one (else val: final_metrics.json's "split" says which).
    report_split: Literal["val", "test"] = "val"

    def validate(self, where: str) -> None:
        require_name(self.name, f"{key_path(where)}name")
        require((self.model is None) != (self.searchspace is None), where, "give either model or searchspace (not both)")
        if self.model is not None:
            try:
                model_entry(self.model)
            except UserInputError as err:
                raise UserInputError(f"{key_path(where)}model: {err}") from None
        check_bits(self.fixed_bits, f"{key_path(where)}fixed_bits")
        require(self.num_classes is None or self.num_classes >= 2, f"{key_path(where)}num_classes", "must be at least 2")
        require(self.num_classes is None or self.num_classes <= MAX_CLASSES, f"{key_path(where)}num_classes",
                f"must be at most {MAX_CLASSES}")
        require(self.input_size is None or self.input_size >= 8, f"{key_path(where)}input_size", "must be at least 8")
        require(self.input_size is None or self.input_size <= MAX_IMAGE_SIZE, f"{key_path(where)}input_size",
                f"must be at most {MAX_IMAGE_SIZE}, got {self.input_size}")
        require(self.epochs >= 1, f"{key_path(where)}epochs", "must be at least 1")
        require(self.lr > 0, f"{key_path(where)}lr", "must be positive")
        require(self.weight_decay >= 0, f"{key_path(where)}weight_decay", "must not be negative")
        require(0 <= self.momentum < 1, f"{key_path(where)}momentum", "must be in [0, 1)")
        require(self.distill_temperature > 0, f"{key_path(where)}distill_temperature", "must be positive")
        require(0 <= self.distill_weight <= 1, f"{key_path(where)}distill_weight", "must be between 0 and 1")
        require(self.calibration_batches >= 1, f"{key_path(where)}calibration_batches", "must be at least 1")
        require_seed(self.seed, f"{key_path(where)}seed")
        self.check_resources(where)
        require(self.stop_after_epochs is None or self.stop_after_epochs >= 1, f"{key_path(where)}stop_after_epochs",
                "must be at least 1")
        if self.export:
            from gmpq_ray.export._deps import EXTRA_HINT, extra_installed

            require(extra_installed(), f"{key_path(where)}export", f"needs onnx and onnxruntime: {EXTRA_HINT}")

    def check_resources(self, where: str) -> None:
        """Checks of the fields command-line flags may override."""
        require(self.workers >= 1, f"{key_path(where)}workers", f"must be at least 1, got {self.workers}")
        require(self.cpus_per_worker > 0, f"{key_path(where)}cpus_per_worker", "must be positive")
        require(self.gpus_per_worker >= 0, f"{key_path(where)}gpus_per_worker", "must not be negative")
        require(self.max_failures >= 0, f"{key_path(where)}max_failures", "must not be negative")

    @property
    def fixed(self) -> LayerBits:
        return LayerBits(self.fixed_bits, self.fixed_bits)

    def deployment_input_size(self) -> int:
        """The resolution BOPs are counted at: ``input_size``, else the data's image size."""
        return self.input_size or self.data.resolved_image_size


def load_finetune_job(path: str | Path) -> FinetuneJob:
    """Read and validate a finetune job; paths in it are relative to the job file.

    A ``searchspace`` gives the model, ``fixed_bits`` and the deployment ``input_size`` (unless
    the job sets it) and is then replaced by them, so the resolved job stands on its own.
    """
    path = Path(path)
    job = parse(FinetuneJob, load_yaml(path), str(path))
    base = path.resolve().parent
    if job.searchspace is not None:
        space_path = (base / job.searchspace).resolve()
        if not space_path.is_file():
            raise UserInputError(f"{path}: searchspace file {space_path} does not exist")
        space = SearchSpace.load(space_path)
        job.model, job.searchspace, job.fixed_bits = space.model, None, space.fixed_bits
        job.input_size = job.input_size or space.input_size
    if not is_weights_name(job.fp_state_dict):
        fp_state = (base / Path(job.fp_state_dict).expanduser()).resolve()
        if not fp_state.is_file():
            raise UserInputError(f"{path}: fp_state_dict {fp_state} does not exist")
        job.fp_state_dict = str(fp_state)
    job.data.resolve_paths(base)
    return job


def job_to_dict(job: FinetuneJob) -> dict[str, Any]:
    """Plain data of a resolved job (what a run folder keeps as ``job.yaml``)."""
    return config_to_dict(job)


def job_from_dict(data: dict[str, Any], where: str) -> FinetuneJob:
    """Inverse of :func:`job_to_dict`."""
    return parse(FinetuneJob, data, where)


def resume_conflicts(saved: FinetuneJob, given: FinetuneJob) -> list[str]:
    """Fields in which ``given`` differs from the interrupted run's job, beyond those a resume may change."""
    before, after = job_to_dict(saved), job_to_dict(given)
    return [name for name in before if name not in RESUMABLE_CHANGES and before[name] != after[name]]
