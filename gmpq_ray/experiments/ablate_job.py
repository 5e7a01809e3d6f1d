"""The dataset-transfer ablation job: architectures x small data sets, one large target.

Example (``jobs/dataset_transfer_quickstart.yaml``)::

    name: transfer-quickstart
    architectures:
      - {label: digits CNN, searchspace: ../searchspaces/digits_cnn.yaml}
    search_datasets:                      # where policies are searched (columns of the table)
      - {label: digits 0-4, data: {name: digits, classes: [0, 1, 2, 3, 4]}}
      - {label: digits 30%, data: {name: digits, train_fraction: 0.3}}
    teacher: {epochs: 8, lr: 0.05}        # the FP teacher of each search, on its small data set
    search: {epochs: 6, num_trials: 2, ...}
    resources: {cpus_per_trial: 1}
    target:
      data: {name: digits}                # where every winning policy is finetuned and evaluated
      fp_epochs: 8                        # train the FP model on it (or give fp_state_dict per architecture)
      finetune: {epochs: 3, distill: true, workers: 2}

Every (architecture, data set) pair becomes a search job (the architecture's search space, the
data set, and the shared teacher/search/resources sections) and a finetune job (the target
data, the architecture's FP weights, the ``target.finetune`` settings). All of them are built
and validated here, before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmpq_ray.core.config import config_to_dict, key_path, load_yaml, parse, require, require_name, short_repr
from gmpq_ray.core.data.bundle import DataConfig
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.pretrained import is_weights_name
from gmpq_ray.finetune.job import FinetuneJob
from gmpq_ray.search.job import Job, ParamSpec, ResourcesConfig, SearchConfig, TeacherConfig, parse_job

# Labels become folder names and part of each pair's job name.
MAX_LABEL_LENGTH = 60
# Set per pair by the ablation, so a job may not set them under target.finetune.
_PAIR_FIELDS = ("name", "model", "searchspace", "data", "fp_state_dict", "fixed_bits", "cifar_stem", "input_size",
                "report_split")


@dataclass
class ArchitectureConfig:
    """One row of the table: an architecture's search space and, optionally, its FP weights on the target."""

    label: str
    searchspace: Any  # a search space YAML path (relative to the job) or an inline mapping, as in a search job
    fp_state_dict: str | None = None


@dataclass
class SearchDatasetConfig:
    """One column of the table: a small data set policies are searched on."""

    label: str
    data: DataConfig


@dataclass
class TargetConfig:
    """The large data set every policy is finetuned and evaluated on."""

    data: DataConfig
    fp_epochs: int = 0
    fp_lr: float = 0.05
    finetune: dict[str, Any] = field(default_factory=dict)
    # Per architecture, also finetune the best uniform policy and one random feasible policy at
    # the first search's limit by the same protocol: what each searched column is read against.
    baselines: bool = True

    def validate(self, where: str) -> None:
        require(self.fp_epochs >= 0, f"{key_path(where)}fp_epochs", "must not be negative")
        require(self.fp_lr > 0, f"{key_path(where)}fp_lr", "must be positive")
        taken = sorted(set(self.finetune) & set(_PAIR_FIELDS))
        require(not taken, f"{key_path(where)}finetune", f"{taken} are set per architecture and data set by the ablation")


@dataclass
class AblationConfig:
    """The YAML of ``gmpq ablate``: its shared search sections are typed here, each pair's job is built from them."""

    name: str
    architectures: list[ArchitectureConfig]
    search_datasets: list[SearchDatasetConfig]
    target: TargetConfig
    # Shared by every pair's search job, parsed and checked here once (errors name the section).
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def validate(self, where: str) -> None:
        require_name(self.name, f"{key_path(where)}name")
        require(bool(self.architectures), f"{key_path(where)}architectures", "needs at least one architecture")
        require(bool(self.search_datasets), f"{key_path(where)}search_datasets", "needs at least one data set")
        for kind, items in (("architectures", self.architectures), ("search_datasets", self.search_datasets)):
            for item in items:
                require(0 < len(item.label) <= MAX_LABEL_LENGTH, f"{key_path(where)}{kind}",
                        f"a label must have 1 to {MAX_LABEL_LENGTH} characters, got {short_repr(item.label)}")
            labels = [slug(item.label) for item in items]
            require(len(set(labels)) == len(labels), f"{key_path(where)}{kind}",
                    f"labels must differ (as folder names): {short_repr(labels)}")


@dataclass
class Pair:
    """One (architecture, small data set) cell: its search job and its finetune job."""

    architecture: str
    dataset: str
    search: Job
    finetune: FinetuneJob

    @property
    def folder(self) -> str:
        return f"{slug(self.architecture)}/{slug(self.dataset)}"


@dataclass
class AblationJob:
    """The validated ablation: its config and every pair, architecture by architecture."""

    config: AblationConfig
    pairs: list[Pair]
    base_dir: str

    def pairs_of(self, architecture: str) -> list[Pair]:
        return [pair for pair in self.pairs if pair.architecture == architecture]


def slug(label: str) -> str:
    """A folder name for a label: ``CIFAR-10`` -> ``cifar-10``, ``digits 0-4`` -> ``digits_0-4``."""
    return re.sub(r"[^a-z0-9.-]+", "_", label.strip().lower()).strip("_") or "unnamed"


def load_ablation_job(path: str | Path) -> AblationJob:
    """Read an ablation job and build (validating) every pair's search and finetune job."""
    path = Path(path)
    config = parse(AblationConfig, load_yaml(path), str(path))
    base = path.resolve().parent
    config.target.data.resolve_paths(base)
    pairs = []
    for arch in config.architectures:
        where = f"{path}: architectures[{arch.label}]"
        if arch.fp_state_dict is not None and not is_weights_name(arch.fp_state_dict):
            fp_path = (base / Path(arch.fp_state_dict).expanduser()).resolve()
            if not fp_path.is_file():
                raise UserInputError(f"{key_path(where)}fp_state_dict {fp_path} does not exist")
            arch.fp_state_dict = str(fp_path)
        elif arch.fp_state_dict is None and config.target.fp_epochs < 1:
            raise UserInputError(f"{where}: give fp_state_dict (FP weights on the target) or target.fp_epochs >= 1")
        for dataset in config.search_datasets:
            dataset.data.resolve_paths(base)
            # The pair's search job goes through the one Job builder (search space, paths, the
            # checks across sections), from the shared sections as parsed above.
            raw = {"name": f"{config.name}-{slug(arch.label)}-{slug(dataset.label)}".replace(".", "_"),
                   "searchspace": arch.searchspace, "data": _data_dict(dataset.data),
                   "teacher": config_to_dict(config.teacher),
                   "search": config_to_dict(config.search, omit_defaults=(ParamSpec,)),
                   "resources": config_to_dict(config.resources)}
            search = parse_job(raw, path)
            finetune = _finetune_job(config, search, arch, where)
            pairs.append(Pair(arch.label, dataset.label, search, finetune))
    return AblationJob(config, pairs, str(base))


def _data_dict(data: DataConfig) -> dict[str, Any]:
    return config_to_dict(data)


def _finetune_job(config: AblationConfig, search: Job, arch: ArchitectureConfig, where: str) -> FinetuneJob:
    space = search.space
    raw = {
        **config.target.finetune,
        "name": search.name,
        "model": space.model,
        "fixed_bits": space.fixed_bits,
        "input_size": space.input_size,
        "data": _data_dict(config.target.data),
        # A placeholder until the FP weights exist (trained on the target when not given).
        "fp_state_dict": arch.fp_state_dict or "fp_target.pt",
    }
    return parse(FinetuneJob, raw, f"{where}: target.finetune")
